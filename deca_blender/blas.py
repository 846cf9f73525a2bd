"""One BLAS thread in Blender's process while Import Photo builds a head beside the working worker.

numpy's OpenBLAS starts as many threads as there are cores, and they busy-wait between calls. While the
worker's torch threads run on the same cores (Import Photo builds the head while the worker still works,
operators/import_ops.py), those spinning threads take cores from the worker and from Blender's own main
thread. The head's numpy work is small matrices (the ARKit-52 solve, shape keys): one thread does it as
fast (measured on the 2-core development machine, ARKit-52 solve: 0.05-0.07 s either way when quiet; with
the worker running, two BLAS threads took 0.2-0.3 s of CPU for 0.05 s of work).

Linux only (the loaded library is found in /proc/self/maps); elsewhere, or when no OpenBLAS is loaded,
`single_threaded` changes nothing. No numpy import here: the library is found among those already loaded.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys

_SUFFIXES = ("", "64_", "_64")  # numpy's wheels export openblas_set_num_threads64_ (ILP64 builds)
_PREFIXES = ("openblas", "scipy_openblas")
_found: list | None = None  # [(get, set)] per loaded OpenBLAS, found once


def _loaded_openblas() -> list:
    global _found
    if _found is not None:
        return _found
    _found = []
    if not sys.platform.startswith("linux"):
        return _found
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return _found
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    _found.append((get, put))
                    break
            else:
                continue
            break
    return _found


@contextlib.contextmanager
def single_threaded():
    """Within the block, every loaded OpenBLAS runs one thread; the earlier counts come back after it."""
    libs = _loaded_openblas()
    before = []
    for get, put in libs:
        try:
            before.append((put, get()))
            put(1)
        except Exception:  # a foreign library that only looks like OpenBLAS: leave it
            pass
    try:
        yield
    finally:
        for put, n in before:
            try:
                put(n)
            except Exception:
                pass
