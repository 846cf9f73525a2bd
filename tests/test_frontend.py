"""Tests for core/frontend: photo reading, PNG writing, dlib landmarks on real photos, DECA's crop."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.frontend import (CropTransform, DetectorUnavailableError, DlibDetector, FaceDetection,
                           FanDetector, ImageReadError, NoFaceError, crop_from_box, crop_from_landmarks,
                           detect_faces, get_detector, read_image, read_png16, select_faces, warp_image,
                           warp_images, write_png)
from core.frontend.landmarks import _dlib_availability

PHOTO_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}


def _photos(photos_dir: Path) -> list[Path]:
    if not photos_dir.is_dir():
        pytest.skip(f"no photos at {photos_dir}")
    ps = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in PHOTO_EXTS)
    if not ps:
        pytest.skip(f"no photos in {photos_dir}")
    return ps


needs_dlib = pytest.mark.skipif(not _dlib_availability(need_cnn=True)[0],
                                reason=_dlib_availability(need_cnn=True)[1])


@pytest.fixture(scope="module")
def dlib_detector():
    if not _dlib_availability(need_cnn=True)[0]:
        pytest.skip(_dlib_availability(need_cnn=True)[1])
    return DlibDetector().load()


@pytest.fixture(scope="module")
def photo_detections(photos_dir, dlib_detector):
    """{path: (image, hog detections, detections with CNN fallback)} for every real photo."""
    hog_only = DlibDetector(cnn_fallback=False)
    out = {}
    for p in _photos(photos_dir):
        img = read_image(p)
        hog = hog_only.detect(img)
        full = hog if hog else dlib_detector.detect(img)
        out[p] = (img, hog, full)
    return out


# ------------------------------------------------------------------------------------ reading photos

def test_read_every_real_photo(photos_dir):
    for p in _photos(photos_dir):
        img = read_image(p)
        assert img.dtype == np.float32 and img.ndim == 3 and img.shape[2] == 3, p
        assert img.flags.c_contiguous
        assert 0.0 <= img.min() and img.max() <= 1.0
        assert img.std() > 0.02, f"{p} reads as (nearly) uniform"
        with Image.open(p) as im:
            assert img.shape[:2] == (im.size[1], im.size[0])
            if im.mode == "RGB":  # independent check against Pillow's own decoding
                np.testing.assert_allclose(img, np.asarray(im, dtype=np.float32) / 255.0, atol=1e-6)


def _first_photo_u8(photos_dir) -> np.ndarray:
    with Image.open(_photos(photos_dir)[0]) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("tag", [3, 6, 8])
def test_exif_orientation(photos_dir, tmp_path, tag):
    up = _first_photo_u8(photos_dir)[:, 20:180]  # non-square, so a wrong rotation changes the shape
    # stored pixels such that applying the EXIF orientation gives back `up`
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    stored = Image.fromarray(up).transpose(inverse[tag])
    exif = Image.Exif()
    exif[0x0112] = tag
    f = tmp_path / f"rot{tag}.jpg"
    stored.save(f, quality=95, exif=exif)
    with Image.open(f) as im:
        assert im.getexif().get(0x0112) == tag and im.size == stored.size
    got = read_image(f)
    assert got.shape == (*up.shape[:2], 3)
    ref = up.astype(np.float32) / 255.0
    err = np.abs(got - ref).mean()
    assert err < 0.02, err
    raw = np.asarray(stored, dtype=np.float32) / 255.0
    if raw.shape == got.shape:  # the untransposed pixels must be clearly different
        assert np.abs(raw - ref).mean() > 5 * err


@needs_dlib
def test_exif_rotated_photo_gives_upright_landmarks(photos_dir, tmp_path, dlib_detector):
    up = _first_photo_u8(photos_dir)
    exif = Image.Exif()
    exif[0x0112] = 6
    f = tmp_path / "rot6.jpg"
    Image.fromarray(up).transpose(Image.Transpose.ROTATE_90).save(f, quality=95, exif=exif)
    dets = dlib_detector.detect(read_image(f))
    assert dets, "no face in the EXIF-rotated photo"
    _check_geometry(dets[0].landmarks, f)


def test_grayscale_modes(tmp_path):
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 256, (31, 47), dtype=np.uint8)
    Image.fromarray(g8).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (31, 47, 3)
    np.testing.assert_allclose(img[..., 1], g8 / 255.0, atol=1e-6)
    assert (img[..., 0] == img[..., 2]).all()

    Image.fromarray(g8 > 127).save(tmp_path / "b.png")  # mode 1
    img = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(img[..., 0], (g8 > 127).astype(np.float32))

    la = Image.merge("LA", [Image.fromarray(g8), Image.fromarray(np.full_like(g8, 255))])
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png")[..., 0], g8 / 255.0, atol=1e-6)

    g32 = (g8.astype(np.int32) * 257)
    Image.fromarray(g32).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode in ("I", "I;16", "I;16B")
    np.testing.assert_allclose(read_image(tmp_path / "i.tif")[..., 0], g32 / 65535.0, atol=1e-6)


def test_rgba_and_palette_composite_over_white(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left opaque red-ish, right fully transparent
    rgba[:, 6:9, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.shape == (10, 12, 3)
    np.testing.assert_allclose(img[:, :6], np.broadcast_to([200 / 255, 0, 0], (10, 6, 3)), atol=1e-6)
    np.testing.assert_allclose(img[:, 9:], 1.0)  # transparent -> white
    a = 128 / 255
    np.testing.assert_allclose(img[0, 7], [200 / 255 * a + 1 - a, 1 - a, 1 - a], atol=1e-6)

    p = Image.new("P", (5, 4), 0)
    p.putpalette([10, 20, 30, 250, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(img[0, 0], [250 / 255, 0, 0], atol=1e-6)
    np.testing.assert_allclose(img[1, 1], [1, 1, 1])


def test_16bit_png_and_tiff_gray(tmp_path):
    g16 = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 54 % 65536).astype(np.uint16)
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(g16).save(tmp_path / name)
        img = read_image(tmp_path / name)
        assert img.shape == (30, 40, 3) and img.dtype == np.float32
        np.testing.assert_allclose(img[..., 0], g16 / 65535.0, atol=1e-7)
        np.testing.assert_array_equal(read_png16(tmp_path / name), g16)


def _write_tiff_rgb16(path: Path, arr: np.ndarray) -> None:
    """A minimal uncompressed little-endian 16-bit RGB TIFF (Pillow cannot write one)."""
    h, w, _ = arr.shape
    data = np.ascontiguousarray(arr, dtype="<u2").tobytes()
    data_off = 16
    ifd_off = data_off + len(data)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, data_off), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_off))
    out += struct.pack("<HHH", 16, 16, 16) + b"\x00\x00" + data
    out += struct.pack("<H", len(tags))
    for tag, typ, cnt, val in tags:
        out += (struct.pack("<HHIHH", tag, typ, cnt, val, 0) if typ == 3 and cnt == 1
                else struct.pack("<HHII", tag, typ, cnt, val))
    out += struct.pack("<I", 0)
    path.write_bytes(bytes(out))


def test_16bit_rgb_tiff(tmp_path):
    rgb16 = np.random.default_rng(1).integers(0, 65536, (9, 13, 3)).astype(np.uint16)
    f = tmp_path / "rgb16.tif"
    _write_tiff_rgb16(f, rgb16)
    img = read_image(f)
    assert img.shape == (9, 13, 3)
    # Pillow decodes 16-bit RGB at 8-bit precision (documented); values must agree to that precision
    np.testing.assert_allclose(img, rgb16 / 65535.0, atol=1.0 / 255 + 1e-6)


def test_webp(photos_dir, tmp_path):
    up = _first_photo_u8(photos_dir)
    Image.fromarray(up).save(tmp_path / "x.webp", quality=95)
    img = read_image(tmp_path / "x.webp")
    assert img.shape == up.shape
    assert np.abs(img - up / 255.0).mean() < 0.02
    Image.fromarray(up).save(tmp_path / "l.webp", lossless=True)
    np.testing.assert_allclose(read_image(tmp_path / "l.webp"), up / 255.0, atol=1e-6)


def test_read_errors_name_the_file(photos_dir, tmp_path):
    src = _photos(photos_dir)[0].read_bytes()
    cases = {
        "missing.png": None,
        "empty.jpg": b"",
        "notes.txt": b"this is not an image\n" * 10,
        "fake.png": b"this is not an image either",
        "truncated.jpg": None,
        "truncated.png": None,
        "corrupt.png": None,
    }
    jpg = tmp_path / "ok.jpg"
    Image.fromarray(_first_photo_u8(photos_dir)).save(jpg, quality=90)
    cases["truncated.jpg"] = jpg.read_bytes()[: len(jpg.read_bytes()) // 2]
    png = tmp_path / "ok.png"
    Image.fromarray(_first_photo_u8(photos_dir)).save(png)
    pb = png.read_bytes()
    cases["truncated.png"] = pb[: len(pb) // 2]
    corrupt = bytearray(pb)
    corrupt[200:400] = b"\x00" * 200  # damaged IDAT data: zlib / CRC failure
    cases["corrupt.png"] = bytes(corrupt)
    assert src  # the real photo was readable as bytes
    for name, content in cases.items():
        f = tmp_path / name
        if content is not None:
            f.write_bytes(content)
        with pytest.raises(ImageReadError) as ei:
            read_image(f)
        assert str(f) in str(ei.value), ei.value
        assert isinstance(ei.value, ValueError)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_read_png16_refuses_8bit(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "g8.png")
    with pytest.raises(ImageReadError, match="16-bit"):
        read_png16(tmp_path / "g8.png")


# ------------------------------------------------------------------------------------------- write_png

def test_write_png_16bit_round_trip_exact(tmp_path):
    rng = np.random.default_rng(2)
    d = rng.integers(0, 65536, (256, 256)).astype(np.uint16)
    d[0, 0], d[0, 1] = 0, 65535
    f = write_png(tmp_path / "displacement.png", d, bits=16)
    np.testing.assert_array_equal(read_png16(f), d)
    with Image.open(f) as im:
        assert im.format == "PNG" and im.mode.startswith("I;16")
    # float input in [0, 1] is quantized to round(x * 65535)
    x = rng.random((17, 23))
    write_png(tmp_path / "f.png", x, bits=16)
    np.testing.assert_array_equal(read_png16(tmp_path / "f.png"), np.rint(x * 65535).astype(np.uint16))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_png_8bit_modes(tmp_path):
    rng = np.random.default_rng(3)
    for shape in [(11, 7), (11, 7, 1), (11, 7, 3), (11, 7, 4)]:
        a = rng.integers(0, 256, shape).astype(np.uint8)
        f = write_png(tmp_path / f"a{len(shape)}_{shape[-1]}.png", a)
        with Image.open(f) as im:
            b = np.asarray(im)
        np.testing.assert_array_equal(b.reshape(a.shape), a)
    x = rng.random((5, 6, 3)).astype(np.float32)
    write_png(tmp_path / "x.png", x)
    np.testing.assert_allclose(read_image(tmp_path / "x.png"), x, atol=0.5 / 255 + 1e-6)
    t = torch.from_numpy(x)
    write_png(tmp_path / "t.png", t)
    assert (tmp_path / "t.png").read_bytes() == (tmp_path / "x.png").read_bytes()


def test_write_png_refuses_bad_input_and_keeps_old_file(tmp_path):
    f = tmp_path / "keep.png"
    good = np.full((4, 4), 7, np.uint8)
    write_png(f, good)
    before = f.read_bytes()
    bad_inputs = [
        (np.full((4, 4), 1.5), 8),                    # out of range float
        (np.full((4, 4), np.nan), 8),                 # NaN
        (np.full((4, 4), 300, np.int32), 8),          # out of range int
        (np.full((4, 4), -1, np.int32), 16),
        (np.zeros((4, 4, 3), np.uint16), 16),         # 16-bit RGB unsupported
        (np.zeros((4, 4, 2), np.uint8), 8),           # bad channel count
        (np.zeros((0, 4), np.uint8), 8),              # empty
        (np.zeros((4, 4), np.bool_), 8),              # ambiguous dtype
        (good, 12),                                   # bad bit depth
    ]
    for arr, bits in bad_inputs:
        with pytest.raises(ValueError):
            write_png(f, arr, bits=bits)
    assert f.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        write_png(tmp_path / "no_such_dir" / "x.png", good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_write_png_is_atomic_on_failure(tmp_path, monkeypatch):
    f = tmp_path / "out.png"
    write_png(f, np.zeros((3, 3), np.uint8))
    before = f.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        write_png(f, np.full((3, 3), 255, np.uint8))
    monkeypatch.undo()
    assert f.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    # permissions follow the umask rather than mkstemp's 0600
    umask = os.umask(0o022)
    os.umask(umask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------- detection

def _check_geometry(lm: np.ndarray, where) -> None:
    """Independent sanity checks of the iBUG-68 layout on an upright face."""
    eye_img_left = lm[36:42].mean(0)   # subject's right eye, on the image's left
    eye_img_right = lm[42:48].mean(0)
    assert lm[36:42, 0].max() < lm[42:48, 0].min(), f"{where}: eyes not left/right"
    lo, hi = sorted([eye_img_left[0], eye_img_right[0]])
    assert lo < lm[30, 0] < hi, f"{where}: nose tip not between the eyes"
    eyes_y = (eye_img_left[1] + eye_img_right[1]) / 2
    assert lm[30, 1] > eyes_y, f"{where}: nose tip above the eyes"
    assert lm[8, 1] > lm[30, 1], f"{where}: chin above the nose tip"
    assert lm[48:68, 1].mean() > lm[30, 1], f"{where}: mouth above the nose tip"
    assert lm[8, 1] > lm[48:68, 1].mean(), f"{where}: chin above the mouth"
    assert lm[0, 0] < lm[16, 0], f"{where}: jaw contour reversed"
    eye_dist = np.linalg.norm(eye_img_right - eye_img_left)
    face_h = lm[8, 1] - lm[27, 1]
    assert 0.4 < eye_dist / face_h < 1.5, f"{where}: implausible proportions {eye_dist / face_h:.2f}"


def test_dlib_finds_faces_in_real_photos(photo_detections, capsys):
    n = len(photo_detections)
    n_hog = sum(1 for _, hog, _ in photo_detections.values() if hog)
    n_full = sum(1 for _, _, full in photo_detections.values() if full)
    with capsys.disabled():
        print(f"\n[frontend] dlib HOG found a face in {n_hog}/{n} photos; with the CNN fallback {n_full}/{n}")
        for p, (_, hog, full) in photo_detections.items():
            if not hog:
                print(f"[frontend]   HOG missed {p.name}; fallback: {full[0].detector if full else 'none'}")
    assert n_hog >= (n + 1) // 2
    assert n_full >= int(np.ceil(0.8 * n))
    assert n_full >= n_hog


def test_landmarks_on_real_photos(photo_detections):
    checked = 0
    for p, (img, _, dets) in photo_detections.items():
        if not dets:
            continue
        h, w = img.shape[:2]
        areas = [d.area for d in dets]
        assert areas == sorted(areas, reverse=True)
        for d in dets:
            assert isinstance(d, FaceDetection) and d.landmarks.shape == (68, 2) and d.box.shape == (4,)
            assert d.detector in ("dlib-hog", "dlib-cnn")
            lm, (x0, y0, x1, y1) = d.landmarks, d.box
            assert x1 > x0 and y1 > y0
            # dlib points are pixel indices + 0.5
            np.testing.assert_allclose(lm - np.floor(lm), 0.5)
            bw, bh = x1 - x0, y1 - y0
            assert (lm[:, 0] > x0 - 0.25 * bw).all() and (lm[:, 0] < x1 + 0.25 * bw).all(), p
            # dlib's HOG boxes end near the mouth: the jaw may extend well below (open mouth)
            assert (lm[:, 1] > y0 - 0.25 * bh).all() and (lm[:, 1] < y1 + 0.5 * bh).all(), p
            assert (lm[17:68, 1] < y1 + 0.25 * bh).all(), p  # brows, eyes, nose, mouth
            m = 0.05 * max(h, w)
            assert (lm[:, 0] > -m).all() and (lm[:, 0] < w + m).all(), p
            assert (lm[:, 1] > -m).all() and (lm[:, 1] < h + m).all(), p
            # the detection box and the landmark extent overlap substantially
            lx0, ly0 = lm.min(0)
            lx1, ly1 = lm.max(0)
            ix = max(0.0, min(x1, lx1) - max(x0, lx0))
            iy = max(0.0, min(y1, ly1) - max(y0, ly0))
            assert ix * iy > 0.5 * (lx1 - lx0) * (ly1 - ly0), p
        _check_geometry(dets[0].landmarks, p)
        checked += 1
    assert checked >= 1


def test_cnn_detector_path(photo_detections):
    """The CNN (MMOD) path on its own, on a photo HOG found: it must find the same face."""
    cnn = DlibDetector(hog=False)
    p, (img, hog, _) = next((p, v) for p, v in photo_detections.items() if v[1])
    dets = cnn.detect(img)
    assert dets and dets[0].detector == "dlib-cnn" and cnn.last_used == "cnn"
    c_cnn = dets[0].landmarks.mean(0)
    c_hog = hog[0].landmarks.mean(0)
    assert np.linalg.norm(c_cnn - c_hog) < 0.1 * (hog[0].box[2] - hog[0].box[0]), p


def test_downscaled_detection_matches_full_resolution(photo_detections):
    """A photo enlarged 4x is detected on a copy downscaled to 800 px; landmarks scale back."""
    p, (img, hog, _) = next((p, v) for p, v in photo_detections.items() if v[1])
    big = np.asarray(Image.fromarray((img * 255).round().astype(np.uint8)).resize(
        (img.shape[1] * 4, img.shape[0] * 4), Image.Resampling.BICUBIC)).astype(np.float32) / 255
    dets = DlibDetector(max_side=400, cnn_fallback=False).detect(big)
    assert dets, p
    ref = hog[0].landmarks * 4  # continuous coordinates scale by exactly 4
    err = np.linalg.norm(dets[0].landmarks - ref, axis=1)
    iod = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
    assert np.median(err) < 0.1 * iod, (np.median(err), iod)
    box_err = np.abs(dets[0].box - hog[0].box * 4).max()
    assert box_err < 0.25 * (hog[0].box[2] - hog[0].box[0]) * 4


def test_two_faces(photo_detections):
    found = sorted(((v[1][0].score, p) for p, v in photo_detections.items() if v[1]), reverse=True)
    if len(found) < 2:
        pytest.skip("fewer than two photos with a HOG face")
    (_, pa), (_, pb) = found[:2]
    a = (photo_detections[pa][0] * 255).round().astype(np.uint8)
    b_img = Image.fromarray((photo_detections[pb][0] * 255).round().astype(np.uint8))
    small = np.asarray(b_img.resize((b_img.width * 2 // 3, b_img.height * 2 // 3), Image.Resampling.LANCZOS))
    pad = 60
    H = max(a.shape[0], small.shape[0]) + 2 * pad
    W = a.shape[1] + small.shape[1] + 3 * pad
    canvas = np.full((H, W, 3), 128, np.uint8)
    canvas[pad:pad + a.shape[0], pad:pad + a.shape[1]] = a
    bx0 = 2 * pad + a.shape[1]
    canvas[pad:pad + small.shape[0], bx0:bx0 + small.shape[1]] = small
    img = canvas.astype(np.float32) / 255

    dets = DlibDetector().detect(img)
    assert len(dets) == 2, [d.box for d in dets]
    assert dets[0].area > dets[1].area
    assert dets[0].landmarks[:, 0].max() < bx0 <= dets[1].landmarks[:, 0].min()
    for d in dets:
        _check_geometry(d.landmarks, "composite")
    assert select_faces(dets) == [dets[0]]
    assert select_faces(dets[::-1], all_faces=False)[0] is dets[0]
    both = select_faces(dets[::-1], all_faces=True)
    assert [d.area for d in both] == [dets[0].area, dets[1].area]
    # the small face's landmarks agree with the ones found on its own photo (scaled by 2/3, shifted)
    ref = photo_detections[pb][1][0].landmarks * (small.shape[1] / b_img.width) + [bx0, pad]
    iod = np.linalg.norm(ref[36:42].mean(0) - ref[42:48].mean(0))
    assert np.median(np.linalg.norm(dets[1].landmarks - ref, axis=1)) < 0.15 * iod


@needs_dlib
def test_blank_image_has_no_face(tmp_path):
    blank = np.full((240, 320, 3), 0.5, np.float32)
    det = DlibDetector()
    assert det.detect(blank) == []
    assert det.last_used is None
    with pytest.raises(NoFaceError, match="no face found in .*blank.png") as ei:
        detect_faces(blank, DlibDetector(cnn_fallback=False), source=tmp_path / "blank.png")
    assert ei.value.path == str(tmp_path / "blank.png")
    with pytest.raises(NoFaceError, match="no face found in x.jpg"):
        select_faces([], source="x.jpg")


def test_get_detector_choices():
    fan_ok, fan_reason = FanDetector.availability()
    dlib_ok, _ = _dlib_availability(need_cnn=True)
    if not fan_ok:
        assert "face_alignment" in fan_reason or "face-alignment" in fan_reason
        with pytest.raises(DetectorUnavailableError, match="face.alignment"):
            get_detector("fan")
    if dlib_ok:
        assert isinstance(get_detector("dlib"), DlibDetector)
    from core.frontend import MediaPipeDetector
    mp_ok = MediaPipeDetector.is_available()
    auto_expected = MediaPipeDetector if mp_ok else FanDetector if fan_ok else DlibDetector
    if mp_ok or fan_ok or dlib_ok:
        assert isinstance(get_detector("auto"), auto_expected)
    with pytest.raises(ValueError):
        get_detector("mtcnn")
    with pytest.raises(DetectorUnavailableError, match="missing"):
        DlibDetector(models_dir="/nonexistent/models")


@pytest.mark.skipif(not FanDetector.is_available(), reason=FanDetector.availability()[1])
def test_fan_on_real_photos(photo_detections):
    fan = FanDetector()
    n = 0
    for p, (img, _, dl) in photo_detections.items():
        dets = fan.detect(img)
        if not dets:
            continue
        n += 1
        _check_geometry(dets[0].landmarks, p)
        if dl:
            iod = np.linalg.norm(dl[0].landmarks[36:42].mean(0) - dl[0].landmarks[42:48].mean(0))
            assert np.median(np.linalg.norm(dets[0].landmarks - dl[0].landmarks, axis=1)) < 0.2 * iod
    assert n >= len(photo_detections) // 2


# ---------------------------------------------------------------------------------------------- crop

def test_crop_from_landmarks_rule():
    rng = np.random.default_rng(4)
    lm = rng.uniform([100, 50], [260, 230], (68, 2))
    lm[0] = [100, 50]
    lm[1] = [260, 230]
    t = crop_from_landmarks(lm)
    old = (160 + 180) / 2 * 1.1
    side = int(old * 1.25)
    assert t.src_size == side and t.center == (180.0, 140.0) and t.size == 224
    np.testing.assert_allclose(t.apply(np.array([[180.0, 140.0]])), [[112, 112]], atol=1e-12)
    corners = np.array([[180 - side / 2, 140 - side / 2], [180 + side / 2, 140 + side / 2],
                        [180 + side / 2, 140 - side / 2]])
    np.testing.assert_allclose(t.apply(corners), [[0, 0], [224, 224], [224, 0]], atol=1e-10)
    np.testing.assert_allclose(t.scale, 224 / side)
    assert t.matrix.dtype == np.float64 and t.matrix.shape == (3, 3)
    np.testing.assert_allclose(t.matrix[2], [0, 0, 1])
    p = rng.uniform(-50, 400, (100, 2))
    np.testing.assert_allclose(t.apply_inverse(t.apply(p)), p, atol=1e-9)
    np.testing.assert_allclose(t.inverse() @ t.matrix, np.eye(3), atol=1e-12)
    # torch points keep dtype/device
    pt = torch.tensor(p, dtype=torch.float32)
    out = t.apply(pt)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), t.apply(p), rtol=1e-5, atol=1e-3)
    # round trip through a stored matrix
    t2 = CropTransform.from_matrix(t.matrix.copy())
    np.testing.assert_allclose(t2.apply(p), t.apply(p))
    # scale parameter
    t3 = crop_from_landmarks(lm, scale=1.0)
    assert t3.src_size == int(old)


def test_crop_from_box_rule():
    t = crop_from_box([10.0, 20.0, 110.0, 140.0])
    old = (100 + 120) / 2
    assert t.center == pytest.approx((60.0, 80.0 + 0.12 * old))
    assert t.src_size == int(old * 1.25)
    np.testing.assert_allclose(t.apply(np.array([t.center])), [[112, 112]])
    with pytest.raises(ValueError):
        crop_from_box([10, 10, 5, 20])
    with pytest.raises(ValueError):
        crop_from_landmarks(np.full((68, 2), np.nan))


def _bilinear_numpy(img: np.ndarray, x: float, y: float) -> np.ndarray:
    """Bilinear sample at continuous (x, y): pixel centres at j + 0.5, zeros outside."""
    h, w = img.shape[:2]
    fx, fy = x - 0.5, y - 0.5
    j0, i0 = int(np.floor(fx)), int(np.floor(fy))
    ax, ay = fx - j0, fy - i0
    out = np.zeros(img.shape[2])
    for di, wy in ((0, 1 - ay), (1, ay)):
        for dj, wx in ((0, 1 - ax), (1, ax)):
            i, j = i0 + di, j0 + dj
            if 0 <= i < h and 0 <= j < w:
                out += wy * wx * img[i, j]
    return out


def test_warp_samples_the_right_pixels():
    rng = np.random.default_rng(5)
    H, W = 180, 260
    img = rng.random((H, W, 3)).astype(np.float64)  # random texture: no interpolation error can hide
    t = CropTransform.from_square((131.3, 77.8), 151, 224)  # partly outside the photo (top)
    out = warp_image(img, t, antialias=False)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float64
    inv = t.inverse()
    for (v, u) in [(0, 0), (112, 112), (5, 200), (223, 223), (100, 17), (60, 150)]:
        x, y, _ = inv @ [u + 0.5, v + 0.5, 1.0]
        np.testing.assert_allclose(out[:, v, u].numpy(), _bilinear_numpy(img, x, y), atol=1e-10)
    # float32 numpy input -> float32 output, same values
    out32 = warp_image(img.astype(np.float32), t, antialias=False)
    assert out32.dtype == torch.float32
    # float32 grid coordinates: sampling positions are off by ~1e-5 px at most
    np.testing.assert_allclose(out32.numpy(), out.numpy(), atol=1e-4)
    # torch (3, H, W) input gives the same result
    out_t = warp_image(torch.from_numpy(img.transpose(2, 0, 1).copy()), t, antialias=False)
    np.testing.assert_allclose(out_t.numpy(), out.numpy(), atol=1e-12)


def test_warp_identity_and_ramp():
    H, W = 224, 224
    rng = np.random.default_rng(6)
    img = rng.random((H, W, 3)).astype(np.float32)
    ident = CropTransform.from_square((112, 112), 224, 224)
    np.testing.assert_allclose(warp_image(img, ident).permute(1, 2, 0).numpy(), img, atol=1e-4)
    np.testing.assert_allclose(warp_image(img.astype(np.float64), ident).permute(1, 2, 0).numpy(), img,
                               atol=1e-9)

    # a linear ramp image f = x / W, g = y / H: bilinear and box filtering are exact on it, so every crop
    # pixel well inside the photo must equal the ramp at its back-projected centre, antialiased or not.
    H, W = 1200, 1600
    xs = (np.arange(W) + 0.5) / W
    ys = (np.arange(H) + 0.5) / H
    ramp = np.stack([np.broadcast_to(xs, (H, W)), np.broadcast_to(ys[:, None], (H, W)),
                     np.full((H, W), 0.25)], -1).astype(np.float64)
    t = CropTransform.from_square((700.0, 610.0), 900, 224)  # ~4x shrink: pooling by 4 kicks in
    inv = t.inverse()
    for aa in (False, True):
        out = warp_image(ramp, t, antialias=aa).numpy()
        v, u = np.mgrid[0:224, 0:224]
        px = inv[0, 0] * (u + 0.5) + inv[0, 2]
        py = inv[1, 1] * (v + 0.5) + inv[1, 2]
        np.testing.assert_allclose(out[0], px / W, atol=1e-9)
        np.testing.assert_allclose(out[1], py / H, atol=1e-9)
        np.testing.assert_allclose(out[2], 0.25, atol=1e-12)


def test_antialias_reduces_aliasing():
    # a one-pixel checkerboard shrunk 4x: point sampling aliases, box prefiltering gives ~0.5
    H = W = 896
    cb = ((np.add.outer(np.arange(H), np.arange(W)) % 2).astype(np.float32))
    img = np.repeat(cb[..., None], 3, axis=2)
    # crop pixel centres land on photo pixel centres 4u + 2.5, all of the same colour: point sampling
    # sees a uniform 0 instead of the true mean 0.5
    t = CropTransform.from_square((448.5, 448.5), 896, 224)
    plain = warp_image(img, t, antialias=False)
    aa = warp_image(img, t, antialias=True)
    # interior only: the outermost crop pixels reach past the photo's edge (zero padding)
    assert (aa[:, 1:-1, 1:-1] - 0.5).abs().max() < 1e-5
    assert (plain[:, 1:-1, 1:-1] - 0.5).abs().min() > 0.45


def test_warp_images_batch_matches_single(photos_dir):
    img = read_image(_photos(photos_dir)[0])
    ts = [CropTransform.from_square((100, 110), 180), CropTransform.from_square((120, 90), 60),
          CropTransform.from_square((30, 30), 800)]
    batch = warp_images(img, ts)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    for i, t in enumerate(ts):
        np.testing.assert_allclose(batch[i].numpy(), warp_image(img, t).numpy(), atol=1e-6)
    # outside the photo: zeros
    assert float(batch[2, :, :, -1].abs().max()) == 0.0
    # a different out_size resamples the same square
    half = warp_image(img, ts[0], out_size=112)
    same = warp_image(img, CropTransform.from_square((100, 110), 180, size=112))
    assert half.shape == (3, 112, 112)
    np.testing.assert_allclose(half.numpy(), same.numpy(), atol=1e-6)


def test_crop_of_real_face_matches_landmarks(photo_detections):
    """The warped crop of a real face puts the landmarks where apply() says: image content around the
    eyes in the crop equals the photo's content at the back-projected points."""
    p, (img, _, dets) = next((p, v) for p, v in photo_detections.items() if v[2])
    t = crop_from_landmarks(dets[0].landmarks)
    crop = warp_image(img, t, antialias=False).permute(1, 2, 0).numpy()
    lmc = t.apply(dets[0].landmarks)
    assert (lmc > 0).all() and (lmc < 224).all()
    # the landmarks' extent is 1/1.375 of the crop side, centred
    ext = (lmc.max(0) - lmc.min(0)).mean()
    assert abs(ext - 224 / 1.375) < 224 / 1.375 * 0.01 + 2
    np.testing.assert_allclose((lmc.max(0) + lmc.min(0)) / 2, [112, 112], atol=224 / t.src_size + 1e-6)
    inv = t.inverse()
    for (x, y) in lmc[::7]:
        u, v = int(x), int(y)
        px, py, _ = inv @ [u + 0.5, v + 0.5, 1]
        np.testing.assert_allclose(crop[v, u], _bilinear_numpy(img, px, py), atol=1e-5)


