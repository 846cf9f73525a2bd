"""End to end: every photo in ../shared/photos through `Reconstructor` and the CLI, with the TEST FLAME model
and a random-weight checkpoint saved in the official layout and installed through the asset manager.

Random weights give meaningless faces; these tests check plumbing, files, shapes, conventions of the
written data, error handling and batching, not quality. The wrinkle model uses few samples here (speed).
"""
from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.assets import AssetManager, MissingAssetError
from core.cli import main as cli_main
from core.frontend import read_png16
from core.networks import CheckpointError, build_deca_networks
from core.results import encodings as enc
from core.pipeline.reconstruct import OUTPUT_FILES, Reconstructor
from core.results.result import ReconstructionResult
from core.obj import read_obj
from pipeline_support import random_checkpoint_home

WRINKLE = dict(wrinkle_samples=16, wrinkle_holdout=4)


@pytest.fixture(scope="module")
def home(tmp_path_factory, test_flame_pkl, deca_data_dir) -> Path:
    return random_checkpoint_home(tmp_path_factory, test_flame_pkl, deca_data_dir)


@pytest.fixture(scope="module")
def rec(home) -> Reconstructor:
    return Reconstructor(AssetManager(home), device="cpu", landmarks="dlib", **WRINKLE)


@pytest.fixture(scope="module")
def real_photos(photos_dir) -> list[Path]:
    photos = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not photos:
        pytest.skip(f"no photos in {photos_dir}")
    return photos


@pytest.fixture(scope="module")
def extras(tmp_path_factory, real_photos) -> dict[str, Path]:
    """Photos in other formats made from a real one, a photo without a face and a corrupt file."""
    d = tmp_path_factory.mktemp("extras")
    src = Image.open(real_photos[0]).convert("RGB")
    big = src.resize((src.width * 2, src.height * 2), Image.Resampling.BICUBIC)
    out = {}
    g16 = (np.asarray(big.convert("L"), np.float64) * 257).astype(np.uint16)
    out["gray16"] = d / "gray16.png"
    Image.fromarray(g16).save(out["gray16"])
    rgba = big.convert("RGBA")
    out["rgba"] = d / "rgba.webp"
    rgba.save(out["rgba"], lossless=True)
    # stored rotated, with EXIF orientation 6 (rotate 90 CW to view): upright it is `src` (224x224 -> use
    # a non-square crop so the orientation matters)
    wide = big.crop((0, 40, big.width, big.height - 40))
    stored = wide.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif"] = d / "exif_rotated.jpg"
    stored.save(out["exif"], exif=exif.tobytes(), quality=95)
    out["exif_upright_hw"] = (wide.height, wide.width)
    yy, xx = np.mgrid[0:200, 0:300]
    out["noface"] = d / "noface.png"
    Image.fromarray((np.stack([xx % 256, yy, (xx + yy) % 256], -1)).astype(np.uint8)).save(out["noface"])
    out["corrupt"] = d / "corrupt.jpg"
    out["corrupt"].write_bytes(real_photos[0].read_bytes()[:300])
    return out


@pytest.fixture(scope="module")
def batch(rec, real_photos, extras, tmp_path_factory):
    """One batched run over the photos folder and the extra photos."""
    out = tmp_path_factory.mktemp("batch_out")
    inputs = [real_photos[0].parent] + [extras[k] for k in ("gray16", "rgba", "exif", "noface", "corrupt")]
    events = []
    summary = rec.reconstruct_many(inputs, out, batch_size=8, progress=lambda f, m: events.append((f, m)))
    return summary, out, events


def _by_photo(summary) -> dict[str, Path]:
    return {Path(s.photo).name: Path(s.folder) for s in summary.succeeded}


