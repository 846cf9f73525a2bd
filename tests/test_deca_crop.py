"""DECA's crop and DECA's inverse for landmarks, against DECA's formulas written here from the published code.

Reference (yfeng95/DECA ``decalib/datasets/datasets.py`` ``TestData``, ``decalib/utils/util.py``
``transform_points``; scikit-image ``estimate_transform('similarity')`` = Umeyama, ``warp(order=1,
mode='constant', cval=0)``), everything in pixel INDEX coordinates as DECA uses them:

- the 68 landmarks' box -> ``old_size = (w + h) / 2 * 1.1``, centre = box centre, ``size = int(old_size *
  1.25)``; source points ``[c - size/2, c - size/2], [c - size/2, c + size/2], [c + size/2, c - size/2]`` onto
  ``[[0, 0], [0, 223], [223, 0]]`` by the Umeyama similarity (least squares; exact here);
- the crop image: output pixel ``(r, c)`` samples the photo at ``T^-1 (c, r)`` bilinearly from the four pixels
  ``floor``/``ceil`` around it, pixels outside the photo count as 0;
- landmarks back on the photo: ``q = (p * 0.5 + 0.5) * 224`` then ``T^-1 q`` (indices).

Our coordinates are continuous: index + 0.5 (dlib's points are indices, the detector adds 0.5).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.frontend import crop_from_box, crop_from_landmarks, read_image, warp_image
from core.frontend.landmarks import DlibDetector, _dlib_availability
from core.pipeline.reconstruct import network_ndc_to_photo_pixels

PHOTO_EXTS = {".jpg", ".jpeg", ".png"}


# ------------------------------------------------------------------------ DECA's formulas, independently

def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) least-squares similarity src -> dst, 3x3 (scikit-image's SimilarityTransform.estimate)."""
    n, dim = src.shape
    ms, md = src.mean(0), dst.mean(0)
    sd, dd = src - ms, dst - md
    A = dd.T @ sd / n
    d = np.ones(dim)
    if np.linalg.det(A) < 0:
        d[-1] = -1
    U, S, Vt = np.linalg.svd(A)
    R = U @ np.diag(d) @ Vt
    scale = (S @ d) / sd.var(axis=0).sum()
    T = np.eye(dim + 1)
    T[:dim, :dim] = scale * R
    T[:dim, dim] = md - scale * R @ ms
    return T


def deca_tform(lm_index: np.ndarray, box: bool = False, res: int = 224, scale: float = 1.25) -> np.ndarray:
    if box:
        left, top, right, bottom = lm_index.reshape(-1)[:4]
        old = (right - left + bottom - top) / 2
        c = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0 + old * 0.12])
    else:
        left, right = lm_index[:, 0].min(), lm_index[:, 0].max()
        top, bottom = lm_index[:, 1].min(), lm_index[:, 1].max()
        old = (right - left + bottom - top) / 2 * 1.1
        c = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    size = int(old * scale)
    src = np.array([[c[0] - size / 2, c[1] - size / 2], [c[0] - size / 2, c[1] + size / 2],
                    [c[0] + size / 2, c[1] - size / 2]])
    dst = np.array([[0, 0], [0, res - 1], [res - 1, 0]], np.float64)
    return umeyama_similarity(src, dst)


def deca_warp(image: np.ndarray, tform: np.ndarray, res: int = 224) -> np.ndarray:
    """Bilinear on index coordinates, 0 outside (scikit-image's warp, order 1, mode constant)."""
    h, w = image.shape[:2]
    inv = np.linalg.inv(tform)
    r, c = np.mgrid[0:res, 0:res].astype(np.float64)
    x = inv[0, 0] * c + inv[0, 1] * r + inv[0, 2]
    y = inv[1, 0] * c + inv[1, 1] * r + inv[1, 2]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.ceil(x).astype(int), np.ceil(y).astype(int)
    dx, dy = (x - x0)[..., None], (y - y0)[..., None]

    def px(yy, xx):
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return np.where(ok[..., None], v, 0.0)

    top = (1 - dx) * px(y0, x0) + dx * px(y0, x1)
    bottom = (1 - dx) * px(y1, x0) + dx * px(y1, x1)
    return (1 - dy) * top + dy * bottom


