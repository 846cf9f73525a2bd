"""Reading photos and writing PNGs.

`read_image` turns any photo Pillow can open into ``(H, W, 3)`` float32 RGB in ``[0, 1]``, upright
(EXIF orientation applied). Choices made here:

- Transparency (RGBA, LA, PA, P with a transparency entry, premultiplied RGBa/La) is **composited over
  white**: cut-out portraits are usually shown on white, and a black background would darken hair edges.
- Grayscale (``1``, ``L``, ``LA``, ``I;16*``, ``I``, ``F``) is replicated to three channels.
  ``I;16*`` is scaled by 1/65535. ``I`` (32-bit int) is how Pillow represents 16-bit grayscale from some
  formats, so it is also scaled by 1/65535 (values outside ``[0, 65535]`` are clipped with a warning).
  ``F`` (32-bit float) is taken as already in ``[0, 1]`` and clipped.
- 16-bit RGB(A) PNG/TIFF: Pillow opens these as 8-bit RGB(A) (the high byte of each sample), so colour
  photos are read at 8-bit precision. Only 16-bit *grayscale* keeps full precision (see `read_png16`).
- Multi-frame files (GIF, multi-page TIFF) yield their first frame.
- A corrupt EXIF block does not make the photo unreadable: the photo is read without orientation and a
  warning is issued.

Every failure is an `ImageReadError` (a ``ValueError``) whose message names the file.

`write_png` writes atomically (temporary file in the same folder, fsync, ``os.replace``) and refuses
rather than silently altering data: out-of-range or non-finite values, unsupported shapes and dtypes raise
``ValueError``.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DecaError
from core.atomic import atomic_write_bytes

__all__ = ["ImageReadError", "read_image", "read_png16", "write_png", "collect_photos", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")

# What Pillow (and the codecs under it) raise for damaged files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
                  MemoryError, Image.DecompressionBombError)


class ImageReadError(DecaError, ValueError):
    """A photo could not be read. ``path`` is the file, the message says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def _open_loaded(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode the first frame, mapping every failure onto ImageReadError."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(path, "file not found")
    if p.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    try:
        if p.stat().st_size == 0:
            raise ImageReadError(path, "file is empty (0 bytes)")
    except OSError as e:  # permission problems and the like
        raise ImageReadError(path, f"cannot access file ({e})") from e
    try:
        im = Image.open(p)
    except UnidentifiedImageError as e:
        raise ImageReadError(path, "not an image file (format not recognised)") from e
    except PermissionError as e:
        raise ImageReadError(path, f"permission denied ({e})") from e
    except _DECODE_ERRORS as e:
        raise ImageReadError(path, f"corrupt or unsupported image ({type(e).__name__}: {e})") from e
    try:
        im.seek(0)
        im.load()
    except _DECODE_ERRORS as e:
        im.close()
        raise ImageReadError(path, f"corrupt or truncated image data ({type(e).__name__}: {e})") from e
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageReadError(path, f"image has zero size ({w}x{h})")
    return im


def _exif_upright(im: Image.Image, path) -> Image.Image:
    # in place: without an orientation to undo, the copy exif_transpose would return is a second decode-sized
    # buffer (36 MB and ~0.01-0.05 s for a 4000x3000 photo); ``im`` is ours (read_image closes it)
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except _DECODE_ERRORS as e:
        warnings.warn(f"{path}: unreadable EXIF orientation ignored ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=3)
    return im


def _composite_over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return rgb * a + (1.0 - a)


def _to_float_rgb(im: Image.Image, path) -> np.ndarray:
    mode = im.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode == "RGBa":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "La":
        im = im.convert("LA")
        mode = "LA"
    if mode == "1":
        im = im.convert("L")
        mode = "L"

    if mode == "RGB":
        out = np.asarray(im, dtype=np.float32) / 255.0
    elif mode == "RGBA":
        a = np.asarray(im, dtype=np.float32) / 255.0
        out = _composite_over_white(a[..., :3], a[..., 3])
    elif mode == "L":
        g = np.asarray(im, dtype=np.float32) / 255.0
        out = np.repeat(g[..., None], 3, axis=2)
    elif mode == "LA":
        a = np.asarray(im, dtype=np.float32) / 255.0
        out = np.repeat(_composite_over_white(a[..., :1], a[..., 1]), 3, axis=2)
    elif mode.startswith("I;16"):
        g = np.asarray(im).astype(np.float32) / 65535.0
        out = np.repeat(g[..., None], 3, axis=2)
    elif mode == "I":
        raw = np.asarray(im)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 65535:
            warnings.warn(f"{path}: 32-bit integer image with values in [{lo}, {hi}] clipped to the "
                          "16-bit range [0, 65535]", RuntimeWarning, stacklevel=3)
        g = np.clip(raw.astype(np.float64), 0, 65535).astype(np.float32) / 65535.0
        out = np.repeat(g[..., None], 3, axis=2)
    elif mode == "F":
        raw = np.asarray(im, dtype=np.float32)
        if not np.isfinite(raw).all():
            raise ImageReadError(path, "floating-point image contains NaN or infinity")
        out = np.repeat(np.clip(raw, 0.0, 1.0)[..., None], 3, axis=2)
    else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        try:
            out = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        except _DECODE_ERRORS as e:
            raise ImageReadError(path, f"cannot convert image mode {mode!r} to RGB ({e})") from e
    return np.ascontiguousarray(out, dtype=np.float32)


def _exact_uint8_rgb(im: Image.Image) -> np.ndarray | None:
    """8-bit RGB or gray (also palette without transparency, and bilevel) as (H, W, 3) uint8: the float
    result is exactly these values / 255. None for modes whose float result needs arithmetic (alpha
    over white, 16-bit, float)."""
    mode = im.mode
    if mode == "P" and "transparency" not in im.info:
        im, mode = im.convert("RGB"), "RGB"
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode == "L":
        return np.repeat(np.asarray(im, dtype=np.uint8)[..., None], 3, axis=2)
    return None


def read_image(path: str | os.PathLike, keep_uint8: bool = False) -> np.ndarray:
    """Read a photo as ``(H, W, 3)`` float32 RGB in ``[0, 1]``, upright per its EXIF orientation.

    ``keep_uint8``: an 8-bit RGB or gray photo comes back as ``(H, W, 3)`` uint8 instead (exactly the float
    result times 255; other modes still as float32). A 12-MP photo as float32 is 144 MB and ~0.1 s of
    conversion that a detector (which wants uint8) and a crop (which samples a few thousand pixels) never
    need; `core.frontend.crop.warp_images` and the detectors take either.

    Raises `ImageReadError` (naming the file) for missing, empty, corrupt, truncated, non-image or
    zero-size files.
    """
    im = _open_loaded(path)
    try:
        up = _exif_upright(im, path)
        out = _exact_uint8_rgb(up) if keep_uint8 else None
        if out is None:
            out = _to_float_rgb(up, path)
    finally:
        im.close()
    if out.shape[0] == 0 or out.shape[1] == 0:
        raise ImageReadError(path, f"image has zero size ({out.shape[1]}x{out.shape[0]})")
    return out


def read_png16(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 16-bit image (as written by ``write_png(..., bits=16)``) as raw ``uint16``
    values, shape ``(H, W)``. No EXIF orientation is applied: this is for data maps, not photos.

    8-bit or colour files are refused (`ImageReadError`) rather than silently rescaled.
    """
    im = _open_loaded(path)
    try:
        mode = im.mode
        if mode.startswith("I;16"):
            raw = np.asarray(im)
            out = raw.astype(np.uint16)
        elif mode == "I":
            raw = np.asarray(im)
            if raw.size and (raw.min() < 0 or raw.max() > 65535):
                raise ImageReadError(path, "32-bit integer image has values outside the 16-bit range")
            out = raw.astype(np.uint16)
        else:
            raise ImageReadError(path, f"not a 16-bit grayscale image (Pillow mode {mode!r})")
    finally:
        im.close()
    return np.ascontiguousarray(out)


def _prepare_png_array(array, bits: int) -> tuple[np.ndarray, str]:
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    torch = sys.modules.get("torch")  # accept CPU/CUDA tensors; a tensor exists only if torch is loaded
    if torch is not None and isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        channels = 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        channels = a.shape[2]
    else:
        raise ValueError(f"write_png expects (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"cannot write an empty image of shape {a.shape}")
    if bits == 16 and channels != 1:
        raise ValueError("16-bit PNGs are supported for grayscale only (Pillow cannot write 16-bit RGB); "
                         f"got shape {a.shape}")
    maxval = 255 if bits == 8 else 65535
    if a.dtype == np.bool_:
        raise ValueError("boolean arrays are ambiguous; convert to uint8 (0/255) or float first")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("array contains NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        tol = 1e-6
        if lo < -tol or hi > 1 + tol:
            raise ValueError(f"float arrays must lie in [0, 1]; got values in [{lo}, {hi}]")
        q = np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * maxval)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > maxval:
            raise ValueError(f"integer values must lie in [0, {maxval}] for a {bits}-bit PNG; "
                             f"got [{lo}, {hi}]")
        q = a
    else:
        raise ValueError(f"unsupported dtype {a.dtype}")
    if bits == 8:
        q = np.ascontiguousarray(q, dtype=np.uint8)
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    else:
        q = np.ascontiguousarray(q, dtype="<u2")
        mode = "I;16"
    return q, mode


def write_png(path: str | os.PathLike, array, bits: int = 8) -> Path:
    """Write ``array`` as a PNG atomically; returns the final path.

    ``bits=8``: ``(H, W)``/``(H, W, 1)`` gray, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, as floats in
    ``[0, 1]`` (rounded to 1/255) or integers in ``[0, 255]``.
    ``bits=16``: grayscale only, floats in ``[0, 1]`` (rounded to 1/65535) or integers in
    ``[0, 65535]`` (written exactly; read back with `read_png16`).

    The file is written to a temporary file in the destination folder, flushed to disk and renamed
    over ``path`` with ``os.replace``: readers never see a partial file, and on any error the
    temporary file is removed and the previous file (if any) is left untouched.
    """
    q, mode = _prepare_png_array(array, bits)
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {dest}: folder {folder} does not exist")
    if dest.is_dir():
        raise IsADirectoryError(f"cannot write {dest}: it is a folder")
    if mode == "I;16":
        img = Image.frombuffer("I;16", (q.shape[1], q.shape[0]), q.tobytes(), "raw", "I;16", 0, 1)
    else:
        img = Image.fromarray(q)
        if img.mode != mode:  # pragma: no cover - fromarray picks these modes for uint8 data
            img = img.convert(mode)
    atomic_write_bytes(dest, lambda f: img.save(f, format="PNG"))
    return dest


def collect_photos(inputs: Iterable[str | Path]) -> list[Path]:
    """Photos from files and folders (a folder's images in name order, not recursive). Paths that do not
    exist are kept, so that they are reported as failures of their own."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                          and not q.name.startswith("."))
        else:
            out.append(p)
    return out
