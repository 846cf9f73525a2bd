"""DECA's test-time crop (REFERENCE.md "Cropping") and the warp into the 224x224 network input.

All coordinates and matrices here are continuous pixel coordinates (docs/CONVENTIONS.md): pixel ``(i, j)``
covers ``[j, j+1) x [i, i+1)``, its centre is ``(j + 0.5, i + 0.5)``. Crop pixel ``(v, u)`` samples the photo
at ``inverse() @ (u + 0.5, v + 0.5, 1)``. Two conventions place the landmark square in the crop:

* ``"deca"`` (DECA's released ``TestData``): scikit-image's similarity maps the square's corners onto the
  pixel *indices* ``(0, 0), (0, size-1), (size-1, 0)``, so the scale is ``(size - 1) / src_size`` and the
  square's corners land on pixel centres. With index coordinates ``x_idx = x - 0.5`` on both sides, DECA's
  index matrix ``T`` is this module's ``matrix = S(+0.5) @ T @ S(-0.5)`` (``S`` a translation). No prefilter.
* ``"continuous"``: the square maps exactly onto ``[0, size]^2``, scale ``size / src_size``. With
  ``antialias=True`` a crop that shrinks the photo 2x or more first box-averages it.

Both have the same centre: photo point ``center`` goes to crop point ``(size/2, size/2)``.

`warp_image` samples bilinearly with ``grid_sample(align_corners=False)`` and zero padding outside the photo.
That is exactly scikit-image's ``warp(order=1, mode='constant', cval=0)`` on index coordinates (both take
the four neighbouring pixels, out-of-photo ones as 0), so DECA's crop image needs only DECA's matrix.
With antialiasing, when the crop shrinks the photo by a factor of 2 or more, the photo is first
box-averaged by the integer factor ``k = floor(src_size / size)`` (which maps continuous coordinates by
``x / k`` exactly) so that large photos do not alias; by default only the continuous convention does this.

The network's image NDC ``p`` (x right, y down, [-1, 1]) gives crop pixels ``(p + 1) * size / 2`` in DECA's
code, which treats them as pixel *indices* (``transform_points``): `CropTransform.ndc_to_pixels` adds the
0.5 for a DECA crop, and `CropTransform.ndc_frame` is the continuous transform in which NDC maps to
``(p + 1) * size / 2`` exactly (for renders and the texture crop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropTransform", "CONVENTIONS", "check_convention", "crop_from_landmarks", "crop_from_box", "warp_image",
           "warp_images"]

CONVENTIONS = ("deca", "continuous")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown crop convention {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    return convention


@dataclass(frozen=True)
class CropTransform:
    """Similarity from photo pixels to crop pixels (``matrix`` 3x3 float64, acting on ``(x, y, 1)``).

    ``size`` is the crop's resolution (224). ``center`` and ``src_size`` describe the source square in the
    photo (informative; ``matrix`` is authoritative). ``convention`` ("deca" or "continuous", module
    docstring) says how network NDC relates to crop pixels and whether the warp prefilters by default.
    """

    matrix: np.ndarray
    size: int = 224
    center: tuple[float, float] | None = None
    src_size: float | None = None
    convention: str = "continuous"

    def __post_init__(self):
        m = np.array(self.matrix, dtype=np.float64).reshape(3, 3)
        if not np.isfinite(m).all():
            raise ValueError("crop matrix must be finite")
        if abs(np.linalg.det(m[:2, :2])) < 1e-12:
            raise ValueError("crop matrix is singular")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "size", int(self.size))
        check_convention(self.convention)

    @classmethod
    def from_square(cls, center, src_size: float, size: int = 224) -> "CropTransform":
        """The square of side ``src_size`` centred at ``center`` onto ``[0, size]^2``."""
        cx, cy = float(center[0]), float(center[1])
        src_size = float(src_size)
        if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(src_size)) or src_size <= 0:
            raise ValueError(f"invalid crop square: center {center}, side {src_size}")
        s = size / src_size
        m = np.array([[s, 0.0, -s * (cx - src_size / 2.0)],
                      [0.0, s, -s * (cy - src_size / 2.0)],
                      [0.0, 0.0, 1.0]])
        return cls(matrix=m, size=size, center=(cx, cy), src_size=src_size)

    @classmethod
    def deca_from_square(cls, center, src_size: float, size: int = 224) -> "CropTransform":
        """DECA's crop of the square of side ``src_size`` centred at ``center`` (continuous coordinates).

        DECA's index-space similarity sends the corners ``c_idx -/+ src_size/2`` (``c_idx = center - 0.5``)
        to indices 0 and ``size - 1``: ``T(x_idx) = s * (x_idx - c_idx + src_size / 2)``, ``s = (size-1)/src_size``.
        In continuous coordinates ``M(x) = T(x - 0.5) + 0.5 = s * (x - center) + size / 2``: the centre
        lands on the crop's centre like the continuous crop, only the scale differs."""
        cx, cy = float(center[0]), float(center[1])
        src_size = float(src_size)
        if not (math.isfinite(cx) and math.isfinite(cy) and math.isfinite(src_size)) or src_size <= 0:
            raise ValueError(f"invalid crop square: center {center}, side {src_size}")
        if size < 2:
            raise ValueError("DECA's crop needs size >= 2")
        s = (size - 1) / src_size
        m = np.array([[s, 0.0, size / 2.0 - s * cx],
                      [0.0, s, size / 2.0 - s * cy],
                      [0.0, 0.0, 1.0]])
        return cls(matrix=m, size=size, center=(cx, cy), src_size=src_size, convention="deca")

    @classmethod
    def from_matrix(cls, matrix, size: int = 224, convention: str = "continuous") -> "CropTransform":
        """Rebuild from a stored matrix (e.g. ``result.npz['crop_matrix']`` with its ``crop_convention``)."""
        return cls(matrix=np.asarray(matrix, dtype=np.float64), size=size, convention=convention)

    @property
    def ndc_offset(self) -> float:
        """Crop pixels ``= (p + 1) * size / 2 + ndc_offset``: 0.5 for DECA (its NDC pixels are indices)."""
        return 0.5 if self.convention == "deca" else 0.0

    def ndc_to_pixels(self, points_ndc):
        """Network image NDC ``(..., 2)`` -> continuous crop pixels (numpy float64 or torch)."""
        if isinstance(points_ndc, torch.Tensor):
            return (points_ndc + 1.0) * (self.size / 2.0) + self.ndc_offset
        return (np.asarray(points_ndc, np.float64) + 1.0) * (self.size / 2.0) + self.ndc_offset

    def ndc_transform_to(self, other: "CropTransform") -> np.ndarray:
        """3x3 matrix taking this crop's network NDC to ``other``'s (through the photo): e.g. to move a
        camera found in DECA's crop into a continuous crop of the same face."""
        def ndc_to_px(c: "CropTransform") -> np.ndarray:
            h = c.size / 2.0
            return np.array([[h, 0.0, h + c.ndc_offset], [0.0, h, h + c.ndc_offset], [0.0, 0.0, 1.0]])
        return np.linalg.inv(ndc_to_px(other)) @ other.matrix @ self.inverse() @ ndc_to_px(self)

    def ndc_frame(self) -> "CropTransform":
        """The continuous transform whose pixels are ``(p + 1) * size / 2`` for network NDC ``p``: this crop
        moved by ``-ndc_offset`` (itself for a continuous crop). Renders in the network's camera and the
        texture crop use it so that they agree with `ndc_to_pixels`."""
        if self.ndc_offset == 0.0:
            return self
        m = self.matrix.copy()
        m[:2, 2] -= self.ndc_offset
        return CropTransform(matrix=m, size=self.size, convention="continuous")

    @property
    def scale(self) -> float:
        """Crop pixels per photo pixel."""
        return float(math.sqrt(abs(np.linalg.det(self.matrix[:2, :2]))))

    def inverse(self) -> np.ndarray:
        """The 3x3 matrix mapping crop pixels back to photo pixels."""
        return np.linalg.inv(self.matrix)

    @staticmethod
    def _apply(m: np.ndarray, points):
        if isinstance(points, torch.Tensor):
            if not points.is_floating_point():
                points = points.to(torch.float32)
            mt = torch.tensor(np.array(m), dtype=points.dtype, device=points.device)
            return points @ mt[:2, :2].T + mt[:2, 2]
        p = np.asarray(points, dtype=np.float64)
        if p.shape[-1] != 2:
            raise ValueError(f"points must have shape (..., 2), got {p.shape}")
        return p @ m[:2, :2].T + m[:2, 2]

    def apply(self, points):
        """Photo pixels -> crop pixels for points ``(..., 2)`` (numpy float64, or torch keeping dtype/device).

        The matrix is a similarity without projective part, so the last row is not used."""
        return self._apply(self.matrix, points)

    def apply_inverse(self, points):
        """Crop pixels -> photo pixels for points ``(..., 2)``."""
        return self._apply(self.inverse(), points)


