"""Start-up and exit paths: the fast exit of the `deca-blender` command (`core.cli.exit_now`) keeps what a
normal exit guarantees (exit code, buffered output, atexit handlers, running threads finish); the detector
`Reconstructor` creates in the background is the one asked for, made once, and its errors surface at first
use, as without prefetching.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # stdout is a pipe: block-buffered, so unflushed text would be lost by a bare os._exit
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_exit_now_keeps_code_output_and_atexit_handlers(tmp_path):
    marker = tmp_path / "atexit_ran"
    code = ("import atexit, sys\n"
            "from core.cli import exit_now\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
            "print('buffered out', end='')\n"
            "sys.stderr.write('buffered err')\n"
            "exit_now(3)\n"
            "print('never')\n")
    out = _python(code, tmp_path)
    assert out.returncode == 3
    assert out.stdout == "buffered out"
    assert out.stderr == "buffered err"
    assert marker.read_text() == "yes"


def test_exit_now_waits_for_a_running_thread(tmp_path):
    """With another (non-daemon) thread alive the normal exit runs, which joins it: its work is not cut off."""
    done = tmp_path / "thread_done"
    code = ("import threading, time\n"
            "from core.cli import exit_now\n"
            "go = threading.Event()\n"
            f"def work():\n    go.wait(); time.sleep(0.2); open({str(done)!r}, 'w').write('done')\n"
            "threading.Thread(target=work).start()\n"
            "go.set()\n"
            "exit_now(0)\n")
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert done.read_text() == "done"


@pytest.mark.parametrize("daemon", [True, False])
def test_exit_now_skips_finalisation_unless_a_thread_must_finish(tmp_path, daemon):
    """The fast path really skips the interpreter's finalisation (a global's ``__del__`` never runs) when only
    daemon threads are left (a normal exit would not wait for them either); a non-daemon thread gets the
    normal exit, finalisation included."""
    code = ("import threading, time, sys\n"
            "from core.cli import exit_now\n"
            "class Noisy:\n    def __del__(self):\n        sys.stdout.write('finalised'); sys.stdout.flush()\n"
            "keep = Noisy()\n"
            "stop = threading.Event()\n"
            f"threading.Thread(target=lambda: stop.wait(0.3), daemon={daemon}).start()\n"
            "exit_now(0)\n")
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert ("finalised" in out.stdout) == (not daemon)


def test_exit_now_with_stdout_closed(tmp_path):
    code = ("import sys, os\n"
            "from core.cli import exit_now\n"
            "print('x'); sys.stdout.close()\n"
            "exit_now(5)\n")
    assert _python(code, tmp_path).returncode == 5


def test_console_entry_point_is_run():
    """The installed command goes through `run` (the fast exit); `main` stays the testable function."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'deca-blender = "core.cli:run"' in text
    import core.cli

    assert callable(core.cli.run) and callable(core.cli.main)


# ------------------------------------------------------------------ the detector created in the background

@pytest.fixture(scope="module")
def face_parts(test_flame_pkl, deca_data_dir):
    import torch

    from core.model.face_model import FaceAssets
    from core.networks import build_deca_networks

    torch.manual_seed(0)
    return FaceAssets.from_paths(test_flame_pkl, deca_data_dir), build_deca_networks()


class _Made:
    """A stand-in detector: records the thread that made it."""

    name = "made"

    def __init__(self):
        self.thread = threading.current_thread().name


def test_prefetched_detector_is_made_off_the_main_thread_and_used(face_parts, monkeypatch):
    from core.frontend.landmarks import LandmarkDetector
    from core.pipeline import reconstruct as rc

    calls = []

    class Made(_Made, LandmarkDetector):
        def detect(self, image):  # pragma: no cover - never called here
            return []

    def fake_get_detector(method, device="cpu", **kw):
        calls.append((method, device))
        return Made()

    monkeypatch.setattr(rc, "get_detector", fake_get_detector)
    fa, nets = face_parts
    rec = rc.Reconstructor(device="cpu", landmarks="dlib", face_assets=fa, networks=nets)
    det = rec.detector
    assert isinstance(det, Made) and det.thread == "deca-detector-load"
    assert rec.detector is det and calls == [("dlib", "cpu")]  # made once
    plain = rc.Reconstructor(device="cpu", landmarks="dlib", face_assets=fa, networks=nets, prefetch_detector=False)
    assert calls == [("dlib", "cpu")]  # nothing made until asked for
    assert plain.detector.thread == threading.current_thread().name


