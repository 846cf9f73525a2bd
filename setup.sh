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
.venv/bin/python -c "import torch, bpy, mediapipe, dlib; print('setup ok: torch', torch.__version__, '| bpy', bpy.app.version_string, '| mediapipe', mediapipe.__version__, '| dlib', dlib.__version__)"
