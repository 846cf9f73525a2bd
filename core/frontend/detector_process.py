"""A landmark detector in a child process that starts before torch is imported and detects ahead.

Why: a cold `deca-blender reconstruct` spends 2.4-3 s importing torch on one core while the other core
idles, and then waits for the detector (MediaPipe: import, graph set-up and first call, 0.3-0.5 s) and
the first detection. Forked before the parent imports torch (cheap and safe then: one thread, no torch
or OpenMP state), the child loads the detector and detects the photos it is given, in order, while the
parent imports torch and loads the networks. The parent's `detect(image)` takes the child's answer for an
image with the same content (shape, dtype and a 128-bit BLAKE2 digest of the pixels), asks the child for
any other image, and falls back to an in-process detector when the child cannot help (it failed to start,
the detector is unavailable there, it died, or it raised on this image): then the in-process detector
gives exactly the error or answer it would have given without the child. The detections are the same
detector's on the same pixels (`read_image` on the same file): `tests/test_detector_process.py` checks
them equal to the in-process detector's, bit for bit.

Only the pipe's buffer bounds how far the child runs ahead (it blocks on a full pipe), so a long batch
does not pile up detections. The child ignores Ctrl-C (the parent handles it) and ends when the parent
closes the pipe or exits (a daemon process; `atexit` closes it too).

Numpy-only: importing this module must not import torch (it runs before torch is imported).
"""
from __future__ import annotations

import atexit
import hashlib
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from .detectors import get_detector
from .images import read_image
from .landmarks import FaceDetection, LandmarkDetector
from .mediapipe_mesh import MediaPipeDetector

__all__ = ["DetectorProcess", "start_detector_process", "image_key", "DISABLE_ENV"]

DISABLE_ENV = "DECA_BLENDER_DETECTOR_PROCESS"  # "0": detect in the main process (as before this module)


def image_key(image: np.ndarray) -> tuple:
    """Identity of an image's content: ``(shape, dtype, BLAKE2b-128 of the bytes)``. ~1 GB/s: 12 MP in ~35 ms."""
    a = np.ascontiguousarray(image)
    return tuple(a.shape), a.dtype.str, hashlib.blake2b(a.data, digest_size=16).digest()


