"""A checkpoint's inference-ready networks (batch norms folded, channels_last), cached on disk.

A cold start spends most of its model loading on turning DECA's checkpoint into what the pipeline runs: torch's
weights-only unpickler over 688 tensors, building the modules, the layout check, and folding ~200 MB of
convolution weights into fresh memory (`core.networks.runtime.inference_networks`). The folded networks are
the same for every run with the same checkpoint, so the first run writes them (a plain ``torch.save`` of
the state dict, 234 tensors with their channels_last strides) and later runs map that file instead: the
weights are the file's pages (copy-on-write, nothing is read until used), no arithmetic, no copy.
Measured on 2 busy cores (load 3.6, 5 interleaved fresh processes): 0.15-0.26 s against 0.53-1.18 s for
the checkpoint load and fold.

Where: ``$DECA_BLENDER_CACHE/networks`` if set, else the platform's user cache folder
(``~/.cache/deca-blender/networks`` on Linux), ``folded_<key>.pt``, ~213 MB per checkpoint; the `CACHE_KEEP`
most recently used files are kept. The key is the checkpoint's resolved path, size and modification time,
`CACHE_VERSION`, torch's version and the sources of this package: a replaced or edited checkpoint, another
torch or changed network code is a new key. The first run with a checkpoint pays for writing the file
(~1.5 s here, once). A cache file that cannot be read or does not fit the folded networks exactly is
reported with a `NetworkCacheWarning` and rebuilt; a cache that cannot be written is reported and the run
goes on without it. Files are written atomically (`core.atomic`) and read with ``weights_only=True``, like
the checkpoint.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path

import torch

from core.cache import CACHE_ENV, cache_root
from core.atomic import atomic_write_bytes

from .checkpoint import DecaNetworks, _torch_load, load_deca_checkpoint
from .runtime import folded_structure, inference_networks

__all__ = ["CACHE_ENV", "CACHE_VERSION", "NetworkCacheWarning", "cache_dir", "cache_path",
           "load_inference_networks"]

#: bump when the folded form (`core.networks.runtime`) or this file's layout changes: old files are not found
CACHE_VERSION = 1
#: cache files kept (most recently used first): a user switching between two checkpoints keeps both
CACHE_KEEP = 2


class NetworkCacheWarning(UserWarning):
    """The cached folded networks could not be used (they are rebuilt) or written (the run goes on)."""


def cache_dir() -> Path:
    """``$DECA_BLENDER_CACHE/networks`` or the user cache folder's ``networks``."""
    return cache_root() / "networks"


def _definitions_digest() -> bytes:
    """sha256 of this package's sources (the module definitions and the fold): a change to how the networks
    are built or folded is a new key even if `CACHE_VERSION` was not bumped (reading ~50 kB: < 1 ms)."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.digest()


def cache_path(checkpoint: str | os.PathLike) -> Path:
    """The cache file of ``checkpoint`` as it is now (its path, size and modification time)."""
    p = Path(checkpoint).resolve()
    st = p.stat()
    h = hashlib.sha256(f"deca-blender folded networks v{CACHE_VERSION};torch {torch.__version__};".encode())
    h.update(_definitions_digest())
    h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return cache_dir() / f"folded_{h.hexdigest()[:40]}.pt"


def _load_cached(path: Path) -> DecaNetworks:
    """The folded networks from a cache file; raises when it does not fit them exactly."""
    sd = _torch_load(path, map_location="cpu", mmap=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError("not a state dict of tensors")
    bad = sorted(k for k, v in sd.items() if v.dtype != torch.float32)
    if bad:
        raise ValueError(f"tensors that are not float32: {bad[:3]}")
    with torch.device("meta"):
        nets = DecaNetworks()
    folded_structure(nets)
    # strict: every tensor present, none extra; load_state_dict also refuses any shape mismatch
    nets.load_state_dict(sd, strict=True, assign=True)
    return nets.eval()


def load_inference_networks(checkpoint: str | os.PathLike, device: torch.device | str = "cpu",
                            cache: bool = True) -> DecaNetworks:
    """What `inference_networks(load_deca_checkpoint(checkpoint), device, inplace=True)` returns, bit for
    bit, from the cache when there is one (CPU only; see the module docstring). Errors about the checkpoint
    itself are `load_deca_checkpoint`'s (`CheckpointError`); a cache problem is only a warning."""
    device = torch.device(device)
    if not cache or device.type != "cpu":
        return inference_networks(load_deca_checkpoint(checkpoint, device=device), device, inplace=True)
    try:
        path = cache_path(checkpoint)
    except OSError:  # a missing checkpoint: load_deca_checkpoint says so
        return inference_networks(load_deca_checkpoint(checkpoint, device=device), device, inplace=True)
    if path.is_file():
        try:
            nets = _load_cached(path)
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used: kept by _prune
            return nets
        except Exception as exc:  # a damaged or foreign file: rebuilt below
            warnings.warn(NetworkCacheWarning(
                f"{path}: cached networks unusable ({type(exc).__name__}: {exc}); rebuilding them from "
                f"{checkpoint}"), stacklevel=2)
    nets = inference_networks(load_deca_checkpoint(checkpoint, device=device), device, inplace=True)
    try:
        state = nets.state_dict()
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    except OSError as exc:
        warnings.warn(NetworkCacheWarning(f"{path}: cannot cache the folded networks ({exc}); every start "
                                          f"folds the checkpoint again"), stacklevel=2)
    else:
        _prune(path.parent)
    return nets


def _prune(folder: Path, keep: int = CACHE_KEEP) -> None:
    """Delete all but the ``keep`` most recently used cache files (another process may be deleting too)."""
    files = []
    for f in folder.glob("folded_*.pt"):
        with contextlib.suppress(OSError):
            files.append((f.stat().st_mtime_ns, f))
    for _, f in sorted(files, reverse=True)[keep:]:
        with contextlib.suppress(OSError):
            f.unlink()