def _square_crop(center, src: int, size: int, convention: str) -> CropTransform:
    if check_convention(convention) == "deca":
        return CropTransform.deca_from_square(center, src, size)
    return CropTransform.from_square(center, src, size)


def crop_from_landmarks(landmarks, scale: float = 1.25, size: int = 224,
                        convention: str = "continuous") -> CropTransform:
    """DECA's rule for 68 landmarks: ``old_size = (w + h) / 2 * 1.1`` of their extent, centre = extent
    centre, square side ``int(old_size * scale)``; placed in the crop by ``convention`` ("deca" or
    "continuous", module docstring). Landmarks are continuous photo pixels."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[1] != 2 or lm.shape[0] < 2:
        raise ValueError(f"landmarks must be (N, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN or infinity")
    left, right = lm[:, 0].min(), lm[:, 0].max()
    top, bottom = lm[:, 1].min(), lm[:, 1].max()
    old_size = (right - left + bottom - top) / 2.0 * 1.1
    center = (right - (right - left) / 2.0, bottom - (bottom - top) / 2.0)
    src = int(old_size * scale)
    if src < 1:
        raise ValueError(f"landmarks span too small a region to crop (square side {old_size * scale:.3f})")
    return _square_crop(center, src, size, convention)


def crop_from_box(box, scale: float = 1.25, size: int = 224, convention: str = "continuous") -> CropTransform:
    """DECA's rule for a detector box ``(x0, y0, x1, y1)``: ``old_size = (w + h) / 2``, centre moved down
    by ``0.12 * old_size``, square side ``int(old_size * scale)``."""
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size < 4 or not np.isfinite(b[:4]).all():
        raise ValueError(f"box must be finite (x0, y0, x1, y1), got {box}")
    left, top, right, bottom = b[:4]
    if right <= left or bottom <= top:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {box}")
    old_size = (right - left + bottom - top) / 2.0
    center = (right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old_size * 0.12)
    src = int(old_size * scale)
    if src < 1:
        raise ValueError(f"box too small to crop (square side {old_size * scale:.3f})")
    return _square_crop(center, src, size, convention)


# ------------------------------------------------------------------------------------------------ warp

def _check_image(image):
    """(H, W, 3) numpy (float in [0, 1] or uint8; 2-D gray is replicated) or (3, H, W) torch ->
    the same array or tensor, checked (no copy)."""
    if isinstance(image, torch.Tensor):
        t = image
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"torch images must be (3, H, W), got {tuple(image.shape)}")
        return t
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"numpy images must be (H, W, 3), got {a.shape}")
    if a.dtype != np.uint8 and not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"unsupported image dtype {a.dtype}")
    return a


def _image_hw(image) -> tuple[int, int]:
    return (image.shape[1], image.shape[2]) if isinstance(image, torch.Tensor) else image.shape[:2]


def _pool_factor(transform: CropTransform, out_size: int, antialias: bool | None) -> int:
    if antialias is None:  # each convention's own default: DECA samples the photo as it is
        antialias = transform.convention == "continuous"
    if not antialias:
        return 1
    photo_px_per_out_px = (transform.size / out_size) / transform.scale
    return max(1, int(math.floor(photo_px_per_out_px + 1e-9)))


def _sample_points(transform: CropTransform, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Photo pixel coordinates (continuous, float64) of the crop's pixel centres: x, y each (out, out)."""
    inv = transform.inverse()
    c = (np.arange(out_size, dtype=np.float64) + 0.5) * (transform.size / out_size)
    u, v = np.meshgrid(c, c)  # u: x (columns), v: y (rows)
    return inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]