# ------------------------------------------------------------- FanDetector against a stand-in package
# face_alignment is not installed here; a minimal stand-in with its public API checks the wrapper's
# logic: enum names old and new, coordinates passed through, sorting, and that it never downloads. The
# stand-in lives in memory only (monkeypatch puts it in sys.modules and takes it out again).

_FAKE_FA = """
import enum, os
import numpy as np
import torch.hub
from face_alignment import utils

class LandmarksType(enum.Enum):
    {enum_name} = 1
    THREE_D_ = 3

class FaceAlignment:
    def __init__(self, kind, device="cpu", flip_input=False):
        assert kind.name in ("TWO_D", "_2D"), kind
        self.device = device
        ckpt = os.path.join(torch.hub.get_dir(), "checkpoints")
        for name in ("2DFAN4-cd938726ad.zip", "s3fd-619a316812.pth"):
            if not os.path.exists(os.path.join(ckpt, name)):
                utils.download_url_to_file("https://example.invalid/" + name, os.path.join(ckpt, name))

    def get_landmarks_from_image(self, image, {kwargs}):
        assert image.dtype == np.uint8 and image.ndim == 3
        small = np.stack([np.linspace(10, 30, 68), np.linspace(40, 50, 68)], 1)
        big = np.stack([np.linspace(100, 200, 68), np.linspace(60, 180, 68)], 1)
        boxes = [np.array([8, 38, 32, 52, 0.7]), np.array([95, 50, 205, 190, 0.99])]
        {ret}
"""


