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

from deca_blender.worker_client import WorkerClient, WorkerConfig, WorkerError, pip_install_command

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
    cmd = pip_install_command("/blender/python", "/ext/deps", "CPU")
    assert cmd[:3] == ["/blender/python", "-m", "pip"] and "--target" in cmd and "/ext/deps" in cmd
    assert "torch==2.13.0" in cmd and "https://download.pytorch.org/whl/cpu" in cmd
    assert any(c.startswith("numpy") for c in cmd)


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
        c.call("install_assets", timeout=300, flame=str(test_flame_pkl), data=str(deca_data_dir),
               deca=str(random_deca_checkpoint))
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


def test_blender_worker_without_torch_says_what_to_do(tmp_path):
    """A worker Python without torch (Blender's, before Install Dependencies) answers with the remedy."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    c = WorkerClient(WorkerConfig(python=sys.executable, pythonpath=(str(shadow), str(REPO)),
                                  env=(("DECA_BLENDER_HOME", str(tmp_path / "home")),), log_path=str(tmp_path / "w.log")))
    try:
        assert c.call("hello", timeout=60)["protocol"] == 1  # the worker itself starts without torch
        assert "assets" in c.call("status", timeout=60)  # the asset status needs numpy only
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