def _axis_aligned(transform: CropTransform) -> bool:
    m = transform.matrix
    return m[0, 1] == 0.0 and m[1, 0] == 0.0


def _needed(coords: np.ndarray, separable: bool) -> np.ndarray:
    """The sorted pooled pixel indices that bilinear samples at pooled coordinates ``coords`` read
    (align_corners=False: ``floor(x - 0.5)`` and the next). ``separable``: exactly those (an axis-aligned
    crop samples a few hundred rows and columns of a 4000-pixel photo); else every index in their range."""
    i0 = np.floor(coords - 0.5).astype(np.int64)
    if separable:
        return np.unique(np.concatenate([i0.ravel(), i0.ravel() + 1]))
    return np.arange(int(i0.min()), int(i0.max()) + 2)


def _compressed(coords: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Pooled coordinates -> coordinates in the image made of only the pooled pixels ``idx`` (sorted):
    a sample's left neighbour ``i0`` moves to its position in ``idx`` and ``i0 + 1`` is the next entry
    (both are in ``idx``), so the bilinear weights are unchanged."""
    i0 = np.floor(coords - 0.5)
    return np.searchsorted(idx, i0.astype(np.int64)) + (coords - i0)


def _block_sums(a: np.ndarray, idx: np.ndarray, k: int, acc, axis: int) -> np.ndarray:
    """Sums along ``axis`` of ``a`` (length n there) zero-padded to a multiple of ``k``, in blocks of ``k``,
    for the sorted block indices ``idx`` (zero outside the padded array); ``acc`` the accumulator dtype.
    Only the photo's last block can be partial."""
    n = a.shape[axis]
    shape = list(a.shape)

    def at(sl):  # index along `axis`
        return (slice(None),) * axis + (sl,)

    ok = (idx >= 0) & (idx * k < n)
    v = idx[ok]
    lo, hi = (int(v[0]), int(v[-1]) + 1) if len(v) else (0, 0)
    run = bool(ok.all()) and hi - lo == len(idx)  # one run of blocks inside the photo: no gather copy
    if k == 1 and run:
        return a[at(slice(lo, hi))]
    shape[axis] = len(idx)
    out = np.zeros(shape, acc)
    if not len(v):
        return out
    if k == 1:
        out[at(ok)] = a[at(v)]
        return out
    full = min(hi, n // k)  # blocks lo..full-1 are whole
    shape[axis] = hi - lo
    sums = np.zeros(shape, acc)
    if full > lo and axis == 0:  # one reshape-sum: contiguous rows (2-3 ms for 8 M uint8 values)
        sums[:full - lo] = a[lo * k:full * k].reshape((full - lo, k) + a.shape[1:]).sum(1, dtype=acc)
    elif full > lo:  # k strided views added: ~5x faster than a reshape-sum across the inner axis
        whole = sums[at(slice(0, full - lo))]
        for j in range(k):
            whole += a[at(slice(lo * k + j, full * k, k))]
    if hi > full:  # the last block, cut by the photo's edge (the rest is zero padding)
        sums[at(full - lo)] = a[at(slice(full * k, n))].sum(axis, dtype=acc)
    if run:
        return sums
    out[at(ok)] = sums[at(v - lo)]
    return out


def _gather(image, rows: np.ndarray, cols: np.ndarray, k: int) -> torch.Tensor:
    """The pooled pixels (``rows`` x ``cols``, pooled indices, may lie outside the photo) of the photo
    zero-padded to a multiple of ``k`` and box-averaged by ``k``: (1, 3, len(rows), len(cols)) float.

    Only those pixels are read and converted: a 12-MP photo's full float copy costs ~0.1-0.3 s and 144 MB.
    The blocks are the whole photo's (they start on multiples of ``k``); pixels outside the photo are 0,
    as the zero padding of the whole-photo path. numpy images stay (h, w, 3): the result is a channels_last
    view (grid_sample reads it as fast; a transpose copy cost ~0.1 s). uint8 blocks are summed as
    integers and divided by ``255 k^2`` once (the whole-photo path divided by 255 first: float rounding)."""
    H, W = _image_hw(image)
    if isinstance(image, torch.Tensor):
        pr = (rows[:, None] * k + np.arange(k)).ravel()  # photo rows of the blocks
        pc = (cols[:, None] * k + np.arange(k)).ravel()
        r_ok, c_ok = (pr >= 0) & (pr < H), (pc >= 0) & (pc < W)
        dev = image.device
        t = image.index_select(1, torch.as_tensor(np.clip(pr, 0, H - 1), device=dev))
        t = t.index_select(2, torch.as_tensor(np.clip(pc, 0, W - 1), device=dev))
        if not t.is_floating_point():
            t = t.to(torch.float32) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float32)
        t = t * torch.as_tensor(r_ok, dtype=t.dtype, device=dev)[None, :, None] \
            * torch.as_tensor(c_ok, dtype=t.dtype, device=dev)[None, None, :]
        t = t.unsqueeze(0)
        return F.avg_pool2d(t, kernel_size=k, stride=k) if k > 1 else t
    if image.dtype == np.uint8:
        acc, scale = (np.uint8 if k == 1 else np.uint16 if k <= 16 else np.uint32), 255.0 * k * k
    else:
        acc, scale = (np.float64 if image.dtype == np.float64 else np.float32), float(k * k)
    inside = cols[(cols >= 0) & (cols * k < W)]
    c0 = int(inside[0]) if len(inside) else 0
    c1 = int(inside[-1]) + 1 if len(inside) else 1
    view = image[:, c0 * k:min(W, c1 * k)]  # the columns' span only (starts on a block boundary)
    a = _block_sums(_block_sums(view, rows, k, acc, 0), cols - c0, k, acc, 1)  # (len(rows), len(cols), 3)
    a = a.astype(np.float64 if acc == np.float64 else np.float32)
    if scale != 1.0:
        a /= scale
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)