def _fake_fa_modules(new_api: bool) -> dict:
    """{name: module} of an in-memory face_alignment stand-in (old or new API)."""
    import importlib.machinery
    import types

    import torch.hub

    pkg = types.ModuleType("face_alignment")
    pkg.__spec__ = importlib.machinery.ModuleSpec("face_alignment", None, is_package=True)
    pkg.__path__ = []
    utils = types.ModuleType("face_alignment.utils")
    utils.__spec__ = importlib.machinery.ModuleSpec("face_alignment.utils", None)
    utils.download_url_to_file = torch.hub.download_url_to_file
    pkg.utils = utils
    kwargs = "return_bboxes=False, return_landmark_score=False" if new_api else "detected_faces=None"
    ret = ("return ([small, big], [None, None], boxes) if return_bboxes else [small, big]" if new_api
           else "return [small, big]")
    return {"face_alignment": pkg, "face_alignment.utils": utils,
            "_source": _FAKE_FA.format(enum_name="TWO_D" if new_api else "_2D", kwargs=kwargs, ret=ret)}


@pytest.fixture
def fake_fa(tmp_path, monkeypatch):
    import sys

    import torch.hub
    from core.frontend import landmarks as lmmod

    from core.frontend import MediaPipeDetector
    # 'auto' prefers MediaPipe: hide it so that these tests see the FAN-then-dlib order behind it
    monkeypatch.setattr(MediaPipeDetector, "availability", classmethod(lambda cls: (False, "hidden by the test")))

    def install(new_api: bool, with_weights: bool):
        mods = _fake_fa_modules(new_api)
        source = mods.pop("_source")
        for name, module in mods.items():
            monkeypatch.setitem(sys.modules, name, module)
        exec(compile(source, "<face_alignment stand-in>", "exec"), mods["face_alignment"].__dict__)
        hub = tmp_path / "hub"
        (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
        if with_weights:
            (hub / "checkpoints" / "2DFAN4-cd938726ad.zip").write_bytes(b"x")
            (hub / "checkpoints" / "s3fd-619a316812.pth").write_bytes(b"x")
        monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
        monkeypatch.setattr(lmmod, "_fan_cache", {})
        return hub / "checkpoints"

    return install


@pytest.mark.parametrize("new_api", [True, False])
def test_fan_wrapper_with_stand_in(fake_fa, new_api):
    fake_fa(new_api, with_weights=True)
    assert FanDetector.availability()[0], FanDetector.availability()[1]
    assert isinstance(get_detector("auto"), FanDetector)
    dets = FanDetector().detect(np.zeros((240, 320, 3), np.float32))
    assert [d.detector for d in dets] == ["fan", "fan"]
    assert dets[0].area > dets[1].area
    np.testing.assert_allclose(dets[0].landmarks[0], [100, 60])  # no offset added to FAN's points
    if new_api:
        np.testing.assert_allclose(dets[0].box, [95, 50, 205, 190])
        assert dets[0].score == pytest.approx(0.99)
    else:  # box from the landmark extent
        np.testing.assert_allclose(dets[0].box, [100, 60, 200, 180])


def test_fan_unavailable_without_weights_and_never_downloads(fake_fa):
    import torch.hub
    ckpt = fake_fa(True, with_weights=False)
    ok, reason = FanDetector.availability()
    assert not ok and str(ckpt) in reason and "2DFAN4" in reason
    with pytest.raises(DetectorUnavailableError, match="weights"):
        get_detector("fan")
    if _dlib_availability(need_cnn=True)[0]:
        assert isinstance(get_detector("auto"), DlibDetector)
    # weights present under other names than the package asks for: construction must refuse to fetch
    (ckpt / "2DFAN4-other.zip").write_bytes(b"x")
    (ckpt / "s3fd-other.pth").write_bytes(b"x")
    assert FanDetector.availability()[0]
    real = torch.hub.download_url_to_file
    with pytest.raises(DetectorUnavailableError, match="wanted to download .*example.invalid"):
        FanDetector().detect(np.zeros((64, 64, 3), np.float32))
    assert torch.hub.download_url_to_file is real  # patch undone
    import face_alignment.utils as fu
    assert fu.download_url_to_file is real
    assert sorted(p.name for p in ckpt.iterdir()) == ["2DFAN4-other.zip", "s3fd-other.pth"]


# ------------------------------------------------------------------------------- large photos (issue 11)

def test_read_image_keep_uint8_is_the_float_result_times_255(photos_dir, tmp_path):
    src = Image.open(_photos(photos_dir)[0]).convert("RGB")
    cases = {"rgb.jpg": src, "gray.png": src.convert("L"), "pal.png": src.convert("P"),
             "bilevel.png": src.convert("1"), "rgba.png": src.convert("RGBA")}
    for name, im in cases.items():
        im.save(tmp_path / name)
        f = read_image(tmp_path / name)
        u = read_image(tmp_path / name, keep_uint8=True)
        if name == "rgba.png":  # composited over white in float: stays float
            assert u.dtype == np.float32 and np.array_equal(u, f)
            continue
        assert u.dtype == np.uint8 and u.shape == f.shape, name
        assert np.array_equal(u.astype(np.float32) / 255.0, f), name


def _whole_photo_warp_float64(photo64: torch.Tensor, t: CropTransform, k: int, pooled: dict) -> np.ndarray:
    """The reference: the whole photo (1, 3, H, W) in float64, zero-padded to a multiple of k, box-averaged
    by k (cached in ``pooled``), sampled by grid_sample at the crop's pixel centres (float64 grid)."""
    H, W = photo64.shape[-2:]
    if k not in pooled:
        x = torch.nn.functional.pad(photo64, (0, (-W) % k, 0, (-H) % k))
        pooled[k] = torch.nn.functional.avg_pool2d(x, k, k) if k > 1 else x
    x = pooled[k]
    h, w = x.shape[-2:]
    inv = t.inverse()
    c = np.arange(t.size) + 0.5
    u, v = np.meshgrid(c, c)
    px = (inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]) / k
    py = (inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]) / k
    grid = torch.from_numpy(np.stack([2 * px / w - 1, 2 * py / h - 1], -1))[None]
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                           align_corners=False)[0].numpy()