EXPECTED_SHAPES = {
    "shape": (100,), "exp": (50,), "pose": (6,), "cam": (3,), "tex": (50,), "light": (9, 3), "detail": (128,),
    "vertices": (5023, 3), "landmarks2d": (68, 2), "landmarks3d": (68, 3), "detected_landmarks": (68, 2),
    "crop_matrix": (3, 3), "faces": (9976, 3), "uv_coords": (5118, 2), "uv_faces": (9976, 3),
    "rig_template": (5023, 3), "rig_expr_basis": (5023, 3, 50), "rig_posedirs": (5023, 3, 36),
    "rig_weights": (5023, 5), "rig_joints": (5, 3), "rig_parents": (5,), "displacement": (256, 256),
    "rig_shape_basis": (5023, 3, 20),
}


def test_every_photo_gives_a_complete_result_folder(batch, real_photos, extras):
    summary, out, events = batch
    got = _by_photo(summary)
    expected = [p.name for p in real_photos] + [extras[k].name for k in ("gray16", "rgba", "exif")]
    assert sorted(got) == sorted(expected), summary.to_dict()
    assert summary.n_photos == len(real_photos) + 5
    assert events and events[-1][0] == pytest.approx(1.0)
    for name, folder in got.items():
        assert folder.parent == out and folder.is_dir()
        for f in OUTPUT_FILES:
            assert (folder / f).is_file(), f"{folder / f} missing"
        assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"
        res = ReconstructionResult.load(folder)
        for key, shape in EXPECTED_SHAPES.items():
            assert np.shape(getattr(res, key)) == shape, (key, np.shape(getattr(res, key)))
        assert res.wrinkles.base.shape == (256, 256) and res.wrinkles.maps.shape == (16, 256, 256)
        assert res.wrinkles.matrix.shape == (16, 53)
        assert -1.0 < res.wrinkles.explained_variance <= 1.0
        assert res.is_test_model and "TEST" in res.flame_model and "sha256:" in res.flame_model
        assert res.source_image.endswith(name) and res.face_index == 0
        np.testing.assert_array_equal(res.rig_parents, [-1, 0, 1, 1, 1])
        assert res.rig_shape_basis.dtype == np.float16  # identity sliders' basis, 0.6 MB
        assert str(res.extra["albedo_source"]) == "photo_texture"
        np.testing.assert_array_equal(res.tex, 0)
        with np.load(folder / "result.npz", allow_pickle=False) as z:
            assert int(z["schema_version"]) == 1 and float(z["displacement_scale"]) > 0
        h, w = (int(v) for v in res.image_size)
        with Image.open(res.source_image) as im:
            assert im.size in ((w, h), (h, w))
        # detected landmarks are on the photo
        lm = res.detected_landmarks
        assert lm[:, 0].min() > -1 and lm[:, 0].max() < w + 1 and lm[:, 1].min() > -1 and lm[:, 1].max() < h + 1
        # images
        for fname, size in (("texture.png", 512), ("albedo.png", 512)):
            with Image.open(folder / fname) as im:
                assert im.mode == "RGB" and im.size == (size, size)
        with Image.open(folder / "albedo.png") as a, Image.open(folder / "texture.png") as t:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(t))  # no texture space installed
        q = read_png16(folder / "displacement.png")
        assert q.shape == (256, 256) and q.dtype == np.uint16
        back = enc.decode_displacement_png(q, res.displacement_scale)
        assert np.abs(back - res.displacement).max() <= res.displacement_scale / 65535 * 1.01
        with Image.open(folder / "detail_normals.png") as im:
            assert im.mode == "RGB" and im.size == (256, 256)
            n = np.asarray(im, np.float64) / 255 * 2 - 1
        inside = np.linalg.norm(n, axis=-1) > 0.5
        assert inside.mean() > 0.5
        assert np.abs(np.linalg.norm(n[inside], axis=-1) - 1).max() < 0.03
        with Image.open(folder / "overlay.png") as im:
            assert im.mode == "RGB" and 224 <= im.size[0] == im.size[1] <= 640
        m = read_obj(folder / "mesh.obj")
        v, vt, f, ft = m.vertices, m.uv_coords, m.faces, m.uv_faces
        np.testing.assert_allclose(v, res.vertices, atol=1e-6)
        np.testing.assert_allclose(vt, res.uv_coords, atol=1e-6)
        np.testing.assert_array_equal(f, res.faces)
        np.testing.assert_array_equal(ft, res.uv_faces)
        assert "map_Kd texture.png" in (folder / "mesh.mtl").read_text()


