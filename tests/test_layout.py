"""The layout's rules, measured by scripts/import_graph.py: no circles, no upward arrows, nothing unused;
the numpy-only results package and `deca-blender --help` load no torch (in a fresh subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import import_graph  # noqa: E402


@pytest.fixture(scope="module")
def measures() -> dict:
    return import_graph.measure()


def test_no_circles_no_upward_arrows_nothing_unused(measures):
    assert measures["circles"] == []
    assert measures["upward_arrows"] == []
    assert measures["unlayered_rooms"] == []
    assert measures["unreferenced_modules"] == []


def test_the_graph_sees_a_circle_and_an_upward_arrow(tmp_path):
    """The measure itself can fail: a tiny tree with a circle, an upward arrow and an unused module."""
    for pkg in import_graph.PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    for sub in ("results", "pipeline"):
        (tmp_path / "core" / sub).mkdir()
        (tmp_path / "core" / sub / "__init__.py").write_text("")
    (tmp_path / "core" / "results" / "a.py").write_text("from core.pipeline import b\n")  # upward
    (tmp_path / "core" / "pipeline" / "b.py").write_text("from core.results import a\n")  # and back: a circle
    (tmp_path / "core" / "pipeline" / "lonely.py").write_text("import os\n")
    m = import_graph.measure(root=tmp_path)
    assert m["circles"] == [["core.pipeline", "core.results"]]
    assert m["upward_arrows"] == [("core.results", "core.pipeline")]
    assert m["unreferenced_modules"] == ["core.pipeline.lonely"]


def test_blender_depends_only_on_the_numpy_only_packages(measures):
    assert set(measures["edges"]["deca_blender"]) <= {"core.results", "core.errors"}


def test_training_depends_on_the_model_not_the_pipeline(measures):
    assert "core.model" in measures["edges"]["training"]
    assert "core.pipeline" not in measures["edges"]["training"]
    assert "core.fitting" not in measures["edges"]["training"]


def _modules_after(code: str) -> dict:
    probe = code + "\nimport json, sys; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bpy', 'core'))))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_the_results_package_loads_without_torch():
    loaded = _modules_after("import core.results.result, core.results.rig, core.results.writing, "
                            "core.results.encodings, core.errors, core.sizes")
    assert "core.results.writing" in loaded and "core.flame.model_file" in loaded  # the probe saw the imports
    assert not any(m == "torch" or m.startswith("torch.") for m in loaded)


def test_cli_help_loads_no_torch():
    loaded = _modules_after("import contextlib, io\nfrom core.cli import build_parser\n"
                            "with contextlib.redirect_stdout(io.StringIO()):\n"
                            "    try:\n        build_parser().parse_args(['--help'])\n"
                            "    except SystemExit:\n        pass")
    assert "core.commands.reconstruct" in loaded and "core.commands.modes" in loaded
    assert not any(m == "torch" or m.startswith("torch.") for m in loaded)
