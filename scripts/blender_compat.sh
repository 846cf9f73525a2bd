#!/usr/bin/env bash
# Run the Blender test suite against several Blender releases (bpy wheels for Python 3.11 from PyPI).
#
#   scripts/blender_compat.sh [VERSION ...]        default: 4.2.23 4.5.15 5.0.1
#
# Each bpy goes into a scratch folder under ${DECA_COMPAT_DIR:-/tmp/deca_bpy_compat}/<version> (never the
# repository, never the project's venv), installed with --no-deps: the project's venv supplies numpy, torch
# and the rest, and the scratch folder is put first on PYTHONPATH so that `import bpy` (in the test process
# and in the bpy subprocess the tests start) finds that release. The version the venv already has is used
# as it is. Runs tests/test_blender_addon.py (everything that runs Blender; tests/test_blender_worker.py
# needs no bpy). Prints one PASS/FAIL line per version and exits non-zero if any failed.
# Logs: <scratch>/<version>/pytest.log. Each bpy wheel is about 300-400 MB.
set -u
PYTHON=${PYTHON:-python}
# an absolute path: the version checks below run from /tmp
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")";; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${DECA_COMPAT_DIR:-/tmp/deca_bpy_compat}
VERSIONS=("$@")
[ ${#VERSIONS[@]} -eq 0 ] && VERSIONS=(4.2.23 4.5.15 5.0.1)
case "$SCRATCH" in "$ROOT"*) echo "refusing to install bpy inside the repository ($SCRATCH)" >&2; exit 2;; esac

status=0
summary=()
for v in "${VERSIONS[@]}"; do
    dir="$SCRATCH/$v"
    mkdir -p "$dir"
    have=$(cd /tmp && "$PYTHON" -c "import importlib.metadata as m; print(m.version('bpy'))" 2>/dev/null)
    if [ "$have" = "$v" ]; then
        site=""
    elif [ ! -d "$dir/site/bpy" ]; then
        site="$dir/site"
        echo "== installing bpy==$v into $dir/site"
        if ! "$PYTHON" -m pip install --quiet --no-deps --target "$dir/site" "bpy==$v" >"$dir/pip.log" 2>&1; then
            echo "   pip failed, see $dir/pip.log"; summary+=("$v INSTALL-FAILED"); status=1; continue
        fi
    else
        site="$dir/site"
    fi
    got=$(cd /tmp && PYTHONPATH="$site" "$PYTHON" -c "import bpy; print(bpy.app.version_string)" 2>"$dir/import.log")
    echo "== bpy $v (reports Blender ${got:-?})"
    start=$(date +%s)
    (cd "$ROOT" && PYTHONPATH="${site:+$site:}$ROOT" DECA_ARTIFACTS="$dir/artifacts" \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_blender_addon.py) \
        >"$dir/pytest.log" 2>&1
    rc=$?
    tail -n 3 "$dir/pytest.log" | sed 's/^/   /'
    secs=$(( $(date +%s) - start ))
    if [ $rc -eq 0 ]; then summary+=("$v PASS (${secs} s, Blender ${got:-?})"); else summary+=("$v FAIL rc=$rc (${secs} s, see $dir/pytest.log)"); status=1; fi
done
echo "== summary"
printf '   %s\n' "${summary[@]}"
exit $status