def warp_images(image, transforms: Sequence[CropTransform], out_size: int | None = None,
                antialias: bool | None = None) -> torch.Tensor:
    """Many crops of one photo: ``(N, 3, out_size, out_size)``.

    ``image``: ``(H, W, 3)`` numpy (float in [0, 1] or uint8; float32 result unless float64) or
    ``(3, H, W)`` torch (result keeps its dtype and device). ``out_size`` defaults to each transform's
    ``size`` (all must agree); a different ``out_size`` resamples the same square. ``antialias``: None
    (default) box-filters shrinking continuous crops and never DECA crops; True/False force it.

    Only the (box-averaged) pixels the crops read are gathered, so the cost does not grow with the photo:
    the result equals sampling the whole photo up to the float32 rounding of the normalised grid, which
    is smaller here (about ``width * 6e-8`` px for the whole photo's grid; tests/test_frontend.py).
    """
    transforms = list(transforms)
    img = _check_image(image)
    H, W = _image_hw(img)
    if isinstance(img, torch.Tensor):
        dtype = img.dtype if img.is_floating_point() else torch.float32
    else:
        dtype = torch.float64 if img.dtype == np.float64 else torch.float32
    if not transforms:
        n = out_size or 224
        return torch.zeros((0, 3, n, n), dtype=dtype, device=getattr(img, "device", None))
    sizes = {t.size for t in transforms}
    if out_size is None:
        if len(sizes) != 1:
            raise ValueError(f"transforms have different sizes {sorted(sizes)}; pass out_size")
        out_size = sizes.pop()
    out_size = int(out_size)
    if out_size < 1:
        raise ValueError("out_size must be positive")
    out = None
    for i, t in enumerate(transforms):  # each crop on its own: a batch equals its crops one by one
        k = _pool_factor(t, out_size, antialias)
        x, y = _sample_points(t, out_size)
        x, y = x / k, y / k  # pooled coordinates
        if _axis_aligned(t):
            # x depends on the column only, y on the row only: read only the rows and columns they need
            # (a few hundred of a 4000-pixel photo's)
            cols, rows = _needed(x[0], True), _needed(y[:, 0], True)
            cx, cy = np.broadcast_arrays(_compressed(x[0], cols)[None, :], _compressed(y[:, 0], rows)[:, None])
        else:
            cols, rows = _needed(x, False), _needed(y, False)
            cx, cy = _compressed(x, cols), _compressed(y, rows)
        src = _gather(img, rows, cols, k)
        h, w = src.shape[-2:]
        grid = torch.from_numpy(np.stack([2.0 * cx / w - 1.0, 2.0 * cy / h - 1.0], axis=-1)[None])
        res = F.grid_sample(src, grid.to(device=src.device, dtype=src.dtype), mode="bilinear",
                            padding_mode="zeros", align_corners=False)
        if out is None:
            out = src.new_empty((len(transforms), 3, out_size, out_size))
        out[i] = res[0]
    return out


def warp_image(image, transform: CropTransform, out_size: int | None = None,
               antialias: bool | None = None) -> torch.Tensor:
    """One crop: ``(3, out_size, out_size)`` (see `warp_images`)."""
    return warp_images(image, [transform], out_size=out_size, antialias=antialias)[0]
