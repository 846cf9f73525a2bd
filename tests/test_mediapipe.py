"""MediaPipe front end on real photos: detection, the 68 iBUG points from the mesh, head pose, confidence,
large photos and the result keys. Needs the ``mediapipe`` package (setup.sh installs it)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.frontend import (FaceConfidenceWarning, LowConfidenceError, MediaPipeDetector, NoFaceError,
                           check_detection, detect_faces, get_detector, read_image)
from core.frontend.head_pose import canonical_face_model, head_pose_from_mesh
from core.frontend.landmarks import _dlib_availability
from core.frontend.mesh68 import MESH68_INDICES, MESH68_WEIGHTS, mesh_to_ibug68

pytestmark = pytest.mark.skipif(not MediaPipeDetector.is_available(), reason=MediaPipeDetector.availability()[1])


def _photos(photos_dir: Path) -> list[Path]:
    ps = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not ps:
        pytest.skip(f"no photos in {photos_dir}")
    return ps


@pytest.fixture(scope="module")
def mp_detector():
    return MediaPipeDetector().load()


@pytest.fixture(scope="module")
def mp_results(photos_dir, mp_detector):
    """{path: (uint8 image, detections)} for every shared photo."""
    out = {}
    for p in _photos(photos_dir):
        img = np.rint(read_image(p) * 255).astype(np.uint8)
        out[p] = (img, mp_detector.detect(img))
    return out


def _extent(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """DECA's crop box of 68 points: centre and size (before the 1.1 and 1.25 factors)."""
    lo, hi = lm.min(0), lm.max(0)
    return (lo + hi) / 2.0, float(((hi - lo).sum()) / 2.0)


def test_auto_is_mediapipe():
    assert isinstance(get_detector("auto"), MediaPipeDetector)
    assert isinstance(get_detector("mediapipe"), MediaPipeDetector)


def test_every_shared_photo_gets_one_face(mp_results):
    for p, (img, dets) in mp_results.items():
        assert len(dets) == 1, p
        d = dets[0]
        assert d.detector == "mediapipe" and 0.5 <= d.score <= 1.0
        assert d.dense.shape == (478, 3)
        np.testing.assert_allclose(d.landmarks, mesh_to_ibug68(d.dense[:, :2]))
        # the mesh lies inside the detector's box grown by 20 % (both from independent models)
        x0, y0, x1, y1 = d.box
        m = 0.2 * max(x1 - x0, y1 - y0)
        assert (d.dense[:, 0] > x0 - m).all() and (d.dense[:, 0] < x1 + m).all(), p
        assert (d.dense[:, 1] > y0 - m).all() and (d.dense[:, 1] < y1 + m).all(), p
        # iris centres (468, 473) lie between the eye corners of their eye
        for iris, (a, b) in ((468, (33, 133)), (473, (362, 263))):
            lo, hi = sorted((d.dense[a, 0], d.dense[b, 0]))
            assert lo < d.dense[iris, 0] < hi, p
        rec = d.record()
        assert rec["detected_landmarks_dense"].shape == (478, 3)
        assert set(rec) >= {"detector_score", "landmark_confidence", "head_yaw"}


