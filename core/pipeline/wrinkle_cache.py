"""The shared wrinkle basis of a checkpoint, computed once and cached on disk.

`core.pipeline.wrinkles.fit_shared_basis` needs ~430 decodes of ``D_detail`` (several seconds on a CPU); a
person then needs only ~20 (`core.pipeline.wrinkles.fit_on_shared`). The basis depends on the detail decoder,
on the detail codes it pooled (from ``E_detail`` on synthetic renders of the face model,
`synthetic_detail_codes`), on the face model's mask and fixed displacement, and on the settings; all of it
goes into the cache key, so another checkpoint or another face model never reuses a basis.

Where: ``$DECA_BLENDER_CACHE`` if set, else the platform's user cache folder (``~/.cache/deca-blender`` on
Linux), in ``wrinkles/shared_<key>.npz``. Files are plain ``.npz`` (read with ``allow_pickle=False``), written
atomically (`core.atomic`). A file that cannot be read, or whose key, shapes or values are wrong, is reported
with a `WrinkleCacheWarning` and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from core.cache import CACHE_ENV, cache_root
from core.atomic import atomic_write_bytes
from core.pipeline.wrinkles import N_INPUT, SharedWrinkleBasis

__all__ = ["CACHE_ENV", "CACHE_VERSION", "WrinkleCacheWarning", "cache_dir", "cache_path", "cache_key",
           "tensor_fingerprint", "unwritable_reason", "load_basis", "save_basis", "synthetic_detail_codes"]

#: bump when the shared fit or the file layout changes: old files are then simply not found
CACHE_VERSION = 1
#: E_detail is ~100 MB; hashing all of it costs ~0.2 s per process, so its tensors are sampled every
#: `ENCODER_STRIDE`-th element (a changed checkpoint changes nearly every element). D_detail and the face
#: model are hashed in full.
ENCODER_STRIDE = 7


class WrinkleCacheWarning(UserWarning):
    """A cached shared wrinkle basis could not be used (it is rebuilt) or written (the fit runs per person)."""


def cache_dir() -> Path:
    """The folder of cached wrinkle bases: ``$DECA_BLENDER_CACHE/wrinkles`` or the user cache folder's."""
    return cache_root() / "wrinkles"


def cache_path(key: str) -> Path:
    return cache_dir() / f"shared_{key[:40]}.npz"


def tensor_fingerprint(state: dict, stride: int = 1) -> bytes:
    """sha256 over a module's ``state_dict`` (names, shapes, dtypes and values; every ``stride``-th value)."""
    import torch

    h = hashlib.sha256()
    for name, t in state.items():
        t = t.detach().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.reshape(-1)
        if stride > 1 and flat.numel() > 64 * stride:
            flat = flat[::stride]
        h.update(flat.contiguous().view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return h.digest()


def cache_key(parts: Iterable[bytes | str]) -> str:
    """The hex sha256 of the cache version and ``parts`` (fingerprints, settings)."""
    h = hashlib.sha256(f"deca-blender wrinkle basis v{CACHE_VERSION};".encode())
    for p in parts:
        b = p.encode() if isinstance(p, str) else bytes(p)
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def unwritable_reason(folder: Path) -> str | None:
    """None when files can be written in ``folder`` (created if missing), else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create the cache folder {folder}: {e.strerror or e}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the cache folder {folder} is not writable"
    return None


_KEYS = ("key", "maps", "matrix", "rank", "ridge", "n_codes", "n_samples", "train_explained_variance", "mask")


def load_basis(path: Path, key: str, mask: np.ndarray, n_components: int) -> SharedWrinkleBasis | None:
    """The basis cached at ``path`` for ``key``, or None (missing; unreadable or wrong: with a warning)."""
    if not path.is_file():
        return None
    mask = np.asarray(mask, bool)
    T = int(mask.sum())
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            if str(z["key"]) != key:
                raise ValueError("its key does not match its name")
            if z["mask"].shape != mask.shape or not np.array_equal(z["mask"], mask):
                raise ValueError("it was fitted on another mask")
            maps, matrix = np.asarray(z["maps"], np.float32), np.asarray(z["matrix"], np.float64)
            if maps.shape != (n_components, T) or matrix.shape != (n_components, N_INPUT):
                raise ValueError(f"maps {maps.shape} / matrix {matrix.shape}, expected ({n_components}, {T}) / "
                                 f"({n_components}, {N_INPUT})")
            if not (np.isfinite(maps).all() and np.isfinite(matrix).all()):
                raise ValueError("non-finite values")
            return SharedWrinkleBasis(maps=maps, matrix=matrix, rank=int(z["rank"]), ridge=float(z["ridge"]),
                                      n_codes=int(z["n_codes"]), n_samples=int(z["n_samples"]),
                                      train_explained_variance=float(z["train_explained_variance"]))
    except Exception as e:  # noqa: BLE001 - any damage to a cache file means: rebuild it
        warnings.warn(f"ignoring the cached wrinkle basis {path} ({type(e).__name__}: {e}); rebuilding it",
                      WrinkleCacheWarning, stacklevel=2)
        return None


def save_basis(path: Path, key: str, basis: SharedWrinkleBasis, mask: np.ndarray, codes: np.ndarray) -> None:
    """Write the basis atomically (raises OSError when it cannot)."""
    arrays = {"key": np.str_(key), "maps": np.asarray(basis.maps, np.float32),
              "matrix": np.asarray(basis.matrix, np.float64), "rank": np.int64(basis.rank),
              "ridge": np.float64(basis.ridge), "n_codes": np.int64(basis.n_codes),
              "n_samples": np.int64(basis.n_samples),
              "train_explained_variance": np.float64(basis.train_explained_variance),
              "mask": np.asarray(mask, bool), "codes": np.asarray(codes, np.float32)}
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


#: the synthetic faces whose detail codes the shared fit pools (core.evaluation.synthetic; near-frontal,
#: one 224x224 render each). Measured (random weights, both kinds): their codes lie among the codes of the
#: real photos in ../shared/photos, while N(0, s^2) codes of any single scale do not.
SYNTHETIC_SEED = 5
SYNTHETIC_MAX_YAW_DEG = 30.0


def synthetic_detail_codes(face_model, infer, n: int, convention: str, seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """(n, 128) detail codes of ``n`` synthetic renders of ``face_model``.

    ``infer``: images (B, 3, 224, 224) float32 -> detail codes (B, 128) (the networks' ``E_detail``);
    each render is cropped by DECA's rule from its known 68 landmarks in ``convention``.
    """
    import torch

    from core.evaluation.synthetic import SyntheticConfig, SyntheticGenerator
    from core.frontend import crop_from_landmarks, warp_images

    gen = SyntheticGenerator(face_model, SyntheticConfig(n=n, sizes=((224, 224),), seed=seed,
                                                         max_yaw_deg=SYNTHETIC_MAX_YAW_DEG))
    codes = []
    for i in range(n):  # one image at a time: a batch would add its ResNet activations to the peak memory
        face = gen.sample(i)
        crop = crop_from_landmarks(face.gt["landmarks2d"], size=224, convention=convention)
        with torch.inference_mode():
            codes.append(np.asarray(infer(warp_images(face.image, [crop])), np.float32))
    return np.concatenate(codes)
