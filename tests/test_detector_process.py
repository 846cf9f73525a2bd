"""The landmark detector in a child process (`core.frontend.detector_process`), which the `reconstruct`
command starts before it imports torch.

Each check runs in a fresh interpreter without torch, as the command does (the test process has torch
loaded, and a fork is only taken before that). What must hold:
- the child's detections are the in-process detector's, bit for bit (boxes, 68 points, dense mesh, score,
  yaw, confidence), for the photos read ahead and for images it is asked about later, for MediaPipe and dlib;
- a child that dies, or a detector the child cannot load, changes nothing but speed: the parent falls back
  to the in-process detector, which answers or raises exactly as without the child;
- a `reconstruct` through the child writes the same result as without it, and importing the front end for
  it loads no torch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.frontend import MediaPipeDetector
from core.frontend.detector_process import DISABLE_ENV
from core.frontend.landmarks import _dlib_availability
from core.results.result import RESULT_FILE
from pipeline_support import random_checkpoint_home

REPO = Path(__file__).resolve().parents[1]

# Compares the child's answers with a detector created in this (torch-free) process; prints a JSON report.
_COMPARE = r"""
import json, sys
import numpy as np
from core.frontend.detector_process import start_detector_process
from core.frontend.detectors import get_detector
from core.frontend.images import read_image

method, paths = sys.argv[1], sys.argv[2:]
child = start_detector_process(method, paths)
assert child is not None, "no detector process was started"
local = get_detector(method)
FIELDS = ("box", "landmarks", "score", "detector", "dense", "yaw", "confidence", "turn_ratio")

