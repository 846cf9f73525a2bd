"""Unpickling the official release files without executing arbitrary code.

FLAME's model files and DECA's landmark embedding are pickles written by Python 2 (or by old numpy,
scipy, chumpy and torch). `pickle.load` would import and call whatever a file names, so a tampered
download could run code. This module only resolves an explicit allow-list of names, under the
spellings both old and current numpy/scipy/Python write, and maps library classes that need not (or
cannot) be imported, chumpy above all, to inert shims that just hold their state.
"""
from __future__ import annotations

import copyreg
import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.errors import DecaError


class UnsafePickleError(DecaError, pickle.UnpicklingError):
    """The file names something outside the allow-list; nothing it names was imported or run."""


# ---------------------------------------------------------------------------------------------
# Shims


class ChumpyShim:
    """Holds the pickled state of a chumpy object; `value()` evaluates it to an ndarray.

    chumpy pickles an object as its class plus its `__dict__` (minus caches). Plain `Ch` keeps the
    array in `x`; the reordering classes keep an operand `a` and their arguments.
    """

    chumpy_class = "chumpy.ch.Ch"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # NEWOBJ may pass nothing
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = state[0] or {}
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.chumpy_class} has unexpected pickled state {type(state).__name__}")
        self.state = state

    def value(self) -> np.ndarray:
        s = self.state
        name = self.chumpy_class.rsplit(".", 1)[1]
        if name == "Ch":
            return np.asarray(to_array(s["x"]))
        a = to_array(s["a"])
        if name == "Select":
            return np.asarray(a).ravel()[np.asarray(s["idxs"])].reshape(s["preferred_shape"])
        if name == "transpose":
            return np.transpose(a, s.get("axes"))
        if name == "reshape":
            return np.reshape(a, s["newshape"])
        raise UnsafePickleError(f"unsupported chumpy class {self.chumpy_class}")


def _chumpy_class(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[1], (ChumpyShim,), {"chumpy_class": qualified})


CHUMPY_CLASSES = {
    name: _chumpy_class(name)
    for name in (
        "chumpy.ch.Ch",
        "chumpy.reordering.Select",
        "chumpy.reordering.transpose",
        "chumpy.reordering.reshape",
    )
}


class SparseShim:
    """State of a pickled `scipy.sparse` csc/csr matrix; converted to dense without scipy's class."""

    sparse_format = "csc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickleError(f"sparse matrix has unexpected pickled state {type(state).__name__}")
        self.state = state

    def toarray(self) -> np.ndarray:
        import scipy.sparse as sp

        s = self.state
        shape = tuple(s.get("_shape") or s.get("shape"))
        cls = sp.csc_matrix if self.sparse_format == "csc" else sp.csr_matrix
        return cls((np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])), shape=shape).toarray()


CscShim = type("csc_matrix", (SparseShim,), {"sparse_format": "csc"})
CsrShim = type("csr_matrix", (SparseShim,), {"sparse_format": "csr"})


def to_array(obj: Any) -> np.ndarray:
    """An ndarray from whatever the allow-listed objects unpickle to."""
    if isinstance(obj, ChumpyShim):
        return obj.value()
    if isinstance(obj, SparseShim):
        return obj.toarray()
    if hasattr(obj, "toarray"):
        return np.asarray(obj.toarray())
    if hasattr(obj, "detach"):  # torch tensor
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def _codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes at protocol 2 as _codecs.encode(text, 'latin1'); nothing else is allowed.
    if not isinstance(obj, str) or encoding.replace("-", "").lower() not in ("latin1", "utf8"):
        raise UnsafePickleError("_codecs.encode is only allowed for text to latin1/utf-8 bytes")
    return obj.encode(encoding, errors)


def _bytes(*args: Any) -> bytes:
    # Python 3 writes an empty bytes object at protocol 2 as bytes(); refuse anything else (bytes(n)
    # would allocate n bytes on a tampered file's say-so).
    if args:
        raise UnsafePickleError("bytes() with arguments is not allowed")
    return b""


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _numpy_scalar() -> Callable:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    # copy_reg._reconstructor, restricted to the shims and plain object/ndarray bases.
    if base is object:
        return object.__new__(cls)
    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


def _base_allow_list() -> dict[tuple[str, str], Any]:
    reconstruct = _numpy_reconstruct()
    scalar = _numpy_scalar()
    allowed: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = reconstruct
        allowed[(mod, "scalar")] = scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for mod in ("scipy.sparse.csc", "scipy.sparse._csc"):
        allowed[(mod, "csc_matrix")] = CscShim
    for mod in ("scipy.sparse.csr", "scipy.sparse._csr"):
        allowed[(mod, "csr_matrix")] = CsrShim
    for mod in ("copy_reg", "copyreg"):
        allowed[(mod, "_reconstructor")] = _reconstructor
    for mod in ("__builtin__", "builtins"):
        # chumpy keeps a set of dirty variable names in every object's state.
        allowed[(mod, "object")] = object
        allowed[(mod, "set")] = set
        allowed[(mod, "frozenset")] = frozenset
        allowed[(mod, "bytes")] = _bytes
    allowed[("_codecs", "encode")] = _codecs_encode
    for qualified, cls in CHUMPY_CLASSES.items():
        mod, name = qualified.rsplit(".", 1)
        allowed[(mod, name)] = cls
    return allowed


def _torch_allow_list() -> dict[tuple[str, str], Any]:
    """Names needed for pickles that embed torch tensors (DECA's landmark embedding)."""
    import collections

    import torch

    def load_from_bytes(data: bytes) -> Any:
        # torch's own helper would call torch.load without weights_only on the nested bytes.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    from torch._utils import _rebuild_tensor_v2

    return {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): load_from_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only allow-listed (module, name) pairs."""

    def __init__(self, file: io.BufferedIOBase, source: str, allow_torch: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = _base_allow_list()
        if allow_torch:
            self.allowed.update(_torch_allow_list())

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refuses to load '{module}.{name}'. The file names code that the official "
                "FLAME/DECA files never contain, so it was not imported or run. Is this the right file?"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: uses persistent ids, which the official files never do")


def load_restricted(data: bytes, source: str | Path, allow_torch: bool = False) -> Any:
    """Unpickle `data` with the allow-list. `source` names the file in error messages."""
    return RestrictedUnpickler(io.BytesIO(data), str(source), allow_torch=allow_torch).load()