def test_prefetch_error_is_raised_at_first_use_and_again_later(face_parts, monkeypatch):
    """A detector that cannot be made fails where it failed without prefetching: at first use, not in the
    constructor; and every later use says so again (it is retried, as before)."""
    from core.frontend.landmarks import DetectorUnavailableError
    from core.pipeline import reconstruct as rc

    def broken(method, device="cpu", **kw):
        raise DetectorUnavailableError("no detector here")

    monkeypatch.setattr(rc, "get_detector", broken)
    fa, nets = face_parts
    rec = rc.Reconstructor(device="cpu", landmarks="dlib", face_assets=fa, networks=nets)
    for _ in range(2):
        with pytest.raises(DetectorUnavailableError, match="no detector here"):
            rec.detector  # noqa: B018


def test_a_given_detector_instance_is_used_as_is(face_parts, monkeypatch):
    from core.pipeline import reconstruct as rc

    monkeypatch.setattr(rc, "get_detector", lambda *a, **k: pytest.fail("no detector should be made"))
    from core.frontend.landmarks import LandmarkDetector

    class Given(LandmarkDetector):
        name = "given"

        def detect(self, image):  # pragma: no cover
            return []

    fa, nets = face_parts
    given = Given()
    assert rc.Reconstructor(device="cpu", landmarks=given, face_assets=fa, networks=nets).detector is given


# ------------------------------------------------------------------ the template OBJ's bulk reader

def _same_as_read_obj(path: Path):
    import numpy as np

    from core.flame.template import read_template_obj
    from core.obj import read_obj

    got = read_template_obj(path)
    ref = read_obj(path, triangles_only=True, need_uvs=True)
    for key in ("vertices", "faces", "uv_coords", "uv_faces"):
        a, b = getattr(got, key), getattr(ref, key)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), key
    return got


def test_template_bulk_reader_equals_read_obj_on_decas_template(deca_data_dir):
    from core.flame.template import _read_plain_template

    path = deca_data_dir / "head_template.obj"
    assert _read_plain_template(path) is not None  # the real file takes the bulk path
    got = _same_as_read_obj(path)
    assert got.vertices.shape == (5023, 3) and got.faces.shape == (9976, 3)


@pytest.mark.parametrize("body, plain", [
    ("v 0 0 0\nv 1 0 0\nv 0 1.5e-3 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n", True),
    ("# c\nmtllib m.mtl\no x\nv 0 0 0\nvt 0 0\nv 1 0 0\nvt 1 0\nv 0 1 0\nvt 0 1\nvn 0 0 1\ns 1\nf 3/3 2/2 1/1\n", True),
    ("v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n", False),  # colours
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf -3/-3 -2/-2 -1/-1\n", False),  # relative
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1/1 2/2/1 3/3/1\n", False),  # with normals
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2\nf 1/1 2/2 3/3 4/3\n", False),
])
def test_template_bulk_reader_agrees_or_steps_aside(tmp_path, body, plain):
    """Files off the plain layout go to `read_obj` (same answer or the same error); plain ones agree."""
    from core.flame.template import TemplateError, _read_plain_template

    path = tmp_path / "t.obj"
    path.write_text(body)
    assert (_read_plain_template(path) is not None) == plain
    try:
        _same_as_read_obj(path)
    except TemplateError:
        assert not plain  # the general reader's refusal (polygons, ...), as before


def test_prefetch_warms_the_detector_it_makes(face_parts, monkeypatch):
    from core.frontend.landmarks import LandmarkDetector
    from core.pipeline import reconstruct as rc

    class Warmable(LandmarkDetector):
        name = "warmable"

        def __init__(self):
            self.warmed_on = None

        def warm_up(self):
            self.warmed_on = threading.current_thread().name

        def detect(self, image):  # pragma: no cover
            return []

    monkeypatch.setattr(rc, "get_detector", lambda *a, **k: Warmable())
    fa, nets = face_parts
    assert rc.Reconstructor(device="cpu", landmarks="x", face_assets=fa, networks=nets).detector.warmed_on == \
        "deca-detector-load"


def test_mediapipe_warm_up_keeps_detections_unchanged(photos_dir, tmp_path):
    """Warming the graphs on blank images changes nothing a photo gets: a fresh process without warm-up and
    this one after it find the same 478 points, bit for bit (same CPU, same kernels)."""
    import numpy as np

    from core.frontend.mediapipe_mesh import MediaPipeDetector

    ok, why = MediaPipeDetector.availability()
    if not ok:
        pytest.skip(why)
    photo = sorted(photos_dir.glob("*.jpg"))[0]
    code = ("import numpy as np, sys\n"
            "from core.frontend import read_image\n"
            "from core.frontend.mediapipe_mesh import MediaPipeDetector\n"
            "d = MediaPipeDetector()\n"
            f"det = d.detect(read_image({str(photo)!r}, keep_uint8=True))[0]\n"
            "np.save(sys.argv[1], det.dense)\n")
    out = tmp_path / "cold.npy"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=300)
    cold = np.load(out)
    from core.frontend import read_image

    d = MediaPipeDetector().warm_up()
    warm = d.detect(read_image(photo, keep_uint8=True))[0].dense
    np.testing.assert_array_equal(warm, cold)