def deca_landmarks_on_photo(points_ndc: np.ndarray, tform: np.ndarray, res: int = 224) -> np.ndarray:
    q = (points_ndc * 0.5 + 0.5) * res
    qh = np.concatenate([q, np.ones((len(q), 1))], 1)
    return (qh @ np.linalg.inv(tform).T)[:, :2]


def to_index_matrix(m: np.ndarray) -> np.ndarray:
    """A continuous photo->crop matrix in index coordinates: S(-0.5) M S(+0.5)."""
    s = np.eye(3)
    s[:2, 2] = 0.5
    return np.linalg.inv(s) @ m @ s


# ---------------------------------------------------------------------------------------------- data

@pytest.fixture(scope="module")
def photo_landmarks(photos_dir: Path):
    """(name, photo float64 in [0, 1], 68 dlib landmarks in continuous pixels) for every shared photo."""
    if not photos_dir.is_dir():
        pytest.skip(f"no photos at {photos_dir}")
    ok, why = _dlib_availability(need_cnn=True)
    if not ok:
        pytest.skip(why)
    det = DlibDetector().load()
    out = []
    for p in sorted(q for q in photos_dir.iterdir() if q.suffix.lower() in PHOTO_EXTS):
        img = read_image(p)
        found = det.detect(img)
        assert found, f"dlib found no face in {p.name}"
        lm = max(found, key=lambda d: np.ptp(d.landmarks[:, 0]) * np.ptp(d.landmarks[:, 1])).landmarks
        out.append((p.name, np.asarray(img, np.float64), np.asarray(lm, np.float64)))
    assert len(out) >= 5
    return out


# --------------------------------------------------------------------------------------------- tests

def test_deca_crop_matrix_and_image_match_decas_formulas(photo_landmarks):
    worst_m = worst_i = 0.0
    for name, img, lm in photo_landmarks:
        T = deca_tform(lm - 0.5)
        crop = crop_from_landmarks(lm, convention="deca")
        assert crop.convention == "deca"
        dm = np.abs(to_index_matrix(crop.matrix) - T).max()
        assert dm < 1e-4, (name, dm)
        assert abs(crop.scale - 223.0 / crop.src_size) < 1e-12
        ours = warp_image(img, crop).permute(1, 2, 0).numpy()  # float64 photo -> float64 crop
        want = deca_warp(img, T)
        di = np.abs(ours - want).max()
        assert di < 1e-3, (name, di)
        worst_m, worst_i = max(worst_m, dm), max(worst_i, di)
        # the continuous convention really is a different crop (so this test can tell them apart)
        other = warp_image(img, crop_from_landmarks(lm)).permute(1, 2, 0).numpy()
        assert np.abs(other - want).max() > 20 * max(di, 1e-4), name
    print(f"\n[deca crop] {len(photo_landmarks)} photos: matrix <= {worst_m:.2e}, image <= {worst_i:.2e}")


def test_deca_crop_does_not_prefilter_large_photos(photo_landmarks):
    """DECA samples the photo as it is even when the crop shrinks it: upscale a photo 3x (landmarks too)."""
    name, img, lm = photo_landmarks[0]
    big = np.repeat(np.repeat(img, 3, 0), 3, 1)
    lm3 = lm * 3.0
    T = deca_tform(lm3 - 0.5)
    crop = crop_from_landmarks(lm3, convention="deca")
    assert crop.scale < 0.5
    ours = warp_image(big, crop).permute(1, 2, 0).numpy()
    assert np.abs(ours - deca_warp(big, T)).max() < 1e-3
    # asked explicitly, the box filter is still available and differs
    filtered = warp_image(big, crop, antialias=True).permute(1, 2, 0).numpy()
    assert np.abs(filtered - ours).max() > 1e-2