def test_mesh68_map_is_affine_and_in_range():
    assert MESH68_INDICES.shape == MESH68_WEIGHTS.shape == (68, 3)
    assert MESH68_INDICES.min() >= 0 and MESH68_INDICES.max() < 468
    np.testing.assert_allclose(MESH68_WEIGHTS.sum(1), 1.0, atol=1e-12)
    rng = np.random.default_rng(0)
    mesh = rng.normal(size=(478, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = 2.5 * mesh @ q.T + np.array([3.0, -1.0, 7.0])
    np.testing.assert_allclose(mesh_to_ibug68(moved), 2.5 * mesh_to_ibug68(mesh) @ q.T + [3.0, -1.0, 7.0],
                               atol=1e-10)


@pytest.mark.skipif(not _dlib_availability()[0], reason=_dlib_availability()[1])
def test_mesh68_crop_agrees_with_dlib(mp_results):
    """DECA was trained on crops from 68 points: the crop box from the mesh's 68 lands near dlib's.
    Measured on the 9 shared photos: median centre 1.9 %, median |size| 2.2 % of the box size."""
    from core.frontend import DlibDetector
    dl = DlibDetector().load()
    dc, ds = [], []
    for p, (img, dets) in mp_results.items():
        ref = dl.detect(img)
        assert ref, p
        (c1, s1), (c2, s2) = _extent(dets[0].landmarks), _extent(ref[0].landmarks)
        dc.append(np.linalg.norm(c1 - c2) / s2)
        ds.append(abs(s1 - s2) / s2)
    assert np.median(dc) <= 0.02 and np.median(ds) <= 0.03, (np.round(dc, 3), np.round(ds, 3))


def test_large_photo_in_a_4000x3000_frame(mp_results, mp_detector):
    """A shared photo scaled x6 into a 4000x3000 frame: the same face, its points scaled and moved."""
    p, (img, dets) = next(iter(mp_results.items()))
    k, off = 6.0, np.array([1900.0, 700.0])
    big = np.asarray(Image.fromarray(img).resize((img.shape[1] * 6, img.shape[0] * 6), Image.Resampling.BICUBIC))
    frame = np.full((3000, 4000, 3), 90, np.uint8)
    frame[700:700 + big.shape[0], 1900:1900 + big.shape[1]] = big
    found = mp_detector.detect(frame)
    assert len(found) == 1
    expected = dets[0].landmarks * k + off
    size = _extent(expected)[1]
    err = np.linalg.norm(found[0].landmarks - expected, axis=1) / size
    assert np.median(err) < 0.02 and err.max() < 0.06, (np.median(err), err.max())


@pytest.mark.parametrize("size", [(4000, 3000), (1600, 1200)])
def test_mesh_from_the_detector_copy_matches_the_photo_path(photos_dir, mp_detector, size):
    """The fast path (`mesh_from_detect_copy`, the mesh crop cut from the detector's 640-px copy) against the
    reference (cut from the photo) on every shared photo scaled to ``size``: it is taken, and the 68 points
    move by at most 2 % of the face box (median over photos at most 0.5 %), DECA's crop centre by at most 1 %
    of the box and its scale by at most 1 %. For scale: the reference itself moves up to 1.2 % of the box
    when the 4000-px photo is resized to 4004 px."""
    from core.frontend.crop import crop_from_landmarks

    ref = MediaPipeDetector(mesh_from_detect_copy=False)
    calls = []
    real_mesh = MediaPipeDetector._mesh

    class Spy(MediaPipeDetector):
        def _mesh(self, img, box, small=None):
            calls.append(img.shape[:2])
            return real_mesh(self, img, box, small)

    fast = Spy()
    worst, lmk_err = [], []
    for p in _photos(photos_dir):
        img = np.asarray(Image.open(p).convert("RGB").resize(size, Image.Resampling.BICUBIC))
        calls.clear()
        a, b = fast.detect(img), ref.detect(img)
        assert len(a) == len(b) == 1, p
        assert (size[1] * 640 // size[0], 640) in calls, (p, calls)  # the crop came from the 640-px copy
        a, b = a[0], b[0]
        box = max(b.box[2] - b.box[0], b.box[3] - b.box[1])
        err = np.abs(a.landmarks - b.landmarks).max() / box
        lmk_err.append(err)
        ca, cb = crop_from_landmarks(a.landmarks, size=224), crop_from_landmarks(b.landmarks, size=224)
        centre = np.abs(ca.inverse()[:2, :2] @ [112, 112] + ca.inverse()[:2, 2]
                        - cb.inverse()[:2, :2] @ [112, 112] - cb.inverse()[:2, 2]).max() / box
        worst.append((p.name, err, centre, abs(ca.scale / cb.scale - 1)))
        assert err <= 0.02 and centre <= 0.01 and abs(ca.scale / cb.scale - 1) <= 0.01, worst[-1]
        assert abs(a.confidence - b.confidence) <= 0.02, (p, a.confidence, b.confidence)
    assert np.median(lmk_err) <= 0.005, worst


def test_mesh_path_unchanged_for_photos_the_detector_sees_whole(mp_results, mp_detector):
    """A photo no larger than ``detect_side`` has no downscaled copy: both settings give identical points."""
    ref = MediaPipeDetector(mesh_from_detect_copy=False)
    for p, (img, dets) in list(mp_results.items())[:3]:
        assert max(img.shape[:2]) <= mp_detector.detect_side
        np.testing.assert_array_equal(ref.detect(img)[0].dense, dets[0].dense)


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


@pytest.mark.parametrize("angles", [(0, 0, 0), (60, 0, 0), (-80, 10, 0), (30, -20, 45), (-10, 25, -90)])
def test_head_pose_recovers_known_rotations(angles):
    canon, _ = canonical_face_model()
    yup = 12.0 * canon @ _rot(*angles).T + np.array([300.0, -200.0, 0.0])
    photo = yup * np.array([1.0, -1.0, -1.0])  # y-up, z-to-viewer -> photo x right, y down, z away
    pose = head_pose_from_mesh(photo)
    np.testing.assert_allclose([pose.yaw, pose.pitch, pose.roll], angles, atol=1e-6)
    assert pose.scale == pytest.approx(12.0) and pose.residual < 1e-9


def test_head_yaw_ignores_in_plane_rotation(mp_results, mp_detector):
    """Rotating a photo by 90 deg changes the roll, not the yaw. Measured: median |change| 4 deg; one
    photo looking up 30 deg (image03786) moves 36 deg, so the yaw is an estimate, not a measurement."""
    diffs = []
    for p, (img, dets) in mp_results.items():
        rot = mp_detector.detect(np.ascontiguousarray(np.rot90(img)))
        assert rot, p
        diffs.append(abs(rot[0].yaw - dets[0].yaw))
    assert np.median(diffs) < 10.0 and max(diffs) < 45.0, np.round(diffs, 1)


def test_confidence_warns_refuses_and_forces(mp_results):
    img, dets = next(iter(mp_results.values()))
    d = dets[0]
    assert d.confidence >= 0.5 and abs(d.yaw) < 45  # the shared photos are near-frontal
    assert check_detection(dataclasses.replace(d, warnings=[])) == []
    turned = dataclasses.replace(d, yaw=75.0, confidence=d.score * (90 - 75) / 45, warnings=[])
    assert turned.confidence >= 0.3
    with pytest.warns(FaceConfidenceWarning, match="yaw \\+75"):
        check_detection(turned, source="a.jpg")
    assert "yaw +75" in turned.record()["landmark_warnings"]
    profile = dataclasses.replace(d, yaw=-85.0, confidence=d.score * 5 / 45, warnings=[])
    with pytest.raises(LowConfidenceError, match="a.jpg.*--force"):
        check_detection(profile, source="a.jpg")
    with pytest.warns(FaceConfidenceWarning):
        msgs = check_detection(profile, force=True, source="a.jpg")
    assert len(msgs) == 2 and "--force" in msgs[0]


def test_foreshortened_face_is_refused_not_reconstructed(mp_results, mp_detector):
    """A strong turn foreshortens the face horizontally: squeezed to 35 % width (cos 70 deg) every
    shared photo is refused (no face) rather than turned into a confident frontal head. The half-face
    proxy (cut at the nose) is NOT caught: MediaPipe fits a whole face at 24-46 deg (see the issue note)."""
    for p, (img, dets) in mp_results.items():
        h, w = img.shape[:2]
        sq = np.asarray(Image.fromarray(img).resize((int(w * 0.35), h), Image.Resampling.LANCZOS))
        frame = np.zeros_like(img)
        x0 = (w - sq.shape[1]) // 2
        frame[:, x0:x0 + sq.shape[1]] = sq
        found = mp_detector.detect(frame)
        for d in found:  # should a face be found, it must not pass silently
            with pytest.warns(FaceConfidenceWarning):
                check_detection(d, force=True)
        with pytest.raises((NoFaceError, LowConfidenceError)):
            for d in detect_faces(frame, mp_detector, source=p):
                check_detection(d)


@pytest.mark.slow
def test_cli_reconstruct_uses_mediapipe_by_default(tmp_path_factory, test_flame_pkl, deca_data_dir, photos_dir):
    """`deca-blender reconstruct` (default detector) on every shared photo: one result folder each, saying
    mediapipe, with the dense points, confidence and yaw; the 68 detected points are the mesh's."""
    import io
    import json
    from contextlib import redirect_stdout

    from core.cli import main as cli_main
    from core.results.result import ReconstructionResult
    from pipeline_support import random_checkpoint_home

    home = random_checkpoint_home(tmp_path_factory, test_flame_pkl, deca_data_dir)
    out = tmp_path_factory.mktemp("mp_out")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli_main(["reconstruct", str(photos_dir), "--out", str(out), "--home", str(home), "--device", "cpu",
                       "--wrinkle-samples", "8", "--json"])
    assert rc == 0
    summary = json.loads(buf.getvalue())
    photos = _photos(photos_dir)
    assert len(summary["succeeded"]) == len(photos) and not summary["failed"]
    for s in summary["succeeded"]:
        res = ReconstructionResult.load(s["folder"])
        assert str(res.extra["detector"]) == "mediapipe"
        dense = res.extra["detected_landmarks_dense"]
        assert dense.shape == (478, 3) and dense.dtype == np.float32
        np.testing.assert_allclose(res.detected_landmarks, mesh_to_ibug68(dense[:, :2].astype(np.float64)),
                                   atol=1e-3)
        assert 0.5 <= float(res.extra["landmark_confidence"]) <= 1.0
        assert abs(float(res.extra["head_yaw"])) < 45


# ------------------------------------------------------------------------------ FLAME embedding

def test_embedding_file_is_sane():
    from core.frontend.flame_embedding import load_mediapipe_embedding
    emb = load_mediapipe_embedding()
    assert len(emb.mediapipe_index) == len(set(emb.mediapipe_index.tolist())) >= 120
    assert not set(emb.mediapipe_index.tolist()) & {10, 152, 234, 454}  # no face-oval points
    assert {468, 473} <= set(emb.mediapipe_index.tolist())  # iris centres
    assert emb.face_index.min() >= 0 and emb.face_index.max() < 9976
    assert (emb.bary >= 0).all()


def test_embedding_accuracy_on_test_model_renders(test_flame):
    """Heads of the TEST model with random shape, expression, jaw and head pose, painted and rendered;
    MediaPipe's points against our embedding's points projected by the same camera (512 px for 32 cm,
    1.6 px per mm). Measured on these 12 heads x 126 points: median 2.7 px = 1.7 mm, 95th percentile
    8.7 px = 5.4 mm (the mean head alone, at views not used for the derivation: 0.8 / 2.4 mm)."""
    import torch

    from core.flame.layer import FlameLayer
    from core.frontend.flame_embedding import load_mediapipe_embedding
    from core.testmodels.painted_head import render_painted

    emb = load_mediapipe_embedding()
    layer = FlameLayer(test_flame).double()
    faces = np.asarray(test_flame.faces, np.int64)
    rng = np.random.default_rng(7)
    det = MediaPipeDetector()
    errs_px, errs_mm = [], []
    for _ in range(12):
        shape = torch.as_tensor(rng.normal(size=(1, 100)))
        # half a sigma: the test model's expression basis is random smooth bumps that MediaPipe's face
        # prior does not follow (at 1 sigma the brows alone are off by 4 mm; see the embedding README)
        exp = torch.as_tensor(rng.normal(size=(1, 50)) * 0.5)
        pose = torch.zeros(1, 6, dtype=torch.float64)
        pose[0, 3] = rng.uniform(0.0, 0.15)  # jaw opening
        v = layer(shape, exp, pose).vertices[0].numpy()
        r = render_painted(v, faces, yaw_deg=rng.uniform(-25, 25), pitch_deg=rng.uniform(-12, 12))
        found = det.detect(r.image)
        assert len(found) == 1
        ours = r.project(emb.points(v, faces))
        d = np.linalg.norm(found[0].dense[emb.mediapipe_index, :2] - ours, axis=1)
        errs_px.append(d)
        errs_mm.append(d / r.pixels_per_metre * 1000.0)
    px, mm = np.concatenate(errs_px), np.concatenate(errs_mm)
    print(f"embedding error: median {np.median(px):.2f} px = {np.median(mm):.2f} mm, "
          f"p95 {np.percentile(px, 95):.2f} px = {np.percentile(mm, 95):.2f} mm")
    assert np.median(mm) < 2.3 and np.percentile(mm, 95) < 7.0


# ------------------------------------------------------------------------------ skin masks

def test_skin_mask_outlines_are_mediapipes_connection_cycles():
    from mediapipe.python.solutions import face_mesh_connections as c

    from core.frontend import skin_mask as sm
    for outline, edges in ((sm.FACE_OVAL, c.FACEMESH_FACE_OVAL), (sm.RIGHT_EYE, c.FACEMESH_RIGHT_EYE),
                           (sm.LEFT_EYE, c.FACEMESH_LEFT_EYE)):
        und = {frozenset(e) for e in edges}
        cyc = {frozenset((outline[i], outline[(i + 1) % len(outline)])) for i in range(len(outline))}
        assert cyc == und
    lips = {frozenset(e) for e in c.FACEMESH_LIPS}
    outer = {frozenset((sm.LIPS_OUTER[i], sm.LIPS_OUTER[(i + 1) % 20])) for i in range(20)}
    assert outer <= lips
    for brow, edges in ((sm.RIGHT_EYEBROW, c.FACEMESH_RIGHT_EYEBROW), (sm.LEFT_EYEBROW, c.FACEMESH_LEFT_EYEBROW)):
        assert set(brow) == {i for e in edges for i in e}


def test_skin_mask_on_real_photos(mp_results):
    from core.frontend.skin_mask import FACE_OVAL, skin_mask
    open_eyes = 0
    # (the oval also covers hair or a hand over the face: MediaPipe's mesh does not see occluders)
    for p, (img, dets) in mp_results.items():
        m = dets[0].dense
        mask = skin_mask(m, img.shape[:2])
        pix = lambda i: mask[int(m[i, 1]), int(m[i, 0])]  # noqa: E731
        assert pix(4) and pix(101) and pix(330) and pix(151), p  # nose tip, both upper cheeks, forehead
        for iris, top, bottom in ((468, 159, 145), (473, 386, 374)):  # open eyes: the iris is not skin
            if np.linalg.norm(m[top, :2] - m[bottom, :2]) > 3.0:  # (closed lids are skin)
                assert not pix(iris), p
                open_eyes += 1
        mouth = (m[13, :2] + m[14, :2]) / 2
        assert not mask[int(mouth[1]), int(mouth[0])], p
        for brow in ((46, 53, 52, 65, 55, 70, 63, 105, 66, 107), (276, 283, 282, 295, 285, 300, 293, 334, 296, 336)):
            c = m[list(brow), :2].mean(0)  # inside the eyebrow
            assert not mask[int(c[1]), int(c[0])], p
        # against the oval's own area (shoelace): skin is most of it, not all of it
        o = m[list(FACE_OVAL), :2]
        area = 0.5 * abs(np.dot(o[:, 0], np.roll(o[:, 1], 1)) - np.dot(o[:, 1], np.roll(o[:, 0], 1)))
        assert 0.7 < mask.sum() / area < 0.95, (p, mask.sum() / area)
    assert open_eyes >= 12  # of 18: the check above is not vacuous


@pytest.mark.parametrize("yaw", [60, 70, 75, 80, 85, -65, -80])
def test_strong_profile_render_is_refused_or_warned(yaw):
    """A true profile: FLAME's mean head rendered (painted) at a strong yaw. MediaPipe's own yaw saturates
    near 50 deg there, so the turn ratio must catch it: no face, a refusal, or at least a warning."""
    from core.flame.template import read_template_obj
    from core.testmodels.painted_head import render_painted

    t = read_template_obj(Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "deca" / "head_template.obj")
    img = render_painted(t.vertices, t.faces, yaw_deg=yaw).image
    try:
        dets = detect_faces(img, MediaPipeDetector(), source=f"yaw{yaw}.png")
    except NoFaceError:
        return
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            check_detection(dets[0], source=f"yaw{yaw}.png")
        except LowConfidenceError:
            return  # refused
    assert any(issubclass(w.category, FaceConfidenceWarning) for w in caught)  # else at least warned


@pytest.mark.parametrize("yaw", [0, 20, -30, 40])
def test_moderate_turns_pass_without_warning(yaw):
    from core.flame.template import read_template_obj
    from core.testmodels.painted_head import render_painted

    t = read_template_obj(Path(__file__).resolve().parents[1].parent / "shared" / "assets" / "deca" / "head_template.obj")
    d = detect_faces(render_painted(t.vertices, t.faces, yaw_deg=yaw).image, MediaPipeDetector())[0]
    assert check_detection(d) == [] and d.confidence > 0.5


def test_mediapipe_loads_without_matplotlib_and_its_drawing_helpers_still_import(photos_dir):
    """The package import skips mediapipe's drawing helpers (they pull in matplotlib.pyplot, ~0.3 s of a cold
    start); detection works, and the real helpers can still be imported afterwards. In a fresh process."""
    import subprocess
    import sys
    photo = _photos(photos_dir)[0]
    code = (
        "import sys, numpy as np\n"
        "from core.frontend import MediaPipeDetector, read_image\n"
        f"dets = MediaPipeDetector().load().detect(read_image({str(photo)!r}, keep_uint8=True))\n"
        "print('faces', len(dets), 'matplotlib', 'matplotlib' in sys.modules)\n"
        "import mediapipe as mp\n"
        "import mediapipe.python.solutions.drawing_utils as du\n"
        "print('real', callable(getattr(du, 'draw_landmarks', None)), mp.solutions.drawing_utils is du)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert "faces 1 matplotlib False" in out, out
    assert "real True True" in out, out
