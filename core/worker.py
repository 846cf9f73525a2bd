"""The inference worker: a JSON-lines server that runs the torch side for the Blender add-on.

    python -m core.worker

Blender's UI process never imports torch; it starts this module in a separate process (Blender's own
Python with the dependencies installed into the extension's private folder, or an external Python) and
talks to it over pipes. One request per line on stdin, one message per line on stdout, logs on stderr:

    request   {"id": 7, "cmd": "reconstruct", "args": {"photo": "...", "out_dir": "..."}}
    progress  {"id": 7, "type": "progress", "fraction": 0.4, "message": "detecting landmarks"}
    result    {"id": 7, "type": "result", "data": {"results": ["/out/photo_face0"]}}
    error     {"id": 7, "type": "error", "error_type": "ResultError", "message": "..."}

Commands: `hello` (versions, what is importable), `status` (asset status), `install_assets`,
`reconstruct` (photo -> result folders), `decode_displacement` (result folder + exp (50) + jaw (3) -> a
256x256 float32 .npy), `wait` (a cancellable no-op with progress, for diagnostics and tests),
`cancel` ({"target": id}: cancels a queued or running request, which then answers an error with
error_type "Cancelled"), `shutdown`.

Requests run one at a time in order; `cancel` and `shutdown` are handled as soon as they arrive. The
error messages are those of the command line (the exceptions' own messages). Anything a library prints
to stdout is redirected to stderr so it cannot corrupt the protocol.
"""
from __future__ import annotations

import importlib.util
import json
import os
import queue
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

# `python -m core.worker` starts with its working folder (the Blender extension folder) first on sys.path.
# `core` is imported by now (its submodules resolve through core.__path__), so move that folder last:
# the extension's own top-level modules (e.g. deca_blender's packaging.py) must not shadow installed
# packages (matplotlib, imported by mediapipe, imports `packaging.version`).
_cwd = os.path.abspath(os.getcwd())
sys.path[:] = ([p for p in sys.path if os.path.abspath(p or ".") != _cwd]
               + [p for p in sys.path if os.path.abspath(p or ".") == _cwd])

PROTOCOL_VERSION = 1
PIPELINE_MODULE = "core.pipeline.reconstruct"


class Cancelled(Exception):
    """The client cancelled the request."""


