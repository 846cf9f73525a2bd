"""Starting and talking to the inference worker (`python -m core.worker`). No torch, no bpy here.

The worker is a child process speaking JSON lines (see core/worker.py). A reader thread parses its
stdout into `Job` objects; Blender's operators poll them from a timer (modal) or block on them
(`Job.wait`, for scripts and background mode). Each worker run writes its stderr to a log file of its
own (`<stem>-<date>-<time>-<n>.log` beside the configured log path; the newest `KEEP_LOGS` are kept), and
only that run's last lines are quoted when the worker dies, so the user sees why, not an older run's
traceback.

Which Python runs the worker:
  * 'BLENDER': the private virtual environment *Install Dependencies* made from Blender's Python in the
    extension's user folder (dependencies.py); before it exists, Blender's own Python (`sys.executable`,
    which then answers that torch is missing), with an older install's `deps` folder on PYTHONPATH;
  * 'EXTERNAL': a Python the user chose (e.g. a virtual environment with torch and CUDA).
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What the worker needs beyond Blender's Python; keep in sync with pyproject.toml's dependencies.
TORCH_REQUIREMENT = "torch==2.13.0"
DEPENDENCIES = ("numpy>=1.24,<2", "scipy>=1.10", "pillow>=10", "platformdirs>=4", "tqdm>=4.60", "pyyaml>=6")
LANDMARK_DEPENDENCIES = ("dlib-bin>=19.24", "face-recognition-models>=0.3")
KEEP_LOGS = 5  # worker logs kept per log folder (one per worker run)
TORCH_INDEX = {"CPU": "https://download.pytorch.org/whl/cpu", "CUDA": "https://download.pytorch.org/whl/cu128"}


class WorkerError(RuntimeError):
    """The worker answered with an error, or died. `error_type` is the worker-side exception's name."""

    def __init__(self, message: str, error_type: str = "WorkerError") -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass
class Job:
    id: int
    cmd: str
    fraction: float = 0.0
    message: str = ""
    done: bool = False
    data: Any = None
    error: str | None = None
    error_type: str | None = None
    messages: list = field(default_factory=list)
    early: list = field(default_factory=list)  # the request's early parts, in order ("early" in its progress)
    _event: threading.Event = field(default_factory=threading.Event, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)  # an early part or the end

    @property
    def cancelled(self) -> bool:
        return self.error_type == "Cancelled"

    def wait(self, timeout: float | None = None) -> Any:
        """Block until finished; returns the result data or raises WorkerError."""
        if not self._event.wait(timeout):
            raise WorkerError(f"the worker did not answer {self.cmd!r} within {timeout} s", "Timeout")
        if self.error is not None:
            raise WorkerError(self.error, self.error_type or "WorkerError")
        return self.data

    def next_part(self, seen: int) -> "JobPart":
        """What comes after the first `seen` early parts: the next early part, or the end (`JobPart`)."""
        return JobPart(self, seen)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()


class JobPart:
    """The next step of a job that answers in parts (a request with early parts, e.g. reconstruct with
    early=True): done when early part number `seen` (0-based) arrived or the job ended; `wait()` answers
    {"early": that part}, else the job's result data (or raises its error). It stands in for the job where
    operators poll or wait (operators/common.py): every other attribute is the job's."""

    def __init__(self, job: Job, seen: int) -> None:
        self.job = job
        self.seen = seen

    def _has_part(self) -> bool:
        return len(self.job.early) > self.seen

    @property
    def done(self) -> bool:
        return self._has_part() or self.job.done

    @property
    def error(self) -> str | None:
        return None if self._has_part() else self.job.error

    @property
    def cancelled(self) -> bool:
        return not self._has_part() and self.job.cancelled

    @property
    def data(self) -> Any:
        return {"early": self.job.early[self.seen]} if self._has_part() else self.job.data

    def wait(self, timeout: float | None = None) -> Any:
        with self.job._changed:
            if not self.job._changed.wait_for(lambda: self.done, timeout):
                raise WorkerError(f"the worker did not answer {self.job.cmd!r} within {timeout} s", "Timeout")
        return self.data if self._has_part() else self.job.wait(0)

    def __getattr__(self, name: str) -> Any:  # id, cmd, fraction, message, ...
        return getattr(self.job, name)