def same(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for f in FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            if (u is None) != (v is None) or (u is not None and not np.array_equal(np.asarray(u), np.asarray(v))):
                return False
    return True

images = [read_image(p, keep_uint8=True) for p in paths]
images.append(np.ascontiguousarray(images[0][:, ::-1]))   # not read ahead: asked for on demand
images.append(np.zeros((160, 120, 3), np.uint8))            # no face: both must find nothing
report = {"same": [], "faces": [], "name": child.name}
for image in images:
    a, b = child.detect(image), local.detect(image)
    report["same"].append(same(a, b))
    report["faces"].append(len(a))
report["answered_by_child"] = child.answered_by_child
report["torch_loaded"] = "torch" in sys.modules
print(json.dumps(report))
"""


def _python(code: str, *args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}  # on unless the test says otherwise
    env = {**base, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _photos(photos_dir: Path) -> list[Path]:
    found = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if len(found) < 3:
        pytest.skip(f"needs photos in {photos_dir}")
    return found


@pytest.mark.parametrize("method", ["mediapipe", "dlib"])
def test_the_childs_detections_equal_the_in_process_detector(photos_dir, method):
    if method == "mediapipe" and not MediaPipeDetector.is_available():
        pytest.skip("mediapipe is not installed")
    if method == "dlib" and not _dlib_availability(None, need_cnn=True)[0]:
        pytest.skip("dlib is not installed")
    paths = _photos(photos_dir)
    if method == "dlib":
        paths = paths[:4]  # dlib's CNN fallback costs ~1.4 s a photo on 2 cores
    out = _python(_COMPARE, method, *paths)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["name"] == method
    assert all(report["same"]), report
    assert report["faces"][-1] == 0 and sum(report["faces"][:-1]) >= len(paths)  # every photo has a face
    # every photo read ahead, the flipped one on demand, the blank one too: nothing came from the fallback
    assert report["answered_by_child"] == len(paths) + 2
    assert report["torch_loaded"] is False


def test_a_dead_child_or_a_detector_it_cannot_load_falls_back_to_the_same_answers(photos_dir):
    if not MediaPipeDetector.is_available():
        pytest.skip("mediapipe is not installed")
    path = _photos(photos_dir)[0]
    code = r"""
import json, sys
import numpy as np
from core.frontend.detector_process import DetectorProcess
from core.frontend.detectors import get_detector
from core.frontend.images import read_image
from core.frontend.landmarks import DetectorUnavailableError

image = read_image(sys.argv[1], keep_uint8=True)
report = {}
# 1. the child dies before answering: the in-process detector answers, equal to a fresh one
child = DetectorProcess("mediapipe", [])
child.warm_up()
child._process.kill(); child._process.join()
a, b = child.detect(image), get_detector("mediapipe").detect(image)
report["dead_equal"] = len(a) == len(b) == 1 and np.array_equal(a[0].landmarks, b[0].landmarks)
report["dead_answered_by_child"] = child.answered_by_child
# 2. a detector the child cannot load: the same error as without the child, at warm_up
def error(fn):
    try:
        fn()
    except DetectorUnavailableError as exc:
        return str(exc)
    return None
broken = DetectorProcess("dlib", [sys.argv[1]], models_dir="/nonexistent/dlib-models")
report["error_child"] = error(broken.warm_up)
report["error_local"] = error(lambda: get_detector("dlib", models_dir="/nonexistent/dlib-models").warm_up())
print(json.dumps(report))
"""
    out = _python(code, path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["dead_equal"] is True and report["dead_answered_by_child"] == 0
    assert report["error_local"] and report["error_child"] == report["error_local"]


def test_reconstruct_through_the_child_writes_the_same_result(tmp_path_factory, test_flame_pkl, deca_data_dir,
                                                              photos_dir, tmp_path):
    """The command's own path (`_with_detector_process`, then `make_reconstructor`) in a fresh interpreter:
    the child is started before torch loads, answers the photo, and the result equals the in-process run's."""
    if not MediaPipeDetector.is_available():
        pytest.skip("mediapipe is not installed")
    home = random_checkpoint_home(tmp_path_factory, test_flame_pkl, deca_data_dir)
    photo = _photos(photos_dir)[0]
    code = r"""
import json, sys
from pathlib import Path
from core.commands.modes import ModeOptions, make_reconstructor
from core.commands.reconstruct import _with_detector_process
home, photo, out = sys.argv[1:4]
options = _with_detector_process(ModeOptions(device="cpu", landmarks="auto", home=home), [Path(photo)])
child = options.landmarks
started = not isinstance(child, str)
torch_before = "torch" in sys.modules
rec = make_reconstructor("deca", options)
summary = rec.reconstruct_many([photo], out)
print(json.dumps({"started": started, "torch_before": torch_before, "ok": summary.ok,
                  "answered_by_child": getattr(child, "answered_by_child", 0)}))
"""
    results = {}
    for label, flag in (("child", "1"), ("in_process", "0")):
        out_dir = tmp_path / label
        out = _python(code, home, photo, out_dir, env={"DECA_BLENDER_DETECTOR_PROCESS": flag})
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["ok"] and report["torch_before"] is False
        assert report["started"] is (flag == "1")
        assert report["answered_by_child"] == (1 if flag == "1" else 0)
        (npz,) = out_dir.glob(f"*/{RESULT_FILE}")
        results[label] = dict(np.load(npz, allow_pickle=False))
    a, b = results["child"], results["in_process"]
    assert a.keys() == b.keys()
    timing = {k for k in a if "time" in k or "seconds" in k}
    for key in a.keys() - timing:
        if a[key].dtype.kind in "fiub":
            assert np.array_equal(a[key], b[key]), key


def test_animate_fast_through_the_child_gives_the_same_codes(tmp_path_factory, test_flame_pkl, deca_data_dir,
                                                             photos_dir, tmp_path):
    """`animate --fast` (the command in a subprocess): the identity and every frame detected by the child
    ahead; the codes file equals the in-process run's."""
    if not MediaPipeDetector.is_available():
        pytest.skip("mediapipe is not installed")
    home = random_checkpoint_home(tmp_path_factory, test_flame_pkl, deca_data_dir)
    photos = _photos(photos_dir)[:4]
    codes = {}
    for flag in ("1", "0"):
        out_dir = tmp_path / f"anim{flag}"
        cmd = ["-m", "core.cli", "animate", "--fast", "--identity", photos[0], "--expressions", *photos[1:],
               "--out", out_dir, "--home", home, "--device", "cpu"]
        env = {**{k: v for k, v in os.environ.items() if k != DISABLE_ENV}, "PYTHONPATH": str(REPO),
               DISABLE_ENV: flag}
        out = subprocess.run([sys.executable, *map(str, cmd)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        with np.load(out_dir / "expressions.npz", allow_pickle=False) as z:
            codes[flag] = {k: z[k] for k in z.files}
    assert codes["1"].keys() == codes["0"].keys()
    assert len(codes["1"]["exp"]) == len(photos) - 1
    for key, value in codes["1"].items():
        if value.dtype.kind in "fiub":
            assert np.array_equal(value, codes["0"][key]), key


def test_the_child_ends_with_its_pipe_when_the_parent_closes_it_or_dies(tmp_path):
    """`close` ends the child by closing the pipe (exit code 0: it ended itself, it was not killed); a parent
    killed outright leaves no child behind either (the child reads EOF and exits)."""
    if not MediaPipeDetector.is_available():
        pytest.skip("mediapipe is not installed")
    code = r"""
import os, signal, sys
from core.frontend.detector_process import DetectorProcess
closed = DetectorProcess("mediapipe", [])
closed.warm_up()
closed.close()
print("closed exit code", closed._process.exitcode, flush=True)
orphan = DetectorProcess("mediapipe", [])
orphan.warm_up()
print("orphan pid", orphan._process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    out = _python(code)
    assert out.returncode == -9, out.stderr[-3000:]
    lines = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if line.startswith(("closed", "orphan")))
    assert lines["closed exit code"] == "0"
    pid = int(lines["orphan pid"])

    def alive() -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")  # a zombie has ended; only its parent's reaping is left

    deadline = time.monotonic() + 20
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(), f"the detector child {pid} outlived its killed parent"