def test_crops_of_a_12mp_photo_equal_the_whole_photo_path(photos_dir, tmp_path):
    """warp_images reads only the pixels (or box-averaged blocks) a crop samples; the result must equal
    sampling the whole photo. Bound 1e-4: float32 grid rounding is ~1e-5 px x a pixel-to-pixel step <= 1."""
    big = tmp_path / "big.jpg"
    Image.open(_photos(photos_dir)[0]).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(big)
    u8 = read_image(big, keep_uint8=True)
    assert u8.dtype == np.uint8 and u8.shape == (3000, 4000, 3)
    f32 = read_image(big)
    rot = CropTransform(matrix=np.array([[0.1, 0.03, -150.0], [-0.03, 0.1, -60.0], [0, 0, 1]]), size=224,
                        convention="continuous")
    cases = [(CropTransform.deca_from_square((2000, 1500), 3100, 224), None, 1),  # DECA crop, face fills frame
             (CropTransform.deca_from_square((3900, 150), 700, 224), None, 1),  # partly outside (corner)
             (CropTransform.from_square((2000, 1500), 2700, 640), True, 4),  # a texture crop: box filter by 4
             (CropTransform.from_square((3950, 2950), 1300, 224), True, 5),  # partial blocks at the edge
             (CropTransform.from_square((-900, 1500), 600, 224), True, 2),  # wholly outside: zeros
             (rot, True, 9)]  # rotated (not separable), 1 / scale = 9.58
    photo64 = torch.from_numpy(u8.astype(np.float64) / 255.0).permute(2, 0, 1)[None]
    pooled: dict = {}
    for i, (t, aa, k) in enumerate(cases):
        assert k == (max(1, int(1 / t.scale)) if aa else 1)  # the documented box factor floor(src / size)
        ref = _whole_photo_warp_float64(photo64, t, k, pooled)
        for img in (u8, f32):
            out = warp_image(img, t, antialias=aa)
            assert out.dtype == torch.float32 and out.shape == (3, t.size, t.size)
            assert np.abs(out.numpy() - ref).max() < 1e-4, (t.matrix, k)
        assert (np.abs(ref).max() == 0.0) == (i == 4)  # only the wholly-outside crop is all zeros