class Worker:
    def __init__(self, out) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._cancelled: set[Any] = set()
        self._cancel_lock = threading.Lock()
        self._current: Any = None
        self._reconstructors: dict = {}
        self._stop = False

    # ------------------------------------------------------------------ messages

    def send(self, message: dict) -> None:
        line = json.dumps(message, default=_json_default)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

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
                if not isinstance(req, dict) or "cmd" not in req:
                    raise ValueError("a request is a JSON object with 'cmd'")
            except ValueError as exc:
                self.send({"id": None, "type": "error", "error_type": "ProtocolError", "message": f"bad request: {exc}"})
                continue
            cmd = req["cmd"]
            if cmd == "cancel":
                target = (req.get("args") or {}).get("target")
                with self._cancel_lock:
                    self._cancelled.add(target)
                self.send({"id": req.get("id"), "type": "result", "data": {"cancelled": target}})
            elif cmd == "shutdown":
                self._queue.put(req)
                break
            else:
                self._queue.put(req)
        self._queue.put(None)  # stdin closed: stop after the queue drains

    def serve(self, stream) -> int:
        threading.Thread(target=self.read_requests, args=(stream,), daemon=True).start()
        while True:
            req = self._queue.get()
            if req is None:
                return 0
            rid = req.get("id")
            if req["cmd"] == "shutdown":
                self.send({"id": rid, "type": "result", "data": {"bye": True}})
                return 0
            self.handle(rid, req["cmd"], req.get("args") or {})

    def handle(self, rid: Any, cmd: str, args: dict) -> None:
        handler: Callable | None = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            self.send({"id": rid, "type": "error", "error_type": "ProtocolError", "message": f"unknown command {cmd!r}"})
            return
        self._current = rid
        try:
            self.check_cancel(rid)
            data = handler(rid, **args)
            self.send({"id": rid, "type": "result", "data": data})
        except Cancelled:
            self.send({"id": rid, "type": "error", "error_type": "Cancelled", "message": "cancelled"})
        except TypeError as exc:  # wrong arguments for the command
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self.send({"id": rid, "type": "error", "error_type": "ProtocolError", "message": f"{cmd}: {exc}"})
        except ModuleNotFoundError as exc:
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self.send({"id": rid, "type": "error", "error_type": "ModuleNotFoundError", "message": (
                f"the worker's Python ({sys.executable}) lacks the module {exc.name!r}: install the dependencies "
                "(Blender: Preferences > Add-ons > DECA Heads > Install Dependencies) or choose a Python that has them")})
        except (ValueError, OSError, ImportError) as exc:
            # The project's errors (ResultError, AssetError, FlameModelError, ...) are ValueErrors whose messages
            # already name the file and what to do: pass them on exactly, like the command line prints them.
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self.send({"id": rid, "type": "error", "error_type": type(exc).__name__, "message": str(exc)})
        except Exception as exc:  # a bug: say so, with the type; the traceback goes to the log
            print(traceback.format_exc(), file=sys.stderr, flush=True)
            self.send({"id": rid, "type": "error", "error_type": type(exc).__name__,
                       "message": f"internal error in the worker ({type(exc).__name__}: {exc}); see the worker log"})
        finally:
            self._current = None
            with self._cancel_lock:
                self._cancelled.discard(rid)

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
        }

    def _manager(self, home: str | None):
        from core.assets.manager import AssetManager

        return AssetManager(home) if home else AssetManager()

    def cmd_status(self, rid: Any, home: str | None = None) -> dict:
        from core.assets.manager import status_as_json

        return status_as_json(self._manager(home))

    def cmd_install_assets(self, rid: Any, home: str | None = None, flame: str | None = None, deca: str | None = None,
                           data: str | None = None, texture: str | None = None, force: bool = False) -> dict:
        from core.assets.manager import status_as_json

        given = [x for x in (flame, deca, data, texture) if x]
        if not given:
            raise ValueError("nothing to install: give the FLAME file, the DECA checkpoint and/or the data folder")
        m = self._manager(home)
        steps = {"n": 0}

        def report(message: str) -> None:
            steps["n"] += 1
            self.progress(rid, None, message)

        notes = m.install(flame=flame, deca=deca, data=data, texture=texture, force=force, progress=report)
        self._reconstructors.clear()  # new assets: rebuild on the next reconstruct
        return {"notes": notes, "status": status_as_json(m)}

    def _reconstructor(self, home: str | None, device: str, landmarks: str, mode: str = "deca"):
        """DECA's `Reconstructor` for mode 'deca', the `Fitter` for 'fit' and 'deca+fit' (kept warm)."""
        key = (home, device, landmarks, mode)
        if key not in self._reconstructors:
            if importlib.util.find_spec(PIPELINE_MODULE) is None:
                raise ImportError(f"this deca-blender has no reconstruction pipeline ({PIPELINE_MODULE} is missing)")
            if mode == "deca":
                from core.pipeline.reconstruct import Reconstructor

                self._reconstructors[key] = Reconstructor(assets=self._manager(home), device=device, landmarks=landmarks)
            else:
                from core.fitting.fitter import Fitter

                self._reconstructors[key] = Fitter(self._manager(home), device=device, landmarks=landmarks, mode=mode)
        return self._reconstructors[key]

    def cmd_reconstruct(self, rid: Any, photo: str, out_dir: str, all_faces: bool = False, home: str | None = None,
                        device: str = "auto", landmarks: str = "auto", mode: str = "deca") -> dict:
        if not Path(photo).is_file():
            raise FileNotFoundError(f"photo not found: {photo}")
        if mode not in ("deca", "fit", "deca+fit"):
            raise ValueError(f"unknown reconstruction mode {mode!r}: use deca, fit or deca+fit")
        self.progress(rid, 0.0, "loading the models")
        rec = self._reconstructor(home, device, landmarks, mode)
        if hasattr(rec, "reset_timings"):
            rec.reset_timings()
        self.progress(rid, 0.05, "reconstructing" if mode == "deca" else "fitting")
        t = time.perf_counter()
        if mode == "deca":
            folders = rec.reconstruct_photo(photo, out_dir, all_faces=all_faces,
                                            progress=self._progress_callback(rid, 0.05, 1.0))
        else:
            folders = rec.fit_photo(photo, out_dir, all_faces=all_faces)
        return {"results": [str(f) for f in folders], "seconds": time.perf_counter() - t,
                "timings": dict(getattr(rec, "timings", {}) or {})}

    def cmd_decode_displacement(self, rid: Any, result: str, exp: list, jaw: list, out: str | None = None,
                                home: str | None = None, device: str = "auto", landmarks: str = "auto") -> dict:
        import numpy as np

        from core.atomic import atomic_write_bytes
        from core.pipeline.result import ReconstructionResult

        exp_a = np.asarray(exp, np.float32).ravel()
        jaw_a = np.asarray(jaw, np.float32).ravel()
        if exp_a.size != 50 or jaw_a.size != 3:
            raise ValueError(f"decode_displacement needs 50 expression values and 3 jaw values, got {exp_a.size} and {jaw_a.size}")
        res = ReconstructionResult.load(result)
        rec = self._reconstructor(home, device, landmarks)
        disp = np.asarray(rec.decode_displacement(res, exp_a, jaw_a), np.float32)
        if disp.shape != (256, 256):
            raise ValueError(f"the decoder returned shape {disp.shape}, expected (256, 256)")
        path = Path(out) if out else Path(result) / "exact_displacement.npy"
        atomic_write_bytes(path, lambda f: np.save(f, disp))
        return {"path": str(path)}

    def cmd_wait(self, rid: Any, seconds: float = 1.0, steps: int = 10) -> dict:
        steps = max(1, int(steps))
        for i in range(steps):
            self.progress(rid, i / steps, f"waiting {i + 1}/{steps}")
            time.sleep(float(seconds) / steps)
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
    worker.send({"id": None, "type": "ready", "data": {"protocol": PROTOCOL_VERSION, "pid": os.getpid()}})
    try:
        return worker.serve(sys.stdin)
    finally:
        proto.flush()


if __name__ == "__main__":
    sys.exit(main())