def test_photos_without_a_face_or_unreadable_are_reported_and_the_batch_goes_on(batch, extras):
    summary, out, _ = batch
    failed = {Path(f.photo).name: f for f in summary.failed}
    assert set(failed) == {extras["noface"].name, extras["corrupt"].name}, summary.to_dict()
    assert failed[extras["noface"].name].error_type == "NoFaceError"
    assert "no face found" in failed[extras["noface"].name].message
    assert failed[extras["corrupt"].name].error_type == "ImageReadError"
    assert "corrupt.jpg" in failed[extras["corrupt"].name].message
    assert not summary.ok
    d = json.loads(json.dumps(summary.to_dict()))
    assert d["n_failed"] == 2 and d["n_faces"] == len(summary.succeeded)


def test_exif_orientation_grayscale_and_rgba_are_read(batch, extras):
    summary, _, _ = batch
    got = _by_photo(summary)
    res = ReconstructionResult.load(got[extras["exif"].name])
    assert tuple(int(v) for v in res.image_size) == extras["exif_upright_hw"]
    for key in ("gray16", "rgba"):
        res = ReconstructionResult.load(got[extras[key].name])
        assert tuple(int(v) for v in res.image_size) == (448, 448)


def test_a_folder_gives_the_same_as_individual_calls(rec, batch, real_photos, tmp_path):
    summary, _, _ = batch
    got = _by_photo(summary)
    for photo in real_photos[:3]:
        folders = rec.reconstruct_photo(photo, tmp_path)
        assert len(folders) == 1 and folders[0].name == photo.stem
        a = ReconstructionResult.load(folders[0])
        b = ReconstructionResult.load(got[photo.name])
        for key in ("shape", "exp", "pose", "cam", "light", "detail", "vertices", "landmarks2d", "displacement",
                    "rig_template"):
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-4, atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(a.detected_landmarks, b.detected_landmarks)
        np.testing.assert_array_equal(a.crop_matrix, b.crop_matrix)
        np.testing.assert_allclose(a.wrinkles.matrix, b.wrinkles.matrix, rtol=1e-3, atol=1e-4)


def test_decode_displacement_is_the_exact_decoder(rec, batch):
    summary, _, _ = batch
    res = ReconstructionResult.load(summary.succeeded[0].folder)
    d = rec.decode_displacement(res, res.exp, res.pose[3:])
    assert d.shape == (256, 256) and d.dtype == np.float32
    np.testing.assert_allclose(d, res.displacement, atol=1e-6)
    other = rec.decode_displacement(res, np.zeros(50), np.array([0.3, 0.0, 0.0]))
    assert np.abs(other - d).max() > 1e-6
    # the wrinkle model approximates the same quantity (same units, same fixed map outside the mask)
    approx = res.wrinkles.evaluate(np.zeros(50), np.array([0.3, 0.0, 0.0]))
    mask = rec.face_model.uv_face_eye_mask[0, 0].numpy() > 0
    np.testing.assert_allclose(approx[~mask], other[~mask], atol=1e-6)
    with pytest.raises(ValueError, match="50 expression"):
        rec.decode_displacement(res, np.zeros(10), np.zeros(3))


def test_bf16_encoders_keep_the_decoder_exact(rec, real_photos, tmp_path):
    fast = Reconstructor(device="cpu", landmarks=rec.detector, face_assets=rec.face_assets, networks=rec.networks,
                         bf16=True, **WRINKLE)
    res = ReconstructionResult.load(fast.reconstruct_photo(real_photos[0], tmp_path)[0])
    assert bool(res.extra["bf16"])
    np.testing.assert_allclose(rec.decode_displacement(res, res.exp, res.pose[3:]), res.displacement, atol=1e-6)


