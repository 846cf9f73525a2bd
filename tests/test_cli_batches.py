"""The batch command line as a user meets it: resuming an interrupted batch (a real kill of a real
subprocess), Ctrl-C, output-folder mistakes, FLAME files too small for DECA, fit-mode naming.

TEST FLAME model and random DECA weights (tests/pipeline_support.py): these check plumbing, not quality.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.cli import main as cli_main
from core.results.result import RESULT_FILE, ReconstructionResult
from pipeline_support import random_checkpoint_home

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(tmp_path_factory, test_flame_pkl, deca_data_dir) -> Path:
    return random_checkpoint_home(tmp_path_factory, test_flame_pkl, deca_data_dir)


@pytest.fixture(scope="module")
def photos(photos_dir) -> list[Path]:
    found = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if len(found) < 4:
        pytest.skip(f"needs 4 photos in {photos_dir}")
    return found[:4]


def _common(home: Path) -> list[str]:
    return ["--home", str(home), "--device", "cpu", "--landmarks", "dlib", "--wrinkle-samples", "4",
            "--wrinkle-components", "2", "--batch-size", "1"]


def _folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.is_dir() else []


def _default_sigint() -> None:
    # A shell without job control starts background commands (`pytest ... &`, a CI runner's script) with
    # SIGINT ignored; children inherit that, and Python then keeps ignoring it, so the batch would not see
    # the test's Ctrl-C at all (it finished every photo with exit 0). A terminal's foreground command, which
    # the Ctrl-C test stands for, has the default disposition: give the batch that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(cmd: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def _run_until(proc: subprocess.Popen, out: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len([f for f in _folders(out) if (f / RESULT_FILE).is_file()]) < n:
        assert proc.poll() is None, f"the batch ended before {n} photos: {proc.communicate()}"
        assert time.monotonic() < deadline, "the batch is too slow"
        time.sleep(0.05)


@pytest.mark.slow  # about a minute: three real batches
def test_a_killed_batch_resumes_with_only_the_missing_photos(home, photos, tmp_path):
    out = tmp_path / "out"
    proc = _cli(["reconstruct", *map(str, photos), "--out", str(out), *_common(home)])
    _run_until(proc, out, 2)
    proc.kill()  # SIGKILL: no cleanup of any kind
    assert proc.wait() == -signal.SIGKILL  # killed while it worked, not finished before
    before = {f.name: (f / RESULT_FILE).stat().st_mtime_ns for f in _folders(out)}
    assert 2 <= len(before) < len(photos)
    done_sources = {ReconstructionResult.load(out / name).source_image for name in before}

    proc = _cli(["reconstruct", *map(str, photos), "--out", str(out), "--skip-existing", "--json", *_common(home)])
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == len(before)
    assert {s["photo"] for s in summary["succeeded"]} == {str(p) for p in photos} - done_sources
    after = _folders(out)
    assert sorted(f.name for f in after) == sorted(p.stem for p in photos)  # one folder per photo, no "-2"
    for name, mtime in before.items():  # the finished photos were not written again
        assert (out / name / RESULT_FILE).stat().st_mtime_ns == mtime
    # and a rerun of a finished batch does nothing
    proc = _cli(["reconstruct", *map(str, photos), "--out", str(out), "--skip-existing", "--json", *_common(home)])
    stdout, _ = proc.communicate(timeout=600)
    assert json.loads(stdout)["skipped"] == len(photos) and _folders(out) == after


@pytest.mark.slow
def test_ctrl_c_discards_the_photo_in_progress_and_prints_one_line(home, photos, tmp_path):
    out = tmp_path / "out"
    proc = _cli(["reconstruct", *map(str, photos), "--out", str(out), *_common(home)])
    _run_until(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "--skip-existing" in last
    n_done = int(last.split()[1])
    folders = _folders(out)
    assert n_done == len(folders) >= 1
    assert all((f / RESULT_FILE).is_file() for f in folders)  # complete folders only
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the temporary folder was discarded


def test_output_folder_mistakes_are_clear_and_leave_nothing(home, photos, tmp_path, capsys):
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    assert cli_main(["reconstruct", str(photos[0]), "--out", str(a_file), *_common(home)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "File exists" not in err
    assert a_file.read_text() == "mine"
    # a run that fails before any work (no assets) creates no output folder
    out = tmp_path / "never"
    assert cli_main(["reconstruct", str(photos[0]), "--out", str(out), "--home", str(tmp_path / "empty")]) == 2
    assert "deca_model.tar" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["fit", str(photos[0]), "--out", str(out), "--home", str(tmp_path / "empty")]) == 2
    assert not out.exists()


@pytest.mark.parametrize("n_shape, n_exp", [(100, 20), (80, 50)])
def test_a_flame_file_with_too_few_components_is_refused_at_install(tmp_path, capsys, test_flame, n_shape, n_exp):
    from core.flame.model_file import save_flame_npz

    small = dataclasses.replace(test_flame, shape_basis=test_flame.shape_basis[:, :, :n_shape],
                                expr_basis=test_flame.expr_basis[:, :, :n_exp])
    path = tmp_path / "small_flame.npz"
    save_flame_npz(small, path)
    home = tmp_path / "home"
    assert cli_main(["assets", "--home", str(home), "install", "--flame", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"has {n_shape} shape and {n_exp} expression components" in err
    assert "at least 100 shape and 50 expression" in err
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))
    # the full model installs
    full = tmp_path / "full.npz"
    save_flame_npz(test_flame, full)
    assert cli_main(["assets", "--home", str(home), "install", "--flame", str(full)]) == 0


def test_the_cli_prints_user_errors_in_one_line_and_lets_bugs_surface(monkeypatch, capsys, tmp_path):
    from core.commands import reconstruct as rc_mod
    from core.commands.modes import ModeError

    args = ["animate", "--identity", "a.jpg", "--expressions", "b.jpg", "--out", str(tmp_path / "o"),
            "--home", str(tmp_path / "empty")]
    assert cli_main(args) == 2  # a user error (missing assets): one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: Missing assets in ") and "Traceback" not in err

    def user_error(args):
        raise ModeError("unknown reconstruction mode 'x'")

    def bug(args):
        raise ZeroDivisionError("a bug")

    # each main() builds the parser again, which binds the (patched) module functions
    monkeypatch.setattr(rc_mod, "cmd_animate", user_error)
    assert cli_main(args) == 2
    assert capsys.readouterr().err.strip() == "error: unknown reconstruction mode 'x'"
    monkeypatch.setattr(rc_mod, "cmd_animate", bug)
    with pytest.raises(ZeroDivisionError):  # not caught: a bug surfaces with its traceback
        cli_main(args)
