"""The inference worker: a JSON-lines server that runs the torch side for the Blender add-on.

    python -m core.worker

Blender's UI process never imports torch; it starts this module in a separate process (Blender's own
Python with the dependencies installed into the extension's private folder, or an external Python) and
talks to it over pipes. One request per line on stdin, one message per line on stdout, logs on stderr:

    request   {"id": 7, "cmd": "reconstruct", "args": {"photo": "...", "out_dir": "..."}}
    progress  {"id": 7, "type": "progress", "fraction": 0.4, "message": "detecting landmarks"}
              (reconstruct with "early": true adds "early": {"name", "part", "path"}: result fields sent ahead)
    result    {"id": 7, "type": "result", "data": {"results": ["/out/photo_face0"]}}
    error     {"id": 7, "type": "error", "error_type": "ResultError", "message": "..."}

Commands: `hello` (versions, what is importable), `status` (asset status with each installed component's
licence), `install_assets`,
`load` (warm up: import torch, load the models and the detector for given settings, answering each
stage's seconds), `reconstruct` (photo -> result folders), `decode_displacement` (result folder + exp (50) + jaw (3) -> a
256x256 float32 .npy), `video_expressions` (a video + every N -> the exp (K, 50) and jaw (K, 3) of every
Nth frame with their frame numbers, through the expression-only fast path), `wait` (a cancellable no-op with progress, for diagnostics and tests; `spin`
adds a long uninterruptible C call per step),
`cancel` ({"target": id}: cancels a queued or running request, which then answers an error with
error_type "Cancelled"), `shutdown`.

Requests run one at a time in order; `cancel` and `shutdown` are handled as soon as they arrive (a
cancelled request still waiting in the queue is answered Cancelled at once). A user's
error (`core.errors.DecaError`: no face, missing assets, ...) is answered with its class name and its own
message, as the command line prints it; anything else is a bug: its traceback goes to the log and the
answer says "internal error". A request that is not an object with a string `cmd` gets a ProtocolError
under its own id. Reconstructors come from `core.commands.modes.make_reconstructor`, as in the CLI.

A running request is interrupted where it is (not only at its next progress step): the reader thread
signals the main thread, whose handler raises `Cancelled` as soon as the current C call (a torch op, a
sleep) returns, and the command's cleanups remove what it had written (a cancelled reconstruction
leaves no result folder). If one C call holds on longer than CANCEL_GRACE_S, the reader side answers
Cancelled itself; the command stops, and cleans up, when that call returns. A C call that holds the
GIL stops every thread, so nothing can answer during it: the landmark detector (dlib's predictor loads
in one such call of over a second) is therefore loaded with the models, not inside the first photo.
Anything a library prints to stdout is redirected to stderr so it cannot corrupt the protocol.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from core.errors import DecaError
# `python -m core.worker` starts with its working folder (the Blender extension folder) first on sys.path.
# `core` is imported by now (its submodules resolve through core.__path__), so move that folder last:
# the extension's own top-level modules (e.g. deca_blender's packaging.py) must not shadow installed
# packages (matplotlib, imported by mediapipe, imports `packaging.version`).
_cwd = os.path.abspath(os.getcwd())
sys.path[:] = ([p for p in sys.path if os.path.abspath(p or ".") != _cwd]
               + [p for p in sys.path if os.path.abspath(p or ".") == _cwd])

PROTOCOL_VERSION = 1
CANCEL_GRACE_S = 0.25  # a cancelled request not answered by then is answered by the reader side
PIPELINE_MODULE = "core.pipeline.reconstruct"


class Cancelled(Exception):
    """The client cancelled the request."""


class RequestError(DecaError, ValueError):
    """A request the worker cannot run as given (unknown mode, missing photo, wrong sizes)."""


class Worker:
    def __init__(self, out) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._cancelled: set[Any] = set()
        self._cancel_lock = threading.RLock()  # re-entrant: the SIGINT handler may run while the main thread holds it
        self._current: Any = None
        self._reconstructors: dict = {}
        self._stop = False
        # Cancellation inside a running command: the main thread is interruptible only while a handler
        # runs; `_interrupt` marks a signal as ours (a real Ctrl-C stays a KeyboardInterrupt).
        self._interruptible = False
        self._interrupt = False
        self._cleanups: list[Callable[[], None]] = []
        self._main_thread = threading.main_thread().ident
        self._answered: set[Any] = set()  # requests whose answer is sent (at most one answer each)
        self._queued: set[Any] = set()  # ids read but not started yet
        self._early_dir: Path | None = None  # where early reconstructs put their rigs (`cmd_reconstruct`)

    # ------------------------------------------------------------------ messages

    def send(self, message: dict) -> None:
        line = json.dumps(message, default=_json_default)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def _final(self, message: dict) -> None:
        """Send a request's one answer (result or error), unless it was already answered (see `_answer_stuck`)."""
        with self._cancel_lock:
            if message.get("id") in self._answered:
                return
            self._answered.add(message.get("id"))
        self.send(message)

    def _answer_stuck(self, rid: Any) -> None:
        """Timer after a cancel: if the main thread is still inside one long C call that a signal cannot
        break (one big torch op), answer Cancelled now; the command still raises Cancelled, and runs its
        cleanups, as soon as that call returns. (A C call that also holds the GIL blocks every thread of
        the worker, this one too: no Python code can answer before it returns.)"""
        with self._cancel_lock:
            if self._current != rid or rid not in self._cancelled or rid in self._answered:
                return
            self._answered.add(rid)
        self.send({"id": rid, "type": "error", "error_type": "Cancelled", "message": "cancelled"})

    def progress(self, rid: Any, fraction: float | None, message: str = "") -> None:
        self.check_cancel(rid)
        msg: dict = {"id": rid, "type": "progress", "message": str(message)}
        if fraction is not None:
            msg["fraction"] = max(0.0, min(1.0, float(fraction)))
        self.send(msg)

    def check_cancel(self, rid: Any) -> None:
        with self._cancel_lock:
            if rid in self._cancelled:
                raise Cancelled("cancelled")

    # ------------------------------------------------------------------ loop

    def read_requests(self, stream) -> None:
        """Reader thread: queue requests, handle cancel/shutdown immediately."""
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                req = json.loads(line)
            except ValueError as exc:
                self.send({"id": None, "type": "error", "error_type": "ProtocolError", "message": f"bad request: {exc}"})
                continue
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                # answer with the request's own id when it has one, so the client can match the error
                rid = req.get("id") if isinstance(req, dict) else None
                self.send({"id": rid, "type": "error", "error_type": "ProtocolError",
                           "message": "bad request: a request is a JSON object with a string 'cmd'"})
                continue
            cmd = req["cmd"]
            if cmd == "cancel":
                target = (req.get("args") or {}).get("target")
                with self._cancel_lock:
                    self._cancelled.add(target)
                    if target in self._queued and target not in self._answered:
                        # Queued behind another request (e.g. the add-on's warm-up `load`): answer now, not
                        # when it would have started; `handle` then only finds it cancelled.
                        self._answered.add(target)
                        self.send({"id": target, "type": "error", "error_type": "Cancelled", "message": "cancelled"})
                    elif target is not None and target == self._current and self._interruptible:
                        self._interrupt_main()
                        timer = threading.Timer(CANCEL_GRACE_S, self._answer_stuck, args=(target,))
                        timer.daemon = True
                        timer.start()
                self.send({"id": req.get("id"), "type": "result", "data": {"cancelled": target}})
            elif cmd == "shutdown":
                self._queue.put(req)
                break
            else:
                with self._cancel_lock:
                    self._queued.add(req.get("id"))
                self._queue.put(req)
        self._queue.put(None)  # stdin closed: stop after the queue drains

    def _interrupt_main(self) -> None:
        """Make the main thread raise `Cancelled` now (called with the cancel lock held)."""
        self._interrupt = True
        if hasattr(signal, "pthread_kill"):
            # A real signal also wakes a blocking call (sleep, read) in the main thread.
            signal.pthread_kill(self._main_thread, signal.SIGINT)
        else:  # Windows: raised at the next bytecode boundary
            import _thread

            _thread.interrupt_main()

    def on_sigint(self, signum, frame) -> None:
        """SIGINT handler (installed by `main`): our cancel signal raises `Cancelled` if the cancelled
        request is still running; a signal from anyone else behaves as Python's default."""
        with self._cancel_lock:
            ours, self._interrupt = self._interrupt, False
            running = self._interruptible and self._current in self._cancelled
            if ours and running and _importing(frame):
                # Never raise inside an import (`_importing`): it would leave broken modules behind.
                # Signal again shortly, once that import is done.
                timer = threading.Timer(0.02, self._reinterrupt)
                timer.daemon = True
                timer.start()
                return
        if ours:
            if running:
                raise Cancelled("cancelled")
            return  # the request finished before the signal arrived: nothing to interrupt
        raise KeyboardInterrupt

    def _reinterrupt(self) -> None:
        with self._cancel_lock:
            if self._interruptible and self._current in self._cancelled:
                self._interrupt_main()

    def on_cancel(self, cleanup: Callable[[], None]) -> None:
        """Register `cleanup` to run if the current request is cancelled (undo what it wrote)."""
        self._cleanups.append(cleanup)

    def serve(self, stream) -> int:
        threading.Thread(target=self.read_requests, args=(stream,), daemon=True).start()
        while True:
            req = self._queue.get()
            if req is None:
                return 0
            rid = req.get("id")
            with self._cancel_lock:
                self._queued.discard(rid)
            if req["cmd"] == "shutdown":
                self.send({"id": rid, "type": "result", "data": {"bye": True}})
                return 0
            self.handle(rid, req["cmd"], req.get("args") or {})

    def handle(self, rid: Any, cmd: str, args: dict) -> None:
        handler: Callable | None = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            self.send({"id": rid, "type": "error", "error_type": "ProtocolError", "message": f"unknown command {cmd!r}"})
            return
        try:  # wrong arguments are the client's mistake; a TypeError inside a command is a bug
            inspect.signature(handler).bind(rid, **args)
        except TypeError as exc:
            print(f"{cmd} {rid}: ProtocolError: {exc}", file=sys.stderr, flush=True)  # the log names it too
            self.send({"id": rid, "type": "error", "error_type": "ProtocolError", "message": f"{cmd}: {exc}"})
            return
        self._current = rid
        self._cleanups = []
        try:
            self.check_cancel(rid)
            with self._cancel_lock:
                self._interruptible = True
            try:
                data = handler(rid, **args)
            except Exception as exc:
                with self._cancel_lock:
                    if rid in self._cancelled and not isinstance(exc, Cancelled):
                        # a library turned our Cancelled into its own error: still a cancel (log it)
                        print(traceback.format_exc(), file=sys.stderr, flush=True)
                        raise Cancelled("cancelled") from exc
                raise
            finally:
                with self._cancel_lock:
                    self._interruptible = False
            self.check_cancel(rid)  # cancelled while the answer was being made: still cancelled
            self._final({"id": rid, "type": "result", "data": data})
        except Cancelled:
            for cleanup in reversed(self._cleanups):
                try:
                    cleanup()
                except Exception:  # a cleanup must not turn a cancel into an error
                    print(traceback.format_exc(), file=sys.stderr, flush=True)
            self._final({"id": rid, "type": "error", "error_type": "Cancelled", "message": "cancelled"})
        except ModuleNotFoundError as exc:  # the worker's Python lacks a dependency: the user installs it
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self._final({"id": rid, "type": "error", "error_type": "ModuleNotFoundError", "message": (
                f"the worker's Python ({sys.executable}) lacks the module {exc.name!r}: install the dependencies "
                "(Blender: Preferences > Add-ons > DECA Heads > Install Dependencies) or choose a Python that has them")})
        except DecaError as exc:
            # The user's errors (NoFaceError, AssetError, FlameModelError, ...): their messages already name the
            # file and what to do; pass them on exactly, like the command line prints them.
            print(f"{cmd} {rid}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._final({"id": rid, "type": "error", "error_type": type(exc).__name__, "message": str(exc)})
        except Exception as exc:  # a bug: say so, with the type; the traceback goes to the log
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self._final({"id": rid, "type": "error", "error_type": type(exc).__name__,
                       "message": f"internal error in the worker ({type(exc).__name__}: {exc}); see the worker log"})
        finally:
            self._cleanups = []
            with self._cancel_lock:
                self._interruptible = False
                self._current = None
                self._cancelled.discard(rid)
                self._answered.discard(rid)

    # ------------------------------------------------------------------ commands

    def cmd_hello(self, rid: Any) -> dict:
        return {
            "protocol": PROTOCOL_VERSION,
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "executable": sys.executable,
            "torch": _module_version("torch"),
            "numpy": _module_version("numpy"),
            "pipeline": importlib.util.find_spec(PIPELINE_MODULE) is not None,
            "core": str(Path(__file__).resolve().parent),  # which copy of the core runs (checkout or extension)
        }

    def _manager(self, home: str | None):
        from core.assets.manager import AssetManager

        return AssetManager(home) if home else AssetManager()

    def cmd_status(self, rid: Any, home: str | None = None) -> dict:
        return _status_with_licences(self._manager(home))

    def cmd_install_assets(self, rid: Any, home: str | None = None, flame: str | None = None, deca: str | None = None,
                           data: str | None = None, texture: str | None = None, force: bool = False) -> dict:
        given = [x for x in (flame, deca, data, texture) if x]
        if not given:
            raise RequestError("nothing to install: give the FLAME file, the DECA checkpoint and/or the data folder")
        m = self._manager(home)
        steps = {"n": 0}

        def report(message: str) -> None:
            steps["n"] += 1
            self.progress(rid, None, message)

        notes = m.install(flame=flame, deca=deca, data=data, texture=texture, force=force, progress=report)
        self._reconstructors.clear()  # new assets: rebuild on the next reconstruct
        return {"notes": notes, "status": _status_with_licences(m)}

    def _reconstructor(self, home: str | None, device: str, landmarks: str, mode: str = "deca"):
        """The mode's reconstructor from the one factory the CLI uses too (kept warm per settings)."""
        key = (home, device, landmarks, mode)
        if key not in self._reconstructors:
            if importlib.util.find_spec(PIPELINE_MODULE) is None:
                raise RequestError(f"this deca-blender has no reconstruction pipeline ({PIPELINE_MODULE} is missing)")
            from core.commands.modes import ModeOptions, make_reconstructor

            # the detector loads on the first photo: decode_displacement needs none
            self._reconstructors[key] = make_reconstructor(
                mode, ModeOptions(device=device, landmarks=landmarks, home=home), load_detector=False)
        return self._reconstructors[key]

    def cmd_load(self, rid: Any, home: str | None = None, device: str = "auto", landmarks: str = "auto",
                 mode: str = "deca") -> dict:
        """Warm up: import torch and the pipeline, load the models and the landmark detector for these settings,
        so the next `reconstruct` with them runs at once. The add-on sends it when Blender starts (or the panel
        or the photo browser first opens) while the user picks a photo. Answers each stage's seconds."""
        from core.commands.modes import MODES

        if mode not in MODES:
            raise RequestError(f"unknown reconstruction mode {mode!r}: use {', '.join(MODES)}")
        key = (home, device, landmarks, mode)
        if key in self._reconstructors:
            # made earlier (by reconstruct, or by decode_displacement, which loads no detector): the detector too
            t = time.perf_counter()
            self._reconstructors[key].warm_up()  # the detector and the wrinkle basis, if not loaded yet
            return {"loaded": True, "already": True, "timings": {"warm up": time.perf_counter() - t}}
        timings: dict = {}
        t = time.perf_counter()
        self.progress(rid, 0.0, "importing torch")
        import torch  # noqa: F401 - the largest part of a cold start: timed on its own

        timings["import torch"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress(rid, 0.3, "importing the pipeline")
        if importlib.util.find_spec(PIPELINE_MODULE) is not None:
            importlib.import_module(PIPELINE_MODULE)
        timings["import pipeline"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress(rid, 0.5, "loading the models")
        rec = self._reconstructor(home, device, landmarks, mode)
        timings["load models"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress(rid, 0.7, "loading the landmark detector")
        rec.detector  # noqa: B018 - see cmd_reconstruct: loaded here, not inside the first photo
        timings["load detector"] = time.perf_counter() - t
        t = time.perf_counter()
        self.progress(rid, 0.8, "preparing the wrinkle basis")
        rec.warm_up()  # the shared wrinkle basis: from the cache, or built once per checkpoint (seconds)
        timings["wrinkle basis"] = time.perf_counter() - t
        return {"loaded": True, "already": False, "timings": timings}

    def cmd_reconstruct(self, rid: Any, photo: str, out_dir: str, all_faces: bool = False, home: str | None = None,
                        device: str = "auto", landmarks: str = "auto", mode: str = "deca", early: bool = False) -> dict:
        """Photo -> result folders. With ``early``, each face's result fields go ahead in two parts (progress
        messages with "early": {"name": the planned folder name, "part": "rig" or "wrinkles", "path": an .npz
        of those fields, stored as result.npz stores them}): the rig as soon as the networks ran, the wrinkle
        model and the displacement before the folder is written (`Reconstructor.reconstruct_photo`'s
        on_fields), so that Blender builds the head while the worker goes on (the folder is written exactly
        as without). The .npz files are the reader's to delete; what is left is removed at the next request
        and when the worker exits."""
        from core.commands.modes import MODES

        if not Path(photo).is_file():
            raise RequestError(f"photo not found: {photo}")
        if mode not in MODES:
            raise RequestError(f"unknown reconstruction mode {mode!r}: use {', '.join(MODES)}")
        self.on_cancel(_remove_new_results(Path(out_dir)))
        self.progress(rid, 0.0, "loading the models")
        rec = self._reconstructor(home, device, landmarks, mode)
        # The landmark detector loads with the models, not inside the photo's steps: dlib's predictor
        # loads in one GIL-holding C call of over a second, during which nothing can answer a cancel.
        rec.detector
        rec.reset_timings()
        self.progress(rid, 0.05, "reconstructing" if mode == "deca" else "fitting")
        t = time.perf_counter()
        kwargs = {}
        if early and "on_fields" in inspect.signature(rec.reconstruct_photo).parameters:  # the fit modes: no
            kwargs["on_fields"] = self._early_sender(rid)
        folders = rec.reconstruct_photo(photo, out_dir, all_faces=all_faces,
                                        progress=self._progress_callback(rid, 0.05, 1.0), **kwargs)
        return {"results": [str(f) for f in folders], "seconds": time.perf_counter() - t, "timings": dict(rec.timings)}

    def _early_sender(self, rid: Any) -> Callable[[str, str, dict], None]:
        """The `on_fields` callback of an early reconstruct: writes the fields to this worker's early
        folder (older requests' files removed first) and sends their path in a progress message."""
        import tempfile

        import numpy as np

        if self._early_dir is None:
            self._early_dir = Path(tempfile.mkdtemp(prefix="deca-early-"))
        for old in self._early_dir.glob("*.npz"):
            old.unlink(missing_ok=True)
        count = iter(range(1 << 30))

        def send(name: str, part: str, fields: dict) -> None:
            arrays = {k: stored_array(k, v) for k, v in fields.items() if v is not None}
            path = self._early_dir / f"{os.getpid()}-{rid}-{next(count)}.npz"
            # A scratch file read once: no fsync (atomic_write_bytes's costs tens of ms here). It is complete
            # before its path is sent, so no reader sees half of it.
            with open(path, "wb") as f:
                np.savez(f, **arrays)
            self.check_cancel(rid)
            message = f"building the head {name}" if part == "rig" else f"writing {name}"
            self.send({"id": rid, "type": "progress", "message": message,
                       "early": {"name": name, "part": part, "path": str(path)}})

        return send

    def remove_early_dir(self) -> None:
        if self._early_dir is not None:
            shutil.rmtree(self._early_dir, ignore_errors=True)
            self._early_dir = None

    def cmd_video_expressions(self, rid: Any, video: str, every: int = 1, max_frames: int | None = None,
                              home: str | None = None, device: str = "auto", landmarks: str = "auto") -> dict:
        """Expression and jaw of every `every`-th frame of a video through the expression-only fast path
        (core.pipeline.expressions): no result folder per frame. The frames go to a temporary folder that is
        removed afterwards, cancelled or not. Answer: frame numbers (0-based, in the video), exp (K, 50),
        jaw (K, 3), fps, and the frames that failed (no face)."""
        import tempfile

        from core.frontend.video import extract_frames
        from core.pipeline.expressions import decode_expressions

        every = int(every)
        if every < 1:
            raise RequestError(f"every must be >= 1, got {every}")
        tmp = Path(tempfile.mkdtemp(prefix="deca-video-"))
        try:
            self.progress(rid, 0.0, "reading the video")
            frames = extract_frames(video, tmp, every=every, max_frames=max_frames,
                                    progress=self._progress_callback(rid, 0.0, 0.2))
            self.progress(rid, 0.2, "loading the models")
            rec = self._reconstructor(home, device, landmarks, "deca")
            rec.detector
            number = {str(p): n for p, n in zip(frames.paths, frames.frame_numbers)}
            codes = decode_expressions(rec, frames.paths, progress=self._progress_callback(rid, 0.25, 1.0))
            return {"frame_numbers": [number[s] for s in codes.sources], "exp": codes.exp.tolist(),
                    "jaw": codes.jaw.tolist(), "fps": frames.fps, "n_read": len(frames.paths),
                    "failed": [number.get(f.photo, f.photo) for f in codes.failed], "seconds": codes.seconds}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def cmd_decode_displacement(self, rid: Any, result: str, exp: list, jaw: list, out: str | None = None,
                                home: str | None = None, device: str = "auto", landmarks: str = "auto") -> dict:
        import numpy as np

        from core.atomic import atomic_write_bytes
        from core.results.result import ReconstructionResult
        from core.sizes import N_EXP, N_JAW

        exp_a = np.asarray(exp, np.float32).ravel()
        jaw_a = np.asarray(jaw, np.float32).ravel()
        if exp_a.size != N_EXP or jaw_a.size != N_JAW:
            raise RequestError(f"decode_displacement needs {N_EXP} expression values and {N_JAW} jaw values, "
                               f"got {exp_a.size} and {jaw_a.size}")
        res = ReconstructionResult.load(result)
        rec = self._reconstructor(home, device, landmarks)
        disp = np.asarray(rec.decode_displacement(res, exp_a, jaw_a), np.float32)
        if disp.shape != (256, 256):
            raise RuntimeError(f"the decoder returned shape {disp.shape}, expected (256, 256)")
        path = Path(out) if out else Path(result) / "exact_displacement.npy"
        atomic_write_bytes(path, lambda f: np.save(f, disp))
        return {"path": str(path)}

    def cmd_wait(self, rid: Any, seconds: float = 1.0, steps: int = 10, spin: int = 0) -> dict:
        steps = max(1, int(steps))
        for i in range(steps):
            self.progress(rid, i / steps, f"waiting {i + 1}/{steps}")
            time.sleep(float(seconds) / steps)
            if spin:  # one long C call that no signal breaks but that releases the GIL, like a torch op (tests)
                import hashlib

                hashlib.pbkdf2_hmac("sha256", b"deca", b"worker", int(spin))
        self.check_cancel(rid)
        return {"waited": float(seconds)}

    def _progress_callback(self, rid: Any, lo: float, hi: float) -> Callable:
        """A progress callback for the pipeline, tolerant of its signature: numbers are fractions in [0, 1]
        (or (done, total)), strings are messages. Raises Cancelled when the client cancelled."""

        def callback(*args, **kwargs) -> None:
            numbers = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, bool)]
            texts = [a for a in args if isinstance(a, str)]
            fraction = kwargs.get("fraction")
            if fraction is None and numbers:
                fraction = numbers[0] / numbers[1] if len(numbers) >= 2 and numbers[1] else numbers[0]
            message = kwargs.get("message") or (texts[0] if texts else "")
            self.progress(rid, None if fraction is None else lo + (hi - lo) * float(fraction), message)

        return callback


def _importing(frame) -> bool:
    """Whether `frame` (or a caller) runs inside an import. An exception raised there breaks the process:
    a C extension's init becomes "initialization failed", and a Python package interrupted in its
    `__init__` is removed from sys.modules while the submodules it had loaded stay, bound to the dead
    parent (seen: mediapipe importing matplotlib, whose `cbook` then called `matplotlib.get_data_path`
    on the half-made module in every later request). So the cancel waits until the import is done; the
    reader side answers Cancelled after CANCEL_GRACE_S meanwhile."""
    while frame is not None:
        code = frame.f_code
        if code.co_filename.startswith("<frozen importlib._bootstrap") and code.co_name in (
                "_load_unlocked", "exec_module", "create_module", "_call_with_frames_removed"):
            return True
        if (code.co_name in ("create_module", "exec_module")
                and type(frame.f_locals.get("self")).__name__ == "ExtensionFileLoader"):
            return True
        frame = frame.f_back
    return False


def _status_with_licences(manager) -> dict:
    """The asset status (core.assets.manager.status_as_json) plus "licences": one row per installed model file
    and installed landmark detector (component, what, licence, commercial), from the table `--commercial`
    checks against (core.assets.licences), for the add-on's preferences."""
    from core.assets.licences import component_licences
    from core.assets.manager import status_as_json

    status = status_as_json(manager)
    try:
        rows = component_licences(manager)  # the installed detectors too (core.frontend: numpy, no torch)
    except ModuleNotFoundError:  # no numpy yet (before Install Dependencies): the model files' rows only
        rows = component_licences(manager, detectors=())
    status["licences"] = [c.to_dict() for c in rows]
    return status


def stored_array(name: str, value: Any):
    """A `ReconstructionResult` field as result.npz stores it (`ReconstructionResult.to_arrays`: float64 as
    float32 except the crop matrix, str/bool/int as numpy scalars), so that an early rig equals the folder's
    bit for bit (tests/test_worker.py checks it against the written result.npz)."""
    import numpy as np

    if isinstance(value, str):
        return np.str_(value)
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        return np.int64(value)
    arr = np.asarray(value)
    return arr.astype(np.float32) if arr.dtype == np.float64 and name != "crop_matrix" else arr


def _remove_new_results(out_dir: Path) -> Callable[[], None]:
    """A cleanup that removes the result folders (and unfinished temporary folders) that appear in
    `out_dir` after this call: what a cancelled reconstruction had written. Folders present now are kept."""
    try:
        before = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else set()
    except OSError:
        before = set()

    def cleanup() -> None:
        if not out_dir.is_dir():
            return
        for p in out_dir.iterdir():
            if p.name in before or not p.is_dir() or p.is_symlink():
                continue
            if (p / "result.npz").is_file() or (p.name.startswith(".") and ".tmp-" in p.name):
                shutil.rmtree(p, ignore_errors=True)

    return cleanup


def _module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def main() -> int:
    # The protocol gets its own copy of stdout; fd 1 and sys.stdout then point at stderr so that prints of
    # any library (or C code writing to fd 1) end up in the log, not in the protocol stream.
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(proto)
    signal.signal(signal.SIGINT, worker.on_sigint)
    worker.send({"id": None, "type": "ready", "data": {"protocol": PROTOCOL_VERSION, "pid": os.getpid()}})
    try:
        return worker.serve(sys.stdin)
    finally:
        worker.remove_early_dir()
        proto.flush()


if __name__ == "__main__":
    sys.exit(main())