def test_existing_results_are_never_overwritten_silently(rec, real_photos, tmp_path):
    photo = real_photos[1]
    first = rec.reconstruct_photo(photo, tmp_path)[0]
    stamp = (first / "result.npz").stat().st_mtime_ns
    second = rec.reconstruct_photo(photo, tmp_path)[0]
    assert first.name == photo.stem and second.name == f"{photo.stem}-2"
    assert (first / "result.npz").stat().st_mtime_ns == stamp
    third = rec.reconstruct_photo(photo, tmp_path, overwrite=True)[0]
    assert third == first and (first / "result.npz").stat().st_mtime_ns != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([photo.stem, f"{photo.stem}-2"])


def test_all_faces_gives_one_folder_per_face_largest_first(rec, real_photos, tmp_path):
    a = Image.open(real_photos[0]).convert("RGB")
    b = Image.open(real_photos[3]).convert("RGB")
    b = b.resize((int(b.width * 0.8), int(b.height * 0.8)), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (a.width + b.width + 40, max(a.height, b.height)), (128, 128, 128))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width + 40, 20))
    photo = tmp_path / "two faces.png"
    canvas.save(photo)
    out = tmp_path / "out"
    one = rec.reconstruct_photo(photo, out)
    assert [f.name for f in one] == ["two_faces"]
    both = rec.reconstruct_photo(photo, out, all_faces=True)
    assert [f.name for f in both] == ["two_faces-2", "two_faces-2_face1"]  # never overwrite the first run
    r0, r1 = (ReconstructionResult.load(f) for f in both)
    assert (r0.face_index, r1.face_index) == (0, 1)
    assert r0.detected_landmarks[:, 0].mean() < a.width < r1.detected_landmarks[:, 0].mean()  # largest first
    np.testing.assert_allclose(r0.detected_landmarks, ReconstructionResult.load(one[0]).detected_landmarks)


def test_the_pipeline_package_and_result_stay_free_of_torch():
    import subprocess
    import sys

    code = ("import sys; import core.pipeline, core.results.result, core.commands.reconstruct; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_unwritable_output_is_refused_before_any_work(rec, real_photos, tmp_path):
    from core.pipeline.reconstruct import OutputDirError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputDirError):
        rec.reconstruct_many([real_photos[0]], blocker / "out")
    with pytest.raises(OutputDirError):
        rec.reconstruct_photo(real_photos[0], blocker)


