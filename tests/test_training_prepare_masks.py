"""``deca-train prepare``'s skin masks from MediaPipe's dense mesh (``--skin-mask auto|mesh|landmarks``).

The photos are ``../shared/photos`` made small (400 px) to stay quick; the detections the masks are compared
with are this test's own (MediaPipe gives the same mesh for the same pixels), mapped into the crop and the
full image through the matrices ``prepare`` stored, by a plain homogeneous product written here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training_fixtures import one_thread  # noqa: F401  (shared fixtures)


def half_parser(crop: np.ndarray) -> np.ndarray:
    """A stand-in face parser (``--face-parser tests_module:half_parser``): the crop's left half."""
    out = np.zeros(crop.shape[:2])
    out[:, : crop.shape[1] // 2] = 1.0
    return out


class _NoMesh:
    """MediaPipe's detections without their dense mesh: a detector such as dlib or FAN, same 68 points."""

    name = "no-mesh"

    def __init__(self, det):
        self.det = det

    def detect(self, image):
        found = self.det.detect(image)
        for f in found:
            f.dense = None
        return found


@pytest.fixture(scope="module")
def mediapipe():
    from core.frontend import DetectorUnavailableError, get_detector

    try:
        return get_detector("mediapipe")
    except DetectorUnavailableError as e:  # pragma: no cover - the venv has it
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def photos(photos_dir, tmp_path_factory):
    from PIL import Image

    found = sorted(p for p in photos_dir.glob("*") if p.name.startswith(("alfw", "image0")))[:2]
    if len(found) < 2:
        pytest.skip("needs the alfw*/image0* photos in ../shared/photos")
    src = tmp_path_factory.mktemp("photos")
    (src / "person").mkdir()
    for i, p in enumerate(found):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((400, 400))
            im.save(src / "person" / f"photo{i}.png")
    return src


def _apply(matrix: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ np.asarray(matrix, np.float64).T
    return h[:, :2] / h[:, 2:]


def _samples(out: Path) -> list[tuple[Path, dict]]:
    res = []
    for npz in sorted(out.glob("person/*.npz")):
        with np.load(npz, allow_pickle=False) as z:
            res.append((npz, {k: z[k] for k in z.files}))
    return res


def test_mesh_masks_are_the_detections_mesh_in_the_crop(photos, mediapipe, tmp_path):
    from core.frontend import detect_faces, read_image
    from core.frontend.skin_mask import skin_mask
    from training.data import IdentityDataset
    from training.prepare import prepare_dataset

    rep = prepare_dataset(photos, tmp_path / "ds", detector_obj=mediapipe)  # skin_mask="auto"
    assert rep.written == 2 and rep.skin_mask_sources == {"mesh": 2}
    info = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert info["skin_mask_option"] == "auto" and info["skin_mask_sources"] == {"mesh": 2}
    assert "dense mesh" in info["skin_mask"]
    samples = _samples(tmp_path / "ds")
    assert len(samples) == 2
    for npz, z in samples:
        assert str(z["skin_mask_source"]) == "mesh"
        face = detect_faces(read_image(Path(str(z["source"]))), mediapipe)[0]
        crop_mesh = _apply(z["crop_matrix"], face.dense[:, :2])
        expected = skin_mask(crop_mesh, (224, 224))
        assert 0.15 < expected.mean() < 0.7  # a face, not an empty or full mask
        np.testing.assert_array_equal(z["skin_mask"].astype(bool), expected, err_msg=npz.name)
        # the full image's mask: the same mesh in its pixels (photo -> crop -> full)
        full_mesh = _apply(np.linalg.inv(z["full_matrix"]), crop_mesh)
        np.testing.assert_array_equal(z["full_skin_mask"].astype(bool), skin_mask(full_mesh, (320, 320)))
    # what training reads: the crop's mask as stored
    ds = IdentityDataset(tmp_path / "ds")
    np.testing.assert_array_equal(ds[ds.all_samples()[0]]["skin_mask"][0].numpy().astype(bool),
                                  samples[0][1]["skin_mask"].astype(bool))


def test_fallback_option_and_parser(photos, mediapipe, tmp_path):
    from core.frontend import CropTransform, read_image, warp_image
    from training.prepare import SkinMaskError, prepare_dataset, skin_mask_from_landmarks

    def check_landmark_masks(out: Path, n: int) -> None:
        samples = _samples(out)
        assert len(samples) == n
        for npz, z in samples:
            assert str(z["skin_mask_source"]) == "landmarks"
            # the crop as prepare cut it (float, before the PNG's rounding), then the landmark heuristic
            tf = CropTransform.from_matrix(z["crop_matrix"], size=224)
            crop = warp_image(read_image(Path(str(z["source"]))), tf).permute(1, 2, 0).numpy().astype(np.float32)
            np.testing.assert_array_equal(z["skin_mask"].astype(bool), skin_mask_from_landmarks(crop, z["landmarks"]))
        info = json.loads((out / "dataset.json").read_text())
        assert info["skin_mask"] == "landmarks + colour statistics" and info["skin_mask_sources"] == {"landmarks": n}

    # auto with a detector that has no dense mesh: the landmark + colour path, as before
    rep = prepare_dataset(photos, tmp_path / "auto", detector_obj=_NoMesh(mediapipe))
    assert rep.skin_mask_sources == {"landmarks": 2}
    check_landmark_masks(tmp_path / "auto", 2)
    # asked for explicitly with MediaPipe: landmarks even though the mesh is there
    prepare_dataset(photos, tmp_path / "lm", detector_obj=mediapipe, skin_mask="landmarks")
    check_landmark_masks(tmp_path / "lm", 2)
    # 'mesh' without a mesh: a clear error, nothing half-written
    with pytest.raises(SkinMaskError, match="--skin-mask mesh needs MediaPipe"):
        prepare_dataset(photos, tmp_path / "mesh", detector_obj=_NoMesh(mediapipe), skin_mask="mesh")
    assert not list((tmp_path / "mesh").glob("**/*.npz"))
    with pytest.raises(ValueError, match="skin_mask must be one of"):
        prepare_dataset(photos, tmp_path / "x", detector_obj=mediapipe, skin_mask="parser")
    # a face parser overrides the mesh
    rep = prepare_dataset(photos, tmp_path / "fp", detector_obj=mediapipe, skin_mask="mesh",
                          face_parser="test_training_prepare_masks:half_parser")
    assert rep.skin_mask_sources == {"face parser": 2}
    for _, z in _samples(tmp_path / "fp"):
        assert str(z["skin_mask_source"]) == "face parser"
        np.testing.assert_array_equal(z["skin_mask"], half_parser(np.zeros((224, 224, 3))).astype(np.uint8))
    info = json.loads((tmp_path / "fp" / "dataset.json").read_text())
    assert info["skin_mask"] == "face parser test_training_prepare_masks:half_parser"


def test_cli_skin_mask_option(photos, mediapipe, tmp_path, capsys):
    from training.cli import main

    out = tmp_path / "cli"
    assert main(["prepare", "--photos", str(photos), "--out", str(out), "--detector", "mediapipe",
                 "--skin-mask", "landmarks"]) == 0
    assert "wrote 2 image(s) of 1 identity" in capsys.readouterr().out
    info = json.loads((out / "dataset.json").read_text())
    assert (info["detector"], info["skin_mask_option"], info["skin_mask_sources"]) == \
        ("mediapipe", "landmarks", {"landmarks": 2})
    assert {str(z["skin_mask_source"]) for _, z in _samples(out)} == {"landmarks"}