def test_deca_crop_from_a_box_matches_decas_bbox_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x0, y0 = rng.uniform(0, 300, 2)
        box = np.array([x0, y0, x0 + rng.uniform(40, 400), y0 + rng.uniform(40, 400)])
        T = deca_tform(box - 0.5, box=True)
        crop = crop_from_box(box, convention="deca")
        assert np.abs(to_index_matrix(crop.matrix) - T).max() < 1e-4


def test_landmarks_on_the_photo_follow_decas_inverse(photo_landmarks):
    rng = np.random.default_rng(1)
    worst = 0.0
    for name, img, lm in photo_landmarks:
        T = deca_tform(lm - 0.5)
        crop = crop_from_landmarks(lm, convention="deca")
        p = rng.uniform(-1.1, 1.1, size=(68, 2))
        want = deca_landmarks_on_photo(p, T) + 0.5  # DECA's indices -> continuous pixels
        got = network_ndc_to_photo_pixels(p, crop)
        err = np.abs(got - want).max()
        assert err < 1e-3, (name, err)
        worst = max(worst, err)
        # the continuous convention differs by about half a crop pixel (scaled to the photo)
        cont = network_ndc_to_photo_pixels(p, crop_from_landmarks(lm))
        assert np.abs(cont - want).max() > 0.2 / crop.scale
        # ndc_frame() renders put NDC exactly where ndc_to_pixels does
        frame = crop.ndc_frame()
        np.testing.assert_allclose(frame.apply_inverse((p + 1) * 112), got, atol=1e-9)
    print(f"\n[deca inverse] {len(photo_landmarks)} photos: landmarks on the photo within {worst:.2e} px")


def test_both_conventions_share_the_centre_and_differ_by_the_scale():
    lm = np.random.default_rng(2).uniform(100, 300, size=(68, 2))
    d = crop_from_landmarks(lm, convention="deca")
    c = crop_from_landmarks(lm, convention="continuous")
    centre = np.array(d.center)
    np.testing.assert_allclose(d.apply(centre), [112, 112], atol=1e-9)
    np.testing.assert_allclose(c.apply(centre), [112, 112], atol=1e-9)
    assert math.isclose(d.scale / c.scale, 223 / 224, rel_tol=1e-12)
    with pytest.raises(ValueError, match="convention"):
        crop_from_landmarks(lm, convention="skimage")


def test_a_camera_moves_from_decas_crop_into_the_continuous_crop():
    """deca+fit starts the fit (continuous crop) from DECA's camera (DECA's crop): the same 3D points must
    land on the same photo pixels through either crop."""
    import torch
    from types import SimpleNamespace

    from core.fitting.fitter import _camera_in_fit_crop
    from core.render.camera import orthographic_project

    rng = np.random.default_rng(3)
    lm = rng.uniform(150, 420, size=(68, 2))
    deca = crop_from_landmarks(lm, convention="deca")
    cam = np.array([7.5, 0.01, -0.02], np.float32)
    res = SimpleNamespace(crop_matrix=deca.matrix, cam=cam, detected_landmarks=lm,
                          extra={"crop_convention": np.str_("deca")})
    cam2 = _camera_in_fit_crop(res)
    pts = torch.as_tensor(rng.normal(scale=0.08, size=(1, 50, 3)))
    p1 = orthographic_project(pts, torch.as_tensor(cam, dtype=torch.float64)[None])[0, :, :2].numpy()
    p2 = orthographic_project(pts, torch.as_tensor(cam2, dtype=torch.float64)[None])[0, :, :2].numpy()
    on_photo_deca = network_ndc_to_photo_pixels(p1, deca)
    on_photo_fit = network_ndc_to_photo_pixels(p2, crop_from_landmarks(lm))
    assert np.abs(on_photo_deca - on_photo_fit).max() < 1e-3  # float32 camera
    assert abs(cam2[0] / cam[0] - 224 / 223) < 1e-6