def test_animate_transfers_expression_and_jaw(rec, batch, real_photos, extras, tmp_path):
    summary, _, _ = batch
    got = _by_photo(summary)
    ident, e1, e2 = real_photos[0], real_photos[1], real_photos[2]
    anim = rec.animate(ident, [e1, extras["noface"], e2], tmp_path)
    assert [Path(f["expression_source"]).name for f in anim.frames] == [e1.name, e2.name]
    assert [Path(f.photo).name for f in anim.failed] == [extras["noface"].name]
    manifest = json.loads((tmp_path / "animation.json").read_text())
    assert [f["folder"] for f in manifest["frames"]] == [f["folder"] for f in anim.frames]
    A = ReconstructionResult.load(got[ident.name])
    for frame, src in zip(anim.frames, (e1, e2)):
        B = ReconstructionResult.load(got[src.name])
        F = ReconstructionResult.load(frame["folder"])
        for f in OUTPUT_FILES:
            assert (Path(frame["folder"]) / f).is_file()
        np.testing.assert_allclose(F.shape, A.shape, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(F.detail, A.detail, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(F.cam, A.cam, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(F.pose[:3], A.pose[:3], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(F.exp, B.exp, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(F.pose[3:], B.pose[3:], rtol=1e-4, atol=1e-5)
        assert str(F.extra["expression_source"]) == str(src)
        # the detail map was re-decoded for this frame: A's detail code with B's expression and jaw
        np.testing.assert_allclose(F.displacement, rec.decode_displacement(A, B.exp, B.pose[3:]), atol=2e-6)
        np.testing.assert_allclose(F.wrinkles.matrix, A.wrinkles.matrix, rtol=1e-3, atol=1e-4)  # A's model
    assert not np.allclose(ReconstructionResult.load(anim.frames[0]["folder"]).displacement, A.displacement)


def test_a_checkpoint_of_another_architecture_is_refused(home, tmp_path):
    bad_home = tmp_path / "home"
    shutil.copytree(home, bad_home, ignore=shutil.ignore_patterns("deca_model.tar"))
    nets = build_deca_networks()
    sds = {n: getattr(nets, n).state_dict() for n in ("E_flame", "E_detail", "D_detail")}
    sds["D_detail"]["l1.0.weight"] = torch.zeros(8192, 180)  # a decoder with another input size
    (bad_home / "deca").mkdir(exist_ok=True)
    torch.save(sds, bad_home / "deca" / "deca_model.tar")
    with pytest.raises(CheckpointError, match=r"deca_model\.tar.*l1\.0\.weight"):
        Reconstructor(AssetManager(bad_home), device="cpu")


def test_missing_assets_are_listed(tmp_path):
    with pytest.raises(MissingAssetError) as info:
        Reconstructor(AssetManager(tmp_path / "empty"), device="cpu")
    msg = str(info.value)
    assert "deca_model.tar" in msg and "generic_model.pkl" in msg and "head_template.obj" in msg


def _cli(args: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli_main(args)
    return code, buf.getvalue()


def test_cli_reconstruct_and_exit_codes(home, real_photos, extras, tmp_path, capsys):
    common = ["--home", str(home), "--device", "cpu", "--landmarks", "dlib", "--wrinkle-samples", "8"]
    code, out = _cli(["reconstruct", str(real_photos[0]), str(extras["noface"]), "--out", str(tmp_path / "o"),
                      "--json", *common])
    assert code == 1
    info = json.loads(out)
    assert info["n_faces"] == 1 and info["n_failed"] == 1 and info["failed"][0]["error_type"] == "NoFaceError"
    assert all((Path(info["succeeded"][0]["folder"]) / f).is_file() for f in OUTPUT_FILES)
    code, out = _cli(["reconstruct", str(real_photos[1]), "--out", str(tmp_path / "o"), *common])
    assert code == 0 and "1 result folder(s)" in out
    # animate: identity + one expression photo
    code, out = _cli(["animate", "--identity", str(real_photos[0]), "--expressions", str(real_photos[2]),
                      "--out", str(tmp_path / "anim"), "--json", *common])
    assert code == 0 and len(json.loads(out)["frames"]) == 1
    # missing assets: exit 2 with the asset manager's message
    code, _ = _cli(["reconstruct", str(real_photos[0]), "--out", str(tmp_path / "o2"), "--home",
                    str(tmp_path / "nohome")])
    assert code == 2 and "deca_model.tar" in capsys.readouterr().err
    # unwritable output: exit 2 before loading anything
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, _ = _cli(["reconstruct", str(real_photos[0]), "--out", str(blocker), *common])
    assert code == 2 and "output" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(home, real_photos, tmp_path):
    cpu = Reconstructor(AssetManager(home), device="cpu", landmarks="dlib", **WRINKLE)
    gpu = Reconstructor(AssetManager(home), device="cuda", landmarks="dlib", **WRINKLE)
    a = ReconstructionResult.load(cpu.reconstruct_photo(real_photos[0], tmp_path / "cpu")[0])
    b = ReconstructionResult.load(gpu.reconstruct_photo(real_photos[0], tmp_path / "gpu")[0])
    for key in ("shape", "exp", "pose", "cam", "detail", "vertices", "landmarks2d"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-2, atol=1e-3, err_msg=key)
    np.testing.assert_allclose(a.displacement, b.displacement, atol=1e-4)
