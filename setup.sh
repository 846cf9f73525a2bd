#!/usr/bin/env bash
# Sets up a fresh machine for development and tests: a virtual environment in .venv with
# the CPU torch wheel, Blender as a Python module, MediaPipe's face models, dlib's landmark predictor and the
# project.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch==2.13.0 first and pinned: anything unpinned would pull the CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[mediapipe,dlib,train,blender,test]"
# mediapipe without its declared dependencies (jax, jaxlib, sounddevice, the GUI opencv): the [mediapipe]
# extra above installs the ones its face models need (see pyproject.toml).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps mediapipe==0.10.14
# Compile the project's own sources once, as a regular (non-editable) install does: an editable install
# leaves them uncompiled, and where PYTHONDONTWRITEBYTECODE is set every start recompiles core (0.25-0.45 s
# of a cold `deca-blender reconstruct`, measured). Stale bytecode is never used: Python checks each source.
.venv/bin/python -m compileall -q core deca_blender training
.venv/bin/python -c "import torch, bpy, mediapipe, dlib; print('setup ok: torch', torch.__version__, '| bpy', bpy.app.version_string, '| mediapipe', mediapipe.__version__, '| dlib', dlib.__version__)"