@dataclass(frozen=True)
class WorkerConfig:
    python: str
    pythonpath: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    log_path: str = ""


class WorkerClient:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._log = None
        self.log_path: Path | None = None  # this run's log (None before the first start)
        self._ready = threading.Event()
        self.info: dict = {}

    # ------------------------------------------------------------------ process

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 120.0, wait_ready: bool = True) -> None:
        """Start the worker process. With ``wait_ready`` (the default) wait for its `ready` line and raise a
        StartError naming the Python if it never comes; without, return as soon as the process is spawned
        (the add-on's warm-up, which must not hold Blender's UI): requests sent meanwhile wait in the pipe, and
        a worker that dies fails them with its log's last lines."""
        if self.alive:
            return
        cfg = self.config
        env = dict(os.environ)
        env.update(dict(cfg.env))
        paths = [p for p in cfg.pythonpath if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONHOME", None)
        self.log_path = new_log_path(cfg.log_path or str(Path(tempfile.gettempdir()) / "deca_blender_worker.log"))
        self._log = open(self.log_path, "xb")
        self._ready.clear()
        try:
            self._proc = subprocess.Popen(
                [cfg.python, "-u", "-m", "core.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._log, env=env, cwd=paths[-1] if paths else None, text=True, encoding="utf-8", bufsize=1,
            )
        except OSError as exc:
            raise WorkerError(f"cannot start the worker with Python {cfg.python!r}: {exc}. "
                              "Check the worker Python in the add-on's preferences", "StartError") from exc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not wait_ready:
            return
        if not self._ready.wait(timeout) or not self.alive:
            tail = self.log_tail()
            self.stop()
            raise WorkerError(f"the worker ({cfg.python}) did not start. {tail}", "StartError")

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "ready":
                self.info = msg.get("data") or {}
                self._ready.set()
                continue
            with self._lock:
                job = self._jobs.get(msg.get("id"))
            if job is None:
                continue
            if kind == "progress":
                if "fraction" in msg:
                    job.fraction = float(msg["fraction"])
                job.message = msg.get("message", job.message)
                job.messages.append(job.message)
                if isinstance(msg.get("early"), dict):
                    job.early.append(msg["early"])
                    job._notify()
            elif kind in ("result", "error"):
                if kind == "result":
                    job.data = msg.get("data")
                    job.fraction = 1.0
                else:
                    job.error = msg.get("message", "unknown error")
                    job.error_type = msg.get("error_type", "WorkerError")
                job.done = True
                job._event.set()
                job._notify()
                with self._lock:
                    self._jobs.pop(job.id, None)
        # stdout closed: the worker exited. Fail whatever is still waiting.
        code = proc.wait()
        tail = self.log_tail()
        with self._lock:
            pending = list(self._jobs.values())
            self._jobs.clear()
        for job in pending:
            job.error = f"the worker exited (code {code}) before answering {job.cmd!r}. {tail}"
            job.error_type = "WorkerDied"
            job.done = True
            job._event.set()
            job._notify()
        self._ready.set()

    def log_tail(self, n: int = 12) -> str:
        """The last `n` lines of this worker run's log (never an earlier run's)."""
        path = self.log_path
        if path is None:
            return ""
        try:
            with open(path, "rb") as f:
                lines = deque(f, maxlen=n)
        except OSError:
            return ""
        text = b"".join(lines).decode("utf-8", "replace").strip()
        return f"Worker log {path}:\n{text}" if text else ""

    def stop(self, timeout: float = 5.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._send({"id": next(self._ids), "cmd": "shutdown"})
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        self._proc = None

    # ------------------------------------------------------------------ requests

    def _send(self, message: dict) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise WorkerError("the worker is not running", "WorkerDied")
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    def request(self, cmd: str, **args: Any) -> Job:
        self.start()
        job = Job(next(self._ids), cmd)
        with self._lock:
            self._jobs[job.id] = job
        try:
            self._send({"id": job.id, "cmd": cmd, "args": args})
        except (OSError, ValueError) as exc:
            with self._lock:
                self._jobs.pop(job.id, None)
            raise WorkerError(f"cannot send {cmd!r} to the worker: {exc}. {self.log_tail()}", "WorkerDied") from exc
        return job

    def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        return self.request(cmd, **args).wait(timeout)

    def cancel(self, job: Job) -> None:
        if job.done or not self.alive:
            return
        try:
            self._send({"id": next(self._ids), "cmd": "cancel", "args": {"target": job.id}})
        except (OSError, ValueError):
            pass


# ---------------------------------------------------------------------------------------- configuration


def new_log_path(configured: str, keep: int = KEEP_LOGS) -> Path:
    """A fresh log file name for one worker run, beside `configured` (`<dir>/<stem>.log` ->
    `<dir>/<stem>-YYYYmmdd-HHMMSS-<n>.log`), after deleting all but the newest `keep - 1` earlier runs'
    logs so that `keep` remain with this one."""
    base = Path(configured)
    base.parent.mkdir(parents=True, exist_ok=True)
    stem = base.stem
    old = sorted(base.parent.glob(f"{stem}-????????-??????-*.log"), key=lambda p: (p.stat().st_mtime, p.name))
    for p in old[: max(0, len(old) - (keep - 1))]:
        try:
            p.unlink()
        except OSError:
            pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Numbered after the highest run of this second still on disk, never in a gap: a name freed by the
    # rotation above must not come back, or a crash report could be matched with an older run's name.
    taken = [int(p.stem.rsplit("-", 1)[1]) for p in base.parent.glob(f"{stem}-{stamp}-*.log")
             if p.stem.rsplit("-", 1)[1].isdigit()]
    for n in itertools.count(max(taken, default=0) + 1):
        path = base.parent / f"{stem}-{stamp}-{n}.log"
        if not path.exists():
            return path
    raise AssertionError("unreachable")


def worker_config(python_mode: str = "BLENDER", external_python: str = "", deps_dir: str | None = None,
                  core_root: str | None = None, asset_home: str = "", log_path: str = "",
                  venv_dir: str | None = None) -> WorkerConfig:
    """How to start the worker. `core_root` holds the `core` package (the extension folder)."""
    if core_root is None:
        from .bootstrap import core_root as _core_root

        core_root = str(_core_root())
    if python_mode == "EXTERNAL":
        if not external_python:
            raise WorkerError("the worker Python is set to 'External' but no Python executable is chosen in the "
                              "add-on's preferences", "ConfigError")
        python, paths = external_python, (core_root,)
    elif venv_dir and Path(venv_dir, "Scripts/python.exe" if os.name == "nt" else "bin/python").is_file():
        python, paths = str(Path(venv_dir, "Scripts/python.exe" if os.name == "nt" else "bin/python")), (core_root,)
    else:
        python = sys.executable
        paths = (deps_dir or "", core_root)
    env = (("DECA_BLENDER_HOME", asset_home),) if asset_home else ()
    return WorkerConfig(python=python, pythonpath=tuple(p for p in paths if p), env=env, log_path=log_path)


_clients: dict[WorkerConfig, WorkerClient] = {}


def get_client(config: WorkerConfig) -> WorkerClient:
    """The shared worker for `config` (started lazily; a changed config starts a new one)."""
    for cfg, client in list(_clients.items()):
        if cfg != config:
            client.stop()
            del _clients[cfg]
    client = _clients.get(config)
    if client is None:
        client = _clients[config] = WorkerClient(config)
    return client


def shutdown_all() -> None:
    for client in list(_clients.values()):
        client.stop()
    _clients.clear()


atexit.register(shutdown_all)  # never leave a worker behind when Blender quits


def wait_all(jobs: list[Job], timeout: float | None = None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in jobs:
        job.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