def _child(conn, parent_end, method: str, kwargs: dict, paths: list[str]) -> None:  # pragma: no cover - child
    # The fork copied the parent's end of the pipe too: closed here, or the child would never see EOF when
    # the parent closes its end or dies (it would wait for ever, and `close` would have to kill it).
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; the child ends with its pipe
    try:
        detector = get_detector(method, **kwargs)
        detector.warm_up()
    except BaseException as exc:  # the parent's in-process detector raises the same error itself
        try:
            conn.send(("unavailable", f"{type(exc).__name__}: {exc}"))
        except OSError:  # the parent is gone
            pass
        return
    try:
        conn.send(("ready", detector.name))
        for path in paths:
            try:
                image = read_image(path, keep_uint8=True)  # exactly as Reconstructor._prepare reads it
                found = detector.detect(image)
            except Exception:  # unreadable or failing: the parent reads and reports this photo itself
                continue
            conn.send(("found", image_key(image), found))
        conn.send(("ahead done",))
        while True:
            key, image = conn.recv()
            try:
                conn.send(("found", key, detector.detect(image)))
            except Exception as exc:
                conn.send(("failed", key, f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):  # the parent closed the pipe or exited
        return


class DetectorProcess(LandmarkDetector):
    """``get_detector(method, **kwargs)`` in a child process, detecting ``paths`` ahead (see the module).

    Use `start_detector_process`, which decides whether a child is worth starting. `detect` is
    thread-safe (one request at a time); `close` ends the child."""

    def __init__(self, method: str = "auto", paths: Sequence[str | os.PathLike] = (), **kwargs) -> None:
        self.method = method
        self._kwargs = dict(kwargs)
        self._lock = threading.Lock()
        self._found: dict[tuple, list[FaceDetection]] = {}
        self._ahead_done = False
        self._ready_name: str | None = None
        self._local: LandmarkDetector | None = None  # the in-process fallback, created only when needed
        self._broken = False
        self.answered_by_child = 0  # detections the child gave (tests and benchmarks read these)
        ctx = multiprocessing.get_context("fork")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=_child, args=(child_conn, self._conn, method, self._kwargs, [str(p) for p in paths]),
                                    name="deca-detector", daemon=True)
        self._process.start()
        child_conn.close()  # the child holds its end: a dead child now reads as EOF here
        atexit.register(self.close)

    # ------------------------------------------------------------------ the child's answers

    def _receive(self) -> tuple:
        """The child's next message; on any failure the child is given up (``("broken",)``)."""
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._broken = True
            return ("broken",)

    def _wait_ready(self) -> bool:
        """Until the child reported; False when it cannot help (then the fallback is used)."""
        while self._ready_name is None and not self._broken:
            msg = self._receive()
            if msg[0] == "ready":
                self._ready_name = msg[1]
            elif msg[0] == "unavailable":
                self._broken = True
        return not self._broken

    def _child_detect(self, image: np.ndarray) -> list[FaceDetection] | None:
        if not self._wait_ready():
            return None
        key = image_key(image)
        while key not in self._found and not self._ahead_done and not self._broken:
            msg = self._receive()  # the photos read ahead, in order, until this one or the end of the list
            if msg[0] == "found":
                self._found[msg[1]] = msg[2]
            elif msg[0] == "ahead done":
                self._ahead_done = True
        if key in self._found:
            return self._found.pop(key)
        if self._broken:
            return None
        try:
            self._conn.send((key, np.ascontiguousarray(image)))
        except (OSError, ValueError):
            self._broken = True
            return None
        msg = self._receive()
        if msg[0] == "found" and msg[1] == key:
            return msg[2]
        if msg[0] != "failed":  # out of step: stop using the child rather than guess
            self._broken = True
        return None

    # ------------------------------------------------------------------ LandmarkDetector

    def _fallback(self) -> LandmarkDetector:
        if self._local is None:
            self._local = get_detector(self.method, **self._kwargs)
        return self._local

    @property
    def name(self) -> str:  # the detector's own name ("mediapipe", "dlib", ...)
        with self._lock:
            if self._wait_ready():
                return self._ready_name
            return self._fallback().name

    def warm_up(self) -> "DetectorProcess":
        """Wait until the child's detector is loaded; if it cannot be, load the in-process one (which raises
        `DetectorUnavailableError` naming what to install, as without the child)."""
        with self._lock:
            if not self._wait_ready():
                self._fallback().warm_up()
        return self

    def detect(self, image) -> list[FaceDetection]:
        with self._lock:
            found = None if self._broken else self._child_detect(np.asarray(image))
            if found is not None:
                self.answered_by_child += 1
                return found
            return self._fallback().detect(image)

    def close(self) -> None:
        """End the child (idempotent)."""
        try:
            self._conn.close()
        except OSError:
            pass
        if self._process.is_alive():
            self._process.join(timeout=1.0)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=1.0)
        self._broken = True


def start_detector_process(method: str = "auto", paths: Sequence[str | Path] = (), **kwargs) -> DetectorProcess | None:
    """A `DetectorProcess` when one helps, else None (the caller detects in process as before).

    It helps only before torch is imported (that import is what the child overlaps) and where a fork is
    cheap and safe: Linux, one thread in this process. FAN is itself a torch model: never in a child.
    ``DECA_BLENDER_DETECTOR_PROCESS=0`` turns it off."""
    method = (method or "auto").lower()
    if os.environ.get(DISABLE_ENV, "1") == "0" or method == "fan":
        return None
    if method == "auto" and not MediaPipeDetector.is_available():  # auto may mean FAN: a torch model
        return None
    if "torch" in sys.modules or not sys.platform.startswith("linux") or threading.active_count() > 1:
        return None
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    try:
        return DetectorProcess(method, paths, **kwargs)
    except OSError:  # no processes left, no pipes: detect in process
        return None
