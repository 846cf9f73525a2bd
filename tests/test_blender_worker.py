"""The add-on's inference worker (`python -m core.worker`) through the add-on's client, without Blender.

The client (deca_blender/worker_client.py) needs neither bpy nor torch; the worker is a child process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deca_blender.worker_client import WorkerClient, WorkerConfig, WorkerError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tmp_path):
    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(REPO),),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")),),
                                  log_path=str(tmp_path / "worker.log")))
    yield c
    c.stop()


def test_blender_worker_hello_and_protocol_errors(client):
    info = client.call("hello", timeout=60)
    assert info["protocol"] == 1 and info["torch"] and info["pid"] > 0
    assert info["pipeline"] is True  # this checkout has core.pipeline.reconstruct
    with pytest.raises(WorkerError) as exc:
        client.call("no_such_command", timeout=30)
    assert exc.value.error_type == "ProtocolError" and "no_such_command" in str(exc.value)
    with pytest.raises(WorkerError) as exc:
        client.call("wait", timeout=30, bogus_argument=1)
    assert exc.value.error_type == "ProtocolError"
    assert client.call("hello", timeout=30)["pid"] == info["pid"]  # still the same, healthy worker


def test_blender_worker_progress_and_cancel(client):
    job = client.request("wait", seconds=0.3, steps=3)
    assert job.wait(30) == {"waited": 0.3}
    assert len(job.messages) == 3 and job.fraction == 1.0
    job = client.request("wait", seconds=20, steps=200)
    deadline = time.monotonic() + 30
    while not job.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    assert job.messages, "no progress arrived"
    t = time.monotonic()
    client.cancel(job)
    with pytest.raises(WorkerError) as exc:
        job.wait(10)
    assert exc.value.error_type == "Cancelled" and time.monotonic() - t < 2
    # A request queued behind a running one can be cancelled before it starts.
    running = client.request("wait", seconds=0.5, steps=5)
    queued = client.request("wait", seconds=5, steps=5)
    client.cancel(queued)
    assert running.wait(30) == {"waited": 0.5}
    with pytest.raises(WorkerError):
        queued.wait(10)
    assert queued.cancelled and not queued.messages


def test_blender_worker_queued_cancel_is_answered_at_once(client):
    """A request waiting behind a long one (Import Photo behind the add-on's warm-up) is answered Cancelled as
    soon as it is cancelled, while the long one still runs."""
    running = client.request("wait", seconds=30, steps=300)
    queued = client.request("wait", seconds=1, steps=2)
    client.cancel(queued)
    with pytest.raises(WorkerError) as exc:
        queued.wait(20)
    assert exc.value.error_type == "Cancelled" and not queued.messages
    assert not running.done  # answered before the running request ended, not after it
    client.cancel(running)
    with pytest.raises(WorkerError):
        running.wait(20)
    assert running.cancelled
    assert client.call("wait", timeout=30, seconds=0.1, steps=1) == {"waited": 0.1}  # the worker goes on


def test_blender_worker_start_without_waiting(tmp_path):
    """start(wait_ready=False) returns at once; a request sent before the worker is ready waits in the pipe and
    is answered; a worker that dies instead fails it with its log, it does not hang."""
    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(REPO),), log_path=str(tmp_path / "w.log")))
    try:
        c.start(wait_ready=False)
        job = c.request("hello")
        assert job.wait(60)["pid"] == c._proc.pid
    finally:
        c.stop()
    fake = tmp_path / "fake" / "core"  # a core whose worker dies at start-up
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "worker.py").write_text("import sys\nprint('broken core.worker', file=sys.stderr)\nsys.exit(3)\n")
    bad = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(fake.parent),),
                                    log_path=str(tmp_path / "bad.log")))
    try:
        bad.start(wait_ready=False)
        with pytest.raises(WorkerError) as exc:
            bad.request("hello").wait(60)
        assert exc.value.error_type in ("WorkerDied", "StartError") and "broken core.worker" in str(exc.value)
    finally:
        bad.stop()


def test_blender_worker_assets(client, tmp_path, test_flame_pkl, deca_data_dir):
    status = client.call("status", timeout=120)
    assert status["home"] == str(tmp_path / "home") and status["ready"] is False
    assert "deca_model.tar" in status["missing"]
    job = client.request("install_assets", flame=str(test_flame_pkl), data=str(deca_data_dir))
    data = job.wait(300)
    assert any("TEST model" in n for n in data["notes"])
    present = {a["name"] for a in data["status"]["assets"] if a["present"]}
    assert {"flame_model", "head_template", "landmark_embedding"} <= present
    assert data["status"]["missing"] == ["deca_model.tar"]
    # The licence column of the add-on's preferences: one row per installed file, none for a missing one.
    lic = {row["component"]: row for row in data["status"]["licences"]}
    assert present <= set(lic) and "deca_model" not in lic
    assert lic["flame_model"]["commercial"] is True and "TEST model" in lic["flame_model"]["what"]
    assert lic["head_template"]["commercial"] is False and "non-commercial" in lic["head_template"]["licence"]
    assert client.call("status", timeout=120)["licences"] == data["status"]["licences"]
    assert any("installed" in m for m in job.messages)


def test_blender_worker_errors_are_the_cli_messages(client, tmp_path):
    from core.flame import FlameModelError, load_flame_model

    missing = tmp_path / "nowhere" / "generic_model.pkl"
    with pytest.raises(FlameModelError) as direct:
        load_flame_model(missing)
    with pytest.raises(WorkerError) as via_worker:
        client.call("install_assets", timeout=120, flame=str(missing))
    assert str(via_worker.value) == str(direct.value)
    assert via_worker.value.error_type == "FlameModelError"
    with pytest.raises(WorkerError) as exc:
        client.call("install_assets", timeout=60)
    assert "nothing to install" in str(exc.value)


def test_blender_worker_start_failure_names_the_python(tmp_path):
    c = WorkerClient(WorkerConfig(python=str(tmp_path / "no_python"), pythonpath=(str(REPO),),
                                  log_path=str(tmp_path / "w.log")))
    with pytest.raises(WorkerError) as exc:
        c.call("hello", timeout=10)
    assert "no_python" in str(exc.value) and exc.value.error_type == "StartError"


def test_blender_worker_death_fails_pending_jobs(client):
    job = client.request("wait", seconds=30, steps=300)
    while not job.messages:
        time.sleep(0.02)
    client._proc.kill()
    with pytest.raises(WorkerError) as exc:
        job.wait(10)
    assert exc.value.error_type == "WorkerDied"
    # The next request starts a fresh worker.
    assert client.call("hello", timeout=60)["protocol"] == 1


def test_blender_dependency_command():
    from deca_blender.dependencies import pip_install_command, requirements

    cmd = pip_install_command("/ext/venv/bin/python", "CPU")
    assert cmd[:4] == ["/ext/venv/bin/python", "-m", "pip", "install"] and "--target" not in cmd
    assert "torch==2.13.0" in cmd and "https://download.pytorch.org/whl/cpu" in cmd and "--no-index" not in cmd
    assert any(c.startswith("numpy") for c in cmd) and set(requirements()) <= set(cmd)
    offline = pip_install_command("/ext/venv/bin/python", "CPU", wheels_dir="/wheels")
    assert offline[offline.index("--find-links") + 1] == "/wheels" and "--no-index" in offline
    assert not [c for c in offline if c.startswith("https://")]


def _tiny_wheel(folder: Path, name: str = "deca_offline_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (one module), written by hand: no build backend, no network."""
    import base64
    import hashlib
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": "VALUE = 42\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_blender_dependencies_private_venv_from_wheels(tmp_path):
    """Install from a folder of wheels: a private venv is created from the base Python and the package goes
    into it, offline (--no-index); the base Python is not changed; progress is reported."""
    from deca_blender.dependencies import DependencyInstaller, venv_python

    _tiny_wheel(tmp_path / "wheels")
    base = sys.executable
    before = sorted(Path(p).name for p in Path(next(p for p in sys.path if p.endswith("site-packages"))).iterdir())
    inst = DependencyInstaller(base, str(tmp_path / "ext" / "venv"), wheels_dir=str(tmp_path / "wheels"),
                               packages=["deca-offline-probe"])
    seen = []
    inst.start()
    while not inst.done:
        seen.append((inst.fraction, inst.message))
        time.sleep(0.05)
    inst.wait()
    assert inst.returncode == 0, "\n".join(inst.lines[-20:])
    assert inst.fraction == 1.0 and "installed into" in inst.summary()
    assert any(0 < f < 1 for f, _ in seen), seen[-5:]
    py = venv_python(tmp_path / "ext" / "venv")
    out = subprocess.run([str(py), "-c", "import deca_offline_probe, sys; print(deca_offline_probe.VALUE, sys.prefix)"],
                         capture_output=True, text=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "42" and Path(out.stdout.split()[1]).resolve() == (tmp_path / "ext" / "venv").resolve()
    assert any("--no-index" in line or "Looking in links" in line or "Processing" in line for line in inst.lines)
    after = sorted(Path(p).name for p in Path(next(p for p in sys.path if p.endswith("site-packages"))).iterdir())
    assert before == after and "deca_offline_probe.py" not in after  # the base Python is untouched
    # A missing folder is a clear error before anything runs.
    with pytest.raises(FileNotFoundError, match="folder of wheels"):
        DependencyInstaller(base, str(tmp_path / "v2"), wheels_dir=str(tmp_path / "nowhere")).start()



def test_blender_worker_requests_without_cmd_get_their_id_back(tmp_path):
    """The raw protocol: a request without 'cmd' is answered with its own id (or null when it has none)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "DECA_BLENDER_HOME": str(tmp_path / "home")}
    lines = [{"id": 5, "args": {}}, {"id": "x", "cmd": 3}, [1, 2], {"id": 6, "cmd": "shutdown"}]
    proc = subprocess.run([sys.executable, "-m", "core.worker"], input="\n".join(map(json.dumps, lines)) + "\n",
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert answers[0]["type"] == "ready"
    errors = answers[1:4]
    assert [a["id"] for a in errors] == [5, "x", None]
    assert all(a["type"] == "error" and a["error_type"] == "ProtocolError" and "'cmd'" in a["message"]
               for a in errors)
    assert answers[4] == {"id": 6, "type": "result", "data": {"bye": True}}


def test_blender_worker_reconstruct_and_decode(tmp_path, photos_dir, test_flame_pkl, deca_data_dir, random_deca_checkpoint):
    """A photo through the worker, then the exact decoder at the photo's own codes reproduces the stored
    displacement. DECA's checkpoint is licensed and absent here: the TEST model and random networks."""
    import numpy as np

    from core.results.result import ReconstructionResult

    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(REPO),),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")),),
                                  log_path=str(tmp_path / "worker.log")))
    try:
        photo = sorted(photos_dir.glob("*.jpg"))[0]
        with pytest.raises(WorkerError) as exc:  # nothing installed yet: the asset manager's message
            c.call("reconstruct", timeout=120, photo=str(photo), out_dir=str(tmp_path / "out"))
        assert "head_template.obj" in str(exc.value) and "deca-blender assets install" in str(exc.value)
        with pytest.raises(WorkerError) as exc:  # the warm-up fails the same way, as the user's error
            c.call("load", timeout=120)
        assert exc.value.error_type == "MissingAssetError" and "head_template.obj" in str(exc.value)
        c.call("install_assets", timeout=300, flame=str(test_flame_pkl), data=str(deca_data_dir),
               deca=str(random_deca_checkpoint))
        # The warm-up loads what `reconstruct` with the same settings then uses: a second `load` finds it.
        job = c.request("load", device="auto", landmarks="auto", mode="deca")
        loaded = job.wait(600)
        assert loaded["already"] is False
        assert set(loaded["timings"]) == {"import torch", "import pipeline", "load models", "load detector", "wrinkle basis"}
        assert all(v >= 0 for v in loaded["timings"].values())
        assert [m for m in job.messages if "loading" in m], job.messages
        assert c.call("load", timeout=60, device="auto", landmarks="auto", mode="deca")["already"] is True
        with pytest.raises(WorkerError, match="unknown reconstruction mode"):
            c.call("load", timeout=60, mode="magic")
        job = c.request("reconstruct", photo=str(photo), out_dir=str(tmp_path / "out"))
        data = job.wait(600)
        fractions = [m for m in job.messages]
        assert fractions and job.fraction == 1.0
        folders = [Path(p) for p in data["results"]]
        assert len(folders) == 1 and (folders[0] / "result.npz").is_file()
        res = ReconstructionResult.load(folders[0])
        out = c.call("decode_displacement", timeout=300, result=str(folders[0]), exp=res.exp.tolist(),
                     jaw=res.pose[3:6].tolist(), out=str(tmp_path / "d.npy"))
        disp = np.load(out["path"])
        assert disp.shape == (256, 256) and disp.dtype == np.float32
        np.testing.assert_allclose(disp, res.displacement, atol=1e-6)
        with pytest.raises(WorkerError) as exc:
            c.call("decode_displacement", timeout=60, result=str(folders[0]), exp=[0.0] * 10, jaw=[0.0] * 3)
        assert "50 expression" in str(exc.value)
        _check_early_parts(c, photo, tmp_path / "early", folders[0])
        # The same photo in fit mode (FLAME only): a result folder whose details are marked not animatable.
        fit = c.call("reconstruct", timeout=600, photo=str(photo), out_dir=str(tmp_path / "fit"), mode="fit")
        fitted = ReconstructionResult.load(fit["results"][0])
        assert fitted.mode == "fit" and fitted.animatable_detail is False
        assert fitted.vertices.shape == (5023, 3)
        # no face in fit mode is the user's NoFaceError, as in deca mode, not an internal error
        noface = tmp_path / "noface.png"
        from PIL import Image

        yy, xx = np.mgrid[0:200, 0:300]
        Image.fromarray(np.stack([xx % 256, yy, (xx + yy) % 256], -1).astype(np.uint8)).save(noface)
        for mode in ("deca", "fit"):
            with pytest.raises(WorkerError) as exc:
                c.call("reconstruct", timeout=300, photo=str(noface), out_dir=str(tmp_path / "nf"), mode=mode)
            assert exc.value.error_type == "NoFaceError" and "internal error" not in str(exc.value), mode
        with pytest.raises(WorkerError, match="unknown reconstruction mode"):
            c.call("reconstruct", timeout=60, photo=str(photo), out_dir=str(tmp_path / "x"), mode="magic")
    finally:
        c.stop()


def _check_early_parts(c, photo, out, plain_folder) -> None:
    """reconstruct with early=True: two early parts per face before the answer (the rig, then the wrinkle
    model and displacement), naming the folder that is then written, whose .npz files hold exactly (same
    dtypes, same bits) the fields result.npz then stores; the folder itself is the one a plain reconstruct
    writes (result.npz equal array by array: the same code on the same photo, deterministic on the CPU)."""
    import numpy as np

    # what deca_blender/scene/head.py builds from (EARLY_FIELDS, EARLY_WRINKLE_FIELDS; no bpy here)
    fields = {"rig": {"source_image", "image_size", "face_index", "exp", "pose", "cam", "crop_matrix", "faces",
                      "uv_coords", "uv_faces", "rig_template", "rig_expr_basis", "rig_posedirs", "rig_weights",
                      "rig_joints", "rig_parents", "is_test_model", "rig_shape_basis"},
              "wrinkles": {"wrinkle_base", "wrinkle_maps", "wrinkle_matrix", "displacement"}}
    job = c.request("reconstruct", photo=str(photo), out_dir=str(out), early=True)
    parts = []
    for i in range(2):
        step = job.next_part(i)
        part = step.wait(600)
        assert "early" in part and step.error is None and not step.cancelled
        parts.append(part["early"])
    assert [p["part"] for p in parts] == ["rig", "wrinkles"] and parts[0]["name"] == parts[1]["name"]
    data = job.next_part(2).wait(600)  # then the answer
    assert job.done and len(job.early) == 2 and "results" in data
    folder = Path(data["results"][0])
    assert folder.name == parts[0]["name"] and folder.parent == out
    for p in parts:
        with np.load(p["path"]) as z, np.load(folder / "result.npz") as final:
            assert set(z.files) == fields[p["part"]] and fields[p["part"]] <= set(final.files)
            for k in z.files:
                assert z[k].dtype == final[k].dtype and z[k].shape == final[k].shape, k
                assert np.array_equal(z[k], final[k]), k
    with np.load(folder / "result.npz") as a, np.load(plain_folder / "result.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            assert np.array_equal(a[k], b[k]), k
    # The early files are the reader's to delete; the next request removes those left behind.
    assert all(Path(p["path"]).is_file() for p in parts)
    job = c.request("reconstruct", photo=str(photo), out_dir=str(out), early=True)
    nxt = job.next_part(0).wait(600)["early"]
    job.wait(600)
    assert not any(Path(p["path"]).exists() for p in parts) and Path(nxt["path"]).is_file()
    # Without early=True nothing goes ahead.
    job = c.request("reconstruct", photo=str(photo), out_dir=str(out))
    job.wait(600)
    assert job.early == [] and job.next_part(0).wait(1)["results"]
    # Two faces: each face's two parts in turn, named as its folder.
    from PIL import Image

    a = Image.open(photo).convert("RGB")
    canvas = Image.new("RGB", (2 * a.width + 40, a.height), (128, 128, 128))
    canvas.paste(a, (0, 0))
    canvas.paste(a.resize((int(a.width * 0.8), int(a.height * 0.8))), (a.width + 40, 20))
    canvas.save(out / "two faces.png")
    job = c.request("reconstruct", photo=str(out / "two faces.png"), out_dir=str(out / "two"), early=True,
                    all_faces=True)
    folders = [Path(p) for p in job.wait(600)["results"]]
    assert [(p["name"], p["part"]) for p in job.early] == [
        (f.name, part) for f in folders for part in ("rig", "wrinkles")] and len(folders) == 2


def test_blender_worker_without_torch_says_what_to_do(tmp_path):
    """A worker Python without torch (Blender's, before Install Dependencies) answers with the remedy."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(shadow), str(REPO)),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")),), log_path=str(tmp_path / "w.log")))
    try:
        assert c.call("hello", timeout=60)["protocol"] == 1  # the worker itself starts without torch
        status = c.call("status", timeout=60)  # the asset status needs numpy only
        # nothing installed: no model rows; the detectors this Python has are listed (finding them needs no torch)
        from core.frontend import DlibDetector, FanDetector, MediaPipeDetector
        found = (("mediapipe", MediaPipeDetector), ("dlib", DlibDetector), ("fan", FanDetector))
        detectors = {n for n, cls in found if cls.is_available()}
        assert "assets" in status and {row["component"] for row in status["licences"]} == detectors
        with pytest.raises(WorkerError) as exc:  # a reconstruction needs torch
            c.call("reconstruct", timeout=60, photo=str(shadow / "torch.py"), out_dir=str(tmp_path / "out"))
        assert exc.value.error_type == "ModuleNotFoundError"
        assert "'torch'" in str(exc.value) and "Install Dependencies" in str(exc.value)
    finally:
        c.stop()


def test_worker_passes_user_errors_on_and_reports_bugs_as_internal(capsys):
    """In process: a DecaError's message goes to the client as it is; any other exception is a bug, reported
    as an internal error with its traceback in the log (stderr)."""
    import io

    from core.frontend import NoFaceError
    from core.worker import Worker

    out = io.StringIO()
    w = Worker(out)

    user_error = NoFaceError("photo.jpg")

    def no_face(rid):
        raise user_error

    def bug(rid):
        return {}["missing"]

    w.cmd_no_face, w.cmd_bug = no_face, bug
    w.handle(1, "no_face", {})
    w.handle(2, "bug", {})
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first == {"id": 1, "type": "error", "error_type": "NoFaceError", "message": str(user_error)}
    assert "photo.jpg" in first["message"]
    assert second["id"] == 2 and second["error_type"] == "KeyError"
    assert second["message"].startswith("internal error in the worker") and "worker log" in second["message"]
    log = capsys.readouterr().err
    assert "Traceback" in log and "KeyError: 'missing'" in log


def test_blender_worker_cancel_interrupts_a_step(client):
    """Cancel takes effect inside a step, not at the next progress message: one 30 s step ends at once."""
    job = client.request("wait", seconds=30, steps=1)
    deadline = time.monotonic() + 60
    while not job.messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.messages, "no progress arrived"
    time.sleep(0.2)  # inside the step's sleep
    t = time.monotonic()
    client.cancel(job)
    with pytest.raises(WorkerError) as exc:
        job.wait(10)
    elapsed = time.monotonic() - t
    assert exc.value.error_type == "Cancelled" and elapsed < 1.0, elapsed
    # The worker is healthy afterwards and a later request is not cancelled by the old signal.
    assert client.call("wait", timeout=30, seconds=0.2, steps=2) == {"waited": 0.2}


def test_blender_worker_cancel_answers_during_a_long_c_call(client):
    """A C call that releases the GIL but no signal breaks (like a torch op): the answer still comes within
    1 s (from the reader side), and the worker serves the next request once the call returns."""
    client.call("hello", timeout=60)  # started: the calibration below times the C call only
    t0 = time.monotonic()
    client.call("wait", timeout=120, seconds=0.0, steps=1, spin=200_000)
    per_200k = time.monotonic() - t0
    spin = int(200_000 * 3.0 / max(per_200k, 1e-3))  # about 3 s of one uninterruptible C call
    job = client.request("wait", seconds=0.0, steps=1, spin=spin)
    while not job.messages:
        time.sleep(0.005)
    time.sleep(0.1)
    t = time.monotonic()
    client.cancel(job)
    with pytest.raises(WorkerError) as exc:
        job.wait(30)
    elapsed = time.monotonic() - t
    assert exc.value.error_type == "Cancelled" and elapsed < 1.0, elapsed
    t = time.monotonic()
    assert client.call("hello", timeout=120)["protocol"] == 1
    assert time.monotonic() - t > 0.5, "the call was interrupted after all: this test proves nothing"


# (progress message that starts the stage, bound on the seconds from the cancel request to the answer)
CANCEL_STAGES = (
    # The landmark detector: dlib's CNN fallback runs as one C call that holds the GIL (no thread of the
    # worker can answer during it); about a second on this loaded 2-core machine. The frontend's limit.
    ("reading", 3.0),
    ("running the networks", 1.0),  # torch ops release the GIL: interrupted between two ops
    ("decoding face", 1.0),  # decoding and writing the folder: the temporary folder is removed
)


def test_blender_worker_cancel_running_reconstruction(tmp_path, photos_dir, test_flame_pkl, deca_data_dir,
                                                     random_deca_checkpoint):
    """Cancel pressed while a photo reconstructs, at each stage: the error arrives within the stage's bound
    (1 s in the networks and while decoding/writing) and no result folder (nor a temporary one) remains;
    the same warm worker then reconstructs the photo."""
    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(REPO),),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")), ("OMP_NUM_THREADS", "1")),
                                  log_path=str(tmp_path / "worker.log")))
    try:
        c.call("install_assets", timeout=300, flame=str(test_flame_pkl), data=str(deca_data_dir),
               deca=str(random_deca_checkpoint))
        out = tmp_path / "out"
        out.mkdir()
        (out / "keep_me").mkdir()  # a folder that was there before must survive the cleanup
        photo = sorted(photos_dir.glob("*.jpg"))[0]
        for stage, bound in CANCEL_STAGES:
            job = c.request("reconstruct", photo=str(photo), out_dir=str(out))
            deadline = time.monotonic() + 600
            while not any(m.startswith(stage) for m in job.messages) and not job.done and time.monotonic() < deadline:
                time.sleep(0.005)
            assert not job.done, f"finished before reaching {stage!r}: {job.messages}"
            t = time.monotonic()
            c.cancel(job)
            with pytest.raises(WorkerError) as exc:
                job.wait(30)
            elapsed = time.monotonic() - t
            print(f"cancel at {stage!r}: {elapsed:.3f} s after the request")
            assert exc.value.error_type == "Cancelled", exc.value
            assert elapsed < bound, f"cancel took {elapsed:.2f} s after the request (at {stage!r})"
            time.sleep(0.3)  # an answer sent during a long C call precedes the cleanup by that call's rest
            assert sorted(p.name for p in out.iterdir()) == ["keep_me"], stage
        data = c.call("reconstruct", timeout=600, photo=str(photo), out_dir=str(out))
        assert len(data["results"]) == 1 and (Path(data["results"][0]) / "result.npz").is_file()
    finally:
        c.stop()


def test_blender_worker_one_log_per_run(client, tmp_path):
    """Each worker run logs to a file of its own; a crash report quotes that run only; old logs rotate."""
    with pytest.raises(WorkerError):
        client.call("wait", timeout=60, bogus_argument=1)  # the traceback (naming the argument) goes to the log
    first = client.log_path
    assert "bogus_argument" in first.read_text()
    client.stop()
    job = client.request("wait", seconds=30, steps=300)  # a new worker run
    while not job.messages:
        time.sleep(0.02)
    assert client.log_path != first and client.log_path.parent == tmp_path
    client._proc.kill()
    with pytest.raises(WorkerError) as exc:
        job.wait(10)
    assert exc.value.error_type == "WorkerDied"
    assert "bogus_argument" not in str(exc.value), "the crash report quotes an earlier run's log"
    assert str(client.log_path) in str(exc.value) or not client.log_path.read_text().strip()
    for _ in range(5):
        client.call("hello", timeout=60)
        client.stop()
    logs = sorted(tmp_path.glob("worker-*.log"))
    assert len(logs) == 5 and first not in logs


def test_blender_worker_video_expressions(tmp_path, photos_dir, test_flame_pkl, deca_data_dir, random_deca_checkpoint):
    """A video through the fast path: every 2nd frame, a frame without a face reported by its number, the
    codes of a frame equal to the full reconstruction of that same decoded frame (measured: 7e-7), no
    temporary frames left."""
    import glob
    import tempfile

    import numpy as np

    cv2 = pytest.importorskip("cv2")
    from core.results.result import ReconstructionResult

    photo = cv2.imread(str(sorted(photos_dir.glob("*.jpg"))[0]))
    scale = 480 / max(photo.shape[:2])
    photo = cv2.resize(photo, (int(photo.shape[1] * scale) // 2 * 2, int(photo.shape[0] * scale) // 2 * 2))
    h, w = photo.shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (w, h))
    blank = np.full_like(photo, 128)
    for frame in (photo, photo, blank, photo, photo):  # frame 2 has no face
        writer.write(frame)
    writer.release()
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()  # frame 0 as the worker's OpenCV decodes it
    cap.release()
    assert ok
    cv2.imwrite(str(tmp_path / "frame0.png"), first)
    before = set(glob.glob(str(Path(tempfile.gettempdir()) / "deca-video-*")))

    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(REPO),),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")),),
                                  log_path=str(tmp_path / "worker.log")))
    try:
        c.call("install_assets", timeout=300, flame=str(test_flame_pkl), data=str(deca_data_dir),
               deca=str(random_deca_checkpoint))
        job = c.request("video_expressions", video=str(video), every=2)
        data = job.wait(600)
        assert job.fraction == 1.0
        assert data["frame_numbers"] == [0, 4] and data["failed"] == [2] and data["n_read"] == 3
        assert data["fps"] == pytest.approx(24.0)
        exp, jaw = np.asarray(data["exp"]), np.asarray(data["jaw"])
        assert exp.shape == (2, 50) and jaw.shape == (2, 3)
        full = c.call("reconstruct", timeout=600, photo=str(tmp_path / "frame0.png"), out_dir=str(tmp_path / "out"))
        res = ReconstructionResult.load(full["results"][0])
        np.testing.assert_allclose(exp[0], res.exp, rtol=1e-4, atol=1e-4 * np.abs(res.exp).max())
        np.testing.assert_allclose(jaw[0], res.pose[3:6], rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(res.pose[3:6]).max()))
        with pytest.raises(WorkerError, match="every must be"):
            c.call("video_expressions", timeout=60, video=str(video), every=0)
        with pytest.raises(WorkerError) as exc:
            c.call("video_expressions", timeout=60, video=str(tmp_path / "none.mp4"))
        assert exc.value.error_type == "VideoReadError" and "none.mp4" in str(exc.value)
    finally:
        c.stop()
    assert set(glob.glob(str(Path(tempfile.gettempdir()) / "deca-video-*"))) <= before  # frames removed


def test_worker_never_interrupts_an_import(tmp_path, monkeypatch):
    """A cancel arriving while a module imports waits for the import (a package interrupted in its __init__
    leaves its submodules bound to a dead parent: mediapipe -> matplotlib broke every later request)."""
    import importlib

    from core.worker import _importing

    (tmp_path / "deca_probe_import.py").write_text(
        "import sys\nfrom core.worker import _importing\nINSIDE = _importing(sys._getframe())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("deca_probe_import")
    assert module.INSIDE is True
    assert _importing(sys._getframe()) is False
