"""Unit tests of the training package: config, data layout and sampling, losses (including the
detail-consistency loss), the perceptual losses' loaders, skin masks, prepare, synthetic data.

Everything runs on the CPU with the synthetic FLAME-format TEST model; tests needing ``../shared`` skip
without it. The end-to-end runs (coarse training, resume, torchrun, detail stage, export) are in
``test_training_runs.py``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import (SECTIONS, ConfigError, TrainingConfig, config_from_dict, load_config)
from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(face, tmp_path_factory):
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), face,
                                  SyntheticSpec(n_identities=3, images_per_identity=3, seed=5))


# ----------------------------------------------------------------------------------------------- config

def test_config_defaults_yaml_and_unknown_keys(tmp_path):
    cfg = config_from_dict({})
    assert cfg.stage == "coarse" and cfg.optim.lr == 1e-4
    # DECA's paper weights
    assert (cfg.loss.lmk, cfg.loss.eye, cfg.loss.pho, cfg.loss.id, cfg.loss.sc) == (1.0, 1.0, 2.0, 0.2, 1.0)
    assert (cfg.loss.reg_shape, cfg.loss.reg_exp) == (1e-4, 1e-4)
    assert (cfg.loss.pho_detail, cfg.loss.mrf, cfg.loss.sym, cfg.loss.dc, cfg.loss.reg_detail) == (2.0, 5e-2, 5e-3, 1.0, 5e-3)

    p = tmp_path / "c.yaml"
    p.write_text("stage: detail\ndata:\n  root: /x\n  images_per_identity: 3\nloss:\n  sym: 1e-3\n")
    cfg = load_config(p, ["train.max_steps=7", "model.encoder_trainable_layers=layer4"])
    assert cfg.stage == "detail" and cfg.data.root == "/x" and cfg.data.images_per_identity == 3
    assert cfg.loss.sym == 1e-3 and cfg.train.max_steps == 7 and cfg.model.encoder_trainable_layers == "layer4"
    assert (cfg.data.identities_per_batch, cfg.model.bn_mode) == (6, "train")  # the release preset's detail batch
    # the preset follows loss.formulas: paper alone brings back the paper set-up, explicit keys still win
    cfg = config_from_dict({"stage": "detail", "loss": {"formulas": "paper", "lip": 0.25}})
    assert (cfg.data.identities_per_batch, cfg.data.images_per_identity, cfg.model.bn_mode) == (8, 4, "frozen")
    assert (cfg.loss.lip, cfg.loss.reg_light, cfg.loss.reg_shading) == (0.25, 0.0, 0.0)
    cfg = config_from_dict({"stage": "pretrain"})
    assert (cfg.loss.formulas, cfg.data.identities_per_batch, cfg.data.images_per_identity) == ("release", 64, 1)
    assert (cfg.loss.lip, cfg.loss.reg_light, cfg.mrf.layers, cfg.mrf.layer_weights) == (0.5, 1.0, ["relu3_1", "relu4_1"],
                                                                                       [1.0, 2.0])

    p.write_text("data:\n  identites_per_batch: 2\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'data.identites_per_batch'.*did you mean 'identities_per_batch'"):
        load_config(p)
    p.write_text("trian:\n  max_steps: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        load_config(p)
    with pytest.raises(ConfigError, match="stage"):
        config_from_dict({"stage": "fine"})
    with pytest.raises(ConfigError, match="expected an integer"):
        config_from_dict({"train": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match="encoder_trainable_layers"):
        config_from_dict({"model": {"encoder_trainable_layers": "layer9"}})


def test_every_option_is_documented():
    doc = (REPO / "docs" / "training.md").read_text()
    missing = []
    for f in dataclasses.fields(TrainingConfig):
        if f.name in SECTIONS:
            for g in dataclasses.fields(SECTIONS[f.name]):
                if f"`{f.name}.{g.name}`" not in doc:
                    missing.append(f"{f.name}.{g.name}")
        elif f"`{f.name}`" not in doc:
            missing.append(f.name)
    assert not missing, f"options not documented in docs/training.md: {missing}"


def test_learning_rate_schedule_is_warm_up_then_the_decay():
    import math

    from training.trainer import learning_rate

    def lr(step, **o):
        return learning_rate(config_from_dict({"optim": {"lr": 2e-3, **o}}).optim, step, max_steps=100)

    assert [lr(s) for s in (0, 50, 99)] == [2e-3] * 3  # default: constant, as DECA's released code
    # cosine from step 70 (0.7 x 100) to 0.1x: untouched before, half-way at 85, 0.1 x (1 + ~0) at the last step
    cos = {"decay": "cosine", "decay_start": 0.7, "decay_to": 0.1}
    assert [lr(s, **cos) for s in (0, 69, 70)] == [2e-3] * 3
    assert lr(85, **cos) == pytest.approx(2e-3 * 0.55, rel=1e-12)
    assert lr(99, **cos) == pytest.approx(2e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 29 / 30))), rel=1e-12)
    step = {"decay": "step", "decay_start": 0.75, "decay_to": 0.2}
    assert [lr(s, **step) for s in (74, 75, 99)] == [2e-3, pytest.approx(4e-4, rel=1e-12), pytest.approx(4e-4, rel=1e-12)]
    # the warm-up multiplies: step s gets (s + 1) / warmup_steps of it
    assert lr(4, warmup_steps=10, **step) == pytest.approx(1e-3, rel=1e-12)
    for bad in ({"decay": "linear"}, {"decay_start": 1.0}, {"decay_to": 1.5}):
        with pytest.raises(ConfigError, match="optim.decay"):
            config_from_dict({"optim": bad})


def test_example_configs_load():
    files = sorted((REPO / "training" / "configs").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        load_config(f)


# ------------------------------------------------------------------------------------------------- data

def test_dataset_layout_and_sampler(synth):
    from training.data import IdentityBatchSampler, IdentityDataset, collate

    ds = IdentityDataset(synth)
    assert ds.n_identities == 3 and len(ds) == 9
    item = ds[ds.all_samples()[0]]
    assert item["image"].shape == (3, 224, 224) and item["image"].dtype == torch.float32
    assert item["landmarks"].shape == (68, 2) and item["skin_mask"].shape == (1, 224, 224)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert "gt_shape" in item and item["gt_light"].shape == (9, 3)

    s = IdentityBatchSampler(ds, identities_per_batch=2, images_per_identity=2, seed=3)
    it = iter(s)
    batches = [next(it) for _ in range(5)]
    for b in batches:  # K images per identity, grouped identity-major, distinct images
        assert len(b) == 4
        assert b[0].identity == b[1].identity and b[2].identity == b[3].identity and b[0].identity != b[2].identity
        assert b[0].image != b[1].image
    batch = collate([ds[x] for x in batches[0]])
    assert batch["image"].shape == (4, 3, 224, 224) and batch["identity"].tolist()[0] == batches[0][0].identity

    # resuming at a position reproduces the batches from there
    s2 = IdentityBatchSampler(ds, 2, 2, seed=3, start_epoch=2, start_batch=0)  # 1 batch per epoch
    assert next(iter(s2)) == batches[2]

    # DDP: the ranks' batches together are the single-process batch with world_size x identities
    single = IdentityBatchSampler(ds, 2, 2, seed=3, world_size=1)
    ranks = [IdentityBatchSampler(ds, 1, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for e in range(3):
        assert single.batch_samples(e, 0) == ranks[0].batch_samples(e, 0) + ranks[1].batch_samples(e, 0)


def test_augmentation_moves_landmarks_with_the_image(synth):
    from training.data import IdentityDataset, Sample

    ds = IdentityDataset(synth, scale_jitter=0.2, shift_jitter=0.1)
    plain = ds[Sample(0, 0, 0)]
    aug = ds[Sample(0, 0, 12345)]
    again = ds[Sample(0, 0, 12345)]
    assert torch.equal(aug["image"], again["image"])  # seeded
    assert not torch.allclose(aug["landmarks"], plain["landmarks"])
    # the skin mask's centroid moves like the landmarks' centroid
    def centroid(m):
        ys, xs = torch.nonzero(m[0] > 0.5, as_tuple=True)
        return torch.stack([xs.float().mean(), ys.float().mean()]) + 0.5
    d_mask = centroid(aug["skin_mask"]) - centroid(plain["skin_mask"])
    d_lmk = aug["landmarks"].mean(0) - plain["landmarks"].mean(0)
    assert torch.allclose(d_mask, d_lmk, atol=3.0), (d_mask, d_lmk)


def test_release_crop_is_the_released_box_with_its_scale_range(face, synth):
    """data.crop=release against DECA's released crop written out here: box of the full image's landmarks,
    old_size = (w + h) / 2, side old_size * scale (scale in [1.4, 1.8]), centred; image, mask, landmarks and
    the ground-truth camera follow."""
    from scipy import ndimage

    from core.frontend import read_image
    from core.render import ndc_to_pixels
    from training.data import IdentityDataset, Sample

    ds = IdentityDataset(synth, crop="release")
    png = ds.files[1][2]
    with np.load(png.with_suffix(".npz")) as z:
        full_lm = z["full_landmarks"].astype(np.float64)
        gt = {k: torch.from_numpy(z[f"gt_{k}"])[None] for k in ("shape", "exp", "pose")}
    full = read_image(png.with_name(png.stem + ".full.png")).astype(np.float64)
    left, top = full_lm.min(0)
    right, bottom = full_lm.max(0)
    old_size = (right - left + bottom - top) / 2.0
    centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    scales = []
    for seed in (0, 7, 12345, 2 ** 31 + 5):
        item = ds[Sample(1, 2, seed)]
        lm = item["landmarks"].double().numpy()
        # the crop square, read back from where the landmarks went: side and centre in full-image pixels
        k = (lm[:, 0].max() - lm[:, 0].min()) / (right - left)  # crop px per full px
        side = 224.0 / k
        scales.append(side / old_size)
        origin = centre - side / 2.0
        assert np.abs(lm - (full_lm - origin) * k).max() < 1e-3, seed  # centred on the box, no rotation
        # the pixels: bilinear samples of the full image at the crop's pixel centres (interior, away from edges)
        c = (np.arange(224) + 0.5) / k
        xs, ys = np.meshgrid(origin[0] + c - 0.5, origin[1] + c - 0.5)
        ref = np.stack([ndimage.map_coordinates(full[..., ch], [ys, xs], order=1, mode="constant") for ch in range(3)])
        got = item["image"].double().numpy()
        inner = (slice(None), slice(8, -8), slice(8, -8))
        assert np.abs(got[inner] - ref[inner]).max() < 1e-4, seed
        # the ground-truth camera follows the crop: the true mesh lands on the crop's landmarks
        g = face.geometry(gt["shape"], gt["exp"], gt["pose"], item["gt_cam"][None])
        assert (ndc_to_pixels(g.landmarks2d, 224)[0] - item["landmarks"]).abs().max() < 2e-3, seed
        # the skin mask moves with the face: most of it lies inside the landmarks' box
        m = item["skin_mask"][0].numpy() > 0.5
        ys_, xs_ = np.nonzero(m)
        inside = (xs_ >= lm[:, 0].min() - 3) & (xs_ <= lm[:, 0].max() + 3) & (ys_ >= lm[:, 1].min() - 60) & (ys_ <= lm[:, 1].max() + 3)
        assert m.sum() > 1000 and inside.mean() > 0.95
    assert abs(scales[0] - 1.6) < 1e-3  # seed 0 (evaluation): the middle of the range
    assert len({round(s, 4) for s in scales}) == 4
    drawn = [ds.crop_of(full_lm, seed).src_size / old_size for seed in range(1, 400)]
    assert 1.4 <= min(drawn) < 1.42 and 1.78 < max(drawn) <= 1.8
    # "fixed" reads the stored crop unchanged
    fixed = IdentityDataset(synth, crop="fixed")[Sample(1, 2, 99)]
    assert np.array_equal(fixed["image"].permute(1, 2, 0).numpy(), read_image(png))


def test_release_crop_without_full_images_says_what_to_do(tmp_path):
    from training.data import DatasetError, IdentityDataset, Sample, write_sample

    img = np.full((224, 224, 3), 0.5, dtype=np.float32)
    write_sample(tmp_path / "p", "a", img, np.random.default_rng(0).uniform(50, 170, (68, 2)), np.zeros((224, 224)))
    with pytest.raises(DatasetError, match=r"data.crop: fixed"):
        IdentityDataset(tmp_path, crop="release")[Sample(0, 0, 1)]
    assert IdentityDataset(tmp_path, crop="fixed")[Sample(0, 0, 1)]["image"].shape == (3, 224, 224)


def test_manifest_indexes_without_walking_the_folder(synth, monkeypatch, tmp_path):
    import shutil

    from training.data import IdentityDataset, read_manifests, write_manifest

    listed = IdentityDataset.list_folder(Path(synth))
    assert read_manifests(synth) == listed and sum(map(len, listed.values())) == 9
    copy = tmp_path / "copy"
    shutil.copytree(synth, copy)
    # shards' manifests are read as one; a sample outside every manifest is not part of the set
    (copy / "manifest.json").unlink()
    items = [(i, n) for i, names in listed.items() for n in names]
    write_manifest(copy, items[:4], "manifest.0of2.json")
    write_manifest(copy, items[4:8], "manifest.1of2.json")

    def no_walk(self):
        raise AssertionError(f"listed {self}")

    monkeypatch.setattr(Path, "iterdir", no_walk)
    monkeypatch.setattr(Path, "rglob", no_walk)
    ds = IdentityDataset(copy)
    assert ds.indexed_by == "manifest" and len(ds) == 8
    assert [p.relative_to(copy).as_posix() for f in ds.files for p in f] == [f"{i}/{n}.png" for i, n in items[:8]]
    monkeypatch.undo()
    for m in copy.glob("manifest*.json"):
        m.unlink()
    old = IdentityDataset(copy)  # a folder prepared before manifests: listed once
    assert old.indexed_by == "listing" and len(old) == 9
    (copy / "manifest.json").write_text("{}")
    from training.data import DatasetError

    with pytest.raises(DatasetError, match="manifest"):
        IdentityDataset(copy)


def test_worker_processes_give_the_same_batches(synth):
    from training.config import DataConfig
    from training.data import IdentityBatchSampler, IdentityDataset, collate, worker_init

    assert DataConfig().num_workers == 2 and DataConfig().crop == "release"  # the released loader's defaults
    ds = IdentityDataset(synth, crop="release")
    got = {}
    for workers in (0, 2):
        sampler = IdentityBatchSampler(ds, 2, 2, seed=4, augment=ds.augments)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                             worker_init_fn=worker_init)
        it = iter(loader)
        got[workers] = [next(it) for _ in range(3)]
        del it, loader
    for a, b in zip(got[0], got[2]):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k
    # the re-crop differs between epochs: each draw its own scale
    assert not torch.equal(got[0][0]["crop_matrix"], got[0][2]["crop_matrix"])


def test_synthetic_landmarks_match_ground_truth_codes(face, synth):
    from core.render import ndc_to_pixels
    from training.data import IdentityDataset, collate

    ds = IdentityDataset(synth)
    b = collate([ds[s] for s in ds.all_samples()[:3]])
    g = face.geometry(b["gt_shape"], b["gt_exp"], b["gt_pose"], b["gt_cam"])
    assert torch.allclose(ndc_to_pixels(g.landmarks2d, 224), b["landmarks"], atol=1e-3)
    # framed like DECA's crop: landmarks inside the crop, face covering a good part of it
    assert float(b["landmarks"].min()) > 10 and float(b["landmarks"].max()) < 214
    assert 0.2 < float(b["skin_mask"].mean()) < 0.7


# ----------------------------------------------------------------------------------------------- losses

def test_landmark_and_closure_losses():
    from training.losses import EYE_PAIRS, eye_closure_loss, landmark_loss

    t = torch.rand(2, 68, 2)
    assert torch.all(landmark_loss(t, t) == 0)
    shifted = t + torch.tensor([0.1, -0.2])
    assert torch.allclose(landmark_loss(shifted, t), torch.full((2,), 0.3))
    assert torch.allclose(eye_closure_loss(shifted, t), torch.zeros(2), atol=1e-6)  # translation-invariant
    closed = t.clone()
    for i, j in EYE_PAIRS:
        closed[:, j] = closed[:, i]
    assert torch.all(eye_closure_loss(closed, t) > 0)
    w = torch.zeros(68)
    w[0] = 1.0
    assert torch.allclose(landmark_loss(shifted, t, w), torch.full((2,), 0.3))


def test_identity_swap_index_stays_within_identity():
    from training.losses import identity_swap_index

    ids = torch.tensor([4, 4, 4, 7, 7, 9])
    sw = identity_swap_index(ids, seed=0, step=3)
    assert torch.equal(ids[sw], ids)
    assert sw[5] == 5 and torch.all(sw[:5] != torch.arange(5))
    # a group's swap does not depend on the rest of the batch (DDP ranks hold different groups)
    sub = identity_swap_index(ids[3:5], seed=0, step=3)
    assert torch.equal(sub + 3, sw[3:5])


def test_photometric_and_detail_regularizers():
    from training.losses import displacement_regularizer, photometric_loss, symmetry_loss

    a = torch.rand(2, 3, 8, 8)
    m = torch.ones(2, 1, 8, 8)
    assert torch.all(photometric_loss(a, a, m) == 0)
    assert torch.allclose(photometric_loss(a + 0.1, a, m), torch.full((2,), 0.1))
    assert torch.all(photometric_loss(a + 0.1, a, torch.zeros_like(m)) == 0)
    sym = torch.rand(1, 1, 16, 8)
    sym = torch.cat([sym, sym.flip(-1)], -1)
    mask = torch.ones(1, 1, 16, 16)
    assert float(symmetry_loss(sym, mask)) == 0.0
    assert float(symmetry_loss(torch.rand(1, 1, 16, 16), mask)) > 0
    assert float(displacement_regularizer(torch.zeros(1, 1, 16, 16), mask)) == 0.0
    assert float(displacement_regularizer(torch.full((1, 1, 16, 16), -0.002), mask)) == pytest.approx(0.002)


@pytest.fixture(scope="module")
def detail_setup(face):
    """Images rendered with a (random, seeded) D_detail from two people's detail codes."""
    from core.networks import DetailDecoder, FlameCodes
    from training.losses import detail_render
    from training.synthetic import SyntheticSpec, sample_codes

    torch.manual_seed(0)
    dec = DetailDecoder().eval()
    c = sample_codes(face, SyntheticSpec(n_identities=2, images_per_identity=2, seed=11), np.random.default_rng(11))
    codes = FlameCodes(shape=c["shape"], tex=c["tex"], exp=c["exp"], pose=c["pose"], cam=c["cam"], light=c["light"])
    person = torch.randn(2, 128) * 3.0
    detail = person[c["identity"]]  # identical codes within a person
    with torch.no_grad():
        g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
        r, uv_z = detail_render(face, dec, codes, g.vertices, detail)
    images = r.image.clone()
    return {"dec": dec, "codes": codes, "verts": g.vertices, "detail": detail, "images": images,
            "mask": torch.ones_like(images[:, :1]), "identity": c["identity"], "uv_z": uv_z, "base": r}


def test_detail_consistency_loss_zero_for_identical_codes_grows_when_swapped(face, detail_setup):
    from training.losses import detail_consistency_loss, identity_swap_index

    s = detail_setup
    assert float(s["uv_z"].abs().max()) > 1e-4  # the decoder produces visible details
    same = identity_swap_index(s["identity"], seed=0, step=0)  # swaps within each person
    assert torch.all(same != torch.arange(4))
    with torch.no_grad():
        args = (face, s["dec"], s["codes"], s["verts"])
        l_same = detail_consistency_loss(*args, s["detail"], same, s["images"], s["mask"])
        cross = torch.tensor([2, 3, 0, 1])  # the other person's detail code
        l_cross = detail_consistency_loss(*args, s["detail"], cross, s["images"], s["mask"])
        # growing with how far the swapped-in code is from the person's own
        other = s["detail"][cross]
        l_mix = [float(detail_consistency_loss(*args, s["detail"] + t * (other - s["detail"]), torch.arange(4),
                                               s["images"], s["mask"]).mean()) for t in (0.0, 0.25, 0.5, 1.0)]
        # reusing the rasterization of a render of the same mesh gives the same loss
        l_cross_base = detail_consistency_loss(*args, s["detail"], cross, s["images"], s["mask"], base=s["base"])
    assert float(l_same.max()) < 1e-6
    assert float(l_cross.min()) > 1e-5 and float(l_cross.min()) > 100 * float(l_same.max())
    assert l_mix[0] < 1e-6 and l_mix[0] < l_mix[1] < l_mix[2] < l_mix[3]
    assert torch.allclose(l_cross, l_cross_base, rtol=1e-4, atol=1e-7)


def test_detail_consistency_keeps_expression_and_jaw(face, detail_setup):
    """Swapping the detail code must keep the image's own expression/jaw: the swapped decoder input is
    [jaw_i, exp_i, detail_j], which differs from image j's own map whenever expressions differ."""
    s = detail_setup
    codes, dec = s["codes"], s["dec"]
    with torch.no_grad():
        own_j = dec.decode(codes.jaw_pose[1:2], codes.exp[1:2], s["detail"][1:2])
        swapped_into_0 = dec.decode(codes.jaw_pose[0:1], codes.exp[0:1], s["detail"][1:2])
    assert torch.equal(s["detail"][0], s["detail"][1])
    assert torch.allclose(swapped_into_0, s["uv_z"][0:1], atol=1e-6)  # same person: own code == swapped code
    assert not torch.allclose(own_j, swapped_into_0)  # expression of image 0 is kept, not image 1's


# ------------------------------------------------------------------------------------ perceptual losses

def test_identity_loss_from_resnet50_state_dict(tmp_path):
    from training.perceptual import FaceResNet50, IdentityLoss, PretrainedWeightsError, load_face_recognition

    torch.manual_seed(0)
    path = tmp_path / "vggface2_like.pth"
    sd = FaceResNet50(stride_in_1x1=True).state_dict()
    sd["fc.weight"] = torch.zeros(10, 2048)  # a classifier is allowed and ignored
    torch.save(sd, path)
    net = load_face_recognition(path, stride_in_1x1=True)
    loss = IdentityLoss(net, input_size=112)
    x = torch.rand(2, 3, 224, 224)
    y = x.clone().requires_grad_(True)
    same = loss(x, y)
    assert torch.allclose(same, torch.zeros(2), atol=1e-5)
    other = loss(x, torch.rand(2, 3, 224, 224))
    assert torch.all(other > same)
    (loss(x, y * 0.5)).sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    assert all(not p.requires_grad for p in net.parameters())
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(PretrainedWeightsError, match="bad.pth"):
        load_face_recognition(bad)


def test_id_mrf_loss_from_vgg19_state_dict(tmp_path):
    from training.perceptual import IdMrfLoss, VGG19Features, load_vgg19

    torch.manual_seed(0)
    sd = {k: v for k, v in VGG19Features().state_dict().items()}
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    mrf = IdMrfLoss(load_vgg19(path), input_size=64)
    a = torch.rand(2, 3, 64, 64)
    b = torch.rand(2, 3, 64, 64)
    l_same, l_diff = mrf(a, a), mrf(b, a)
    assert l_same.shape == (2,) and torch.all(torch.isfinite(l_diff))
    assert torch.all(l_same < l_diff)


# ---------------------------------------------------------------------------------- skin mask / prepare

def test_skin_mask_from_landmarks_matches_rendered_face(synth):
    from training.data import IdentityDataset
    from training.prepare import skin_mask_from_landmarks

    ds = IdentityDataset(synth)
    ious = []
    for s in ds.all_samples()[:4]:
        d = ds[s]
        img = d["image"].permute(1, 2, 0).numpy()
        est = skin_mask_from_landmarks(img, d["landmarks"].numpy())
        gt = d["skin_mask"][0].numpy() > 0.5
        ious.append((est & gt).sum() / (est | gt).sum())
        # eyes are excluded
        for eye in (range(36, 42), range(42, 48)):
            c = d["landmarks"].numpy()[list(eye)].mean(0).astype(int)
            assert not est[c[1], c[0]]
    assert min(ious) > 0.6, ious


def test_prepare_builds_the_dataset_from_photos(photos_dir, tmp_path):
    from core.frontend import DetectorUnavailableError, get_detector
    from training.data import IdentityDataset
    from training.prepare import prepare_dataset

    try:
        det = get_detector("dlib", cnn_fallback=False)
    except DetectorUnavailableError as e:
        pytest.skip(str(e))
    photos = sorted(p for p in photos_dir.glob("*") if p.suffix.lower() in (".jpg", ".png"))
    if len(photos) < 2:
        pytest.skip("needs two photos in ../shared/photos")
    src = tmp_path / "photos"
    (src / "person_a").mkdir(parents=True)
    # small photos keep this quick; one person with two photos, a second with one, plus an unreadable file
    from PIL import Image

    for i, p in enumerate([q for q in photos if q.name.startswith(("alfw", "image0"))][:2] or photos[:2]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((400, 400))
            im.save(src / "person_a" / f"photo{i}.png")
    (src / "person_b").mkdir()
    (src / "person_b" / "broken.jpg").write_bytes(b"not a jpeg")
    rep = prepare_dataset(src, tmp_path / "ds", detector_obj=det)
    assert rep.written == 2 and rep.identities == 1
    assert any("broken.jpg" in f for f, _ in rep.skipped)
    ds = IdentityDataset(tmp_path / "ds")
    d = ds[ds.all_samples()[0]]
    lm = d["landmarks"]
    assert float(lm.min()) > 0 and float(lm.max()) < 224
    frac = float(d["skin_mask"].mean())
    assert 0.1 < frac < 0.6, frac


def test_cli_synth_writes_a_dataset(tmp_path, test_flame_pkl, deca_data_dir, capsys):
    from training.cli import main
    from training.data import IdentityDataset

    assert main(["synth", "--out", str(tmp_path / "s"), "--flame", str(test_flame_pkl), "--data-dir",
                 str(deca_data_dir), "--identities", "2", "--images", "1", "--detail-amplitude", "0"]) == 0
    assert "TEST model" in capsys.readouterr().out
    ds = IdentityDataset(tmp_path / "s")
    assert ds.n_identities == 2 and len(ds) == 2 and ds.info["synthetic"]["detail_amplitude"] == 0.0


def test_set_trainable_selects_stage_modules_and_resnet_layers():
    from core.networks import DecaNetworks
    from training.trainer import set_trainable

    with torch.device("meta"):
        nets = DecaNetworks()

    def trained(prefix):
        return {n for n, p in nets.named_parameters() if p.requires_grad and n.startswith(prefix)}

    set_trainable(nets, "coarse", "all")
    assert trained("E_flame") == {n for n, _ in nets.named_parameters() if n.startswith("E_flame")}
    assert not trained("E_detail") and not trained("D_detail")
    set_trainable(nets, "pretrain", "layer4")
    names = trained("E_flame")
    assert names and all(n.startswith(("E_flame.encoder.layer4", "E_flame.layers")) for n in names)
    set_trainable(nets, "detail", "heads")
    assert not trained("E_flame")
    assert trained("E_detail") == {n for n, _ in nets.E_detail.named_parameters(prefix="E_detail") if ".layers." in n}
    assert trained("D_detail") == {n for n, _ in nets.D_detail.named_parameters(prefix="D_detail")}


# ----------------------------------------------------------------------------------------------- cli / resume

def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, runpy\nsys.argv = ['deca-train', 'train', '--help']\ntry:\n"
            "    runpy.run_module('training.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH-LOADED' if 'torch' in sys.modules else 'TORCH-NOT-LOADED')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "--config" in out.stdout  # the help text was printed
    assert out.stdout.strip().endswith("TORCH-NOT-LOADED"), out.stdout[-300:] + out.stderr[-300:]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"not a checkpoint at all"])
def test_corrupt_resume_file_is_a_clean_error(tmp_path, content):
    from training.trainer import read_training_checkpoint

    p = tmp_path / "latest.pt"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=r"latest\.pt: not a readable deca-train checkpoint"):
        read_training_checkpoint(p)


def test_corrupt_resume_file_exits_2_from_the_cli(tmp_path, synth, test_flame_pkl, deca_data_dir, capsys):
    from training.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 64)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"stage: pretrain\noutput_dir: {tmp_path / 'out'}\n"
                   f"data: {{root: {synth}, identities_per_batch: 1}}\n"
                   f"model: {{flame: {test_flame_pkl}, data_dir: {deca_data_dir}}}\n"
                   f"train: {{resume: {bad}, tensorboard: false}}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt: not a readable deca-train checkpoint" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------- VGGFace2 pickle

def test_reads_a_resnet50_ft_weight_pkl_of_numpy_arrays(tmp_path):
    import pickle

    from training.perceptual import FaceResNet50, load_face_recognition

    torch.manual_seed(0)
    src = FaceResNet50(stride_in_1x1=True, caffe_maxpool=True).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as trained weights have
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    # the released file's format: a (Python 2) pickle of {name: numpy array}, Caffe-converted (no batch
    # counters), with VGGFace2's classifier (8631 classes there; fewer here to keep the file small)
    arrays = {k: v.numpy() for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    arrays["fc.weight"] = np.zeros((7, 2048), np.float32)
    arrays["fc.bias"] = np.zeros(7, np.float32)
    path = tmp_path / "resnet50_ft_weight.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    net = load_face_recognition(path)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(net(x), src(x), atol=1e-5)
        assert net(x).shape == (2, 2048)
    # Caffe-style max-pool: padding 0, ceil_mode (a 112 map pools to 56 either way; 111 tells them apart)
    y = torch.rand(1, 64, 111, 111)
    assert torch.nn.functional.max_pool2d(y, 3, 2, 0, ceil_mode=True).shape[-1] == 55


def test_a_weights_pickle_that_asks_for_code_is_refused(tmp_path):
    import pickle

    from training.perceptual import PretrainedWeightsError, load_face_recognition

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1.weight": Evil()}, protocol=2))
    with pytest.raises(PretrainedWeightsError, match=r"evil\.pkl: refused: .*system"):
        load_face_recognition(path)
    assert not (tmp_path / "pwned").exists()


def test_identity_preprocessing_as_released():
    from training.perceptual import IdentityLoss

    class Probe(torch.nn.Module):  # returns its input: the preprocessing is what is compared
        def forward(self, x):
            return x.flatten(1)

    mean = [91.4953, 103.8827, 131.0912]
    loss = IdentityLoss(Probe(), input_size=224, crop_margin=10, release_scaling=True)
    x = torch.rand(1, 3, 224, 224)
    got = loss.features(x).view(1, 3, 224, 224)
    # released VGGFace2Loss: RGB->BGR, *255 - mean_bgr, crop 10 px, x*2-1, bilinear back to 224
    bgr = torch.stack([x[:, 2], x[:, 1], x[:, 0]], 1) * 255 - torch.tensor(mean).view(1, 3, 1, 1)
    ref = torch.nn.functional.interpolate(bgr[:, :, 10:214, 10:214] * 2 - 1, size=(224, 224), mode="bilinear",
                                          align_corners=False)
    assert torch.allclose(got, ref, atol=1e-3)


def test_face_model_reads_the_bfm_albedo_npz(tmp_path, test_flame_pkl, deca_data_dir):
    from core.model.face_model import FaceAssets, FaceModel

    S, K = 16, 60  # the released file has 199 components; the model uses the first 50
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.2, 0.8, S * S * 3)  # FLAME_albedo_from_BFM.npz: 0..1, BGR texels, flattened
    pc = rng.normal(size=(S * S * 3, K)) * 0.01
    path = tmp_path / "FLAME_albedo_from_BFM.npz"
    np.savez(path, MU=mu, PC=pc)
    face = FaceModel(FaceAssets.from_paths(test_flame_pkl, deca_data_dir, path))
    assert face.has_texture_space
    code = torch.zeros(1, 50)
    code[0, 1] = 2.0
    got = face.albedo(code, 1)[0]  # (3, S, S) RGB
    ref = (mu.reshape(S, S, 3) + 2.0 * pc[:, 1].reshape(S, S, 3))[..., ::-1].clip(0, 1)  # BGR -> RGB
    assert np.allclose(got.permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_prepare_in_shards_with_workers_and_resume(photos_dir, tmp_path):
    from PIL import Image

    from core.frontend import DetectorUnavailableError, get_detector
    from training.prepare import parse_shard, prepare_dataset

    try:
        get_detector("dlib", cnn_fallback=False)
    except DetectorUnavailableError as e:
        pytest.skip(str(e))
    photos = [q for q in sorted(photos_dir.glob("*")) if q.name.startswith(("alfw", "image0"))][:3]
    if len(photos) < 3:
        pytest.skip("needs three small photos in ../shared/photos")
    src = tmp_path / "photos"
    for i, p in enumerate(photos):
        (src / f"person{i % 2}").mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((400, 400))
            im.save(src / f"person{i % 2}" / f"photo{i}.png")
    # two independent shard jobs cover every photo exactly once
    a = prepare_dataset(src, tmp_path / "sharded", detector="dlib", shard="0/2")
    b = prepare_dataset(src, tmp_path / "sharded", detector="dlib", shard="1/2")
    assert (a.written, b.written) == (2, 1)
    sharded = sorted(p.relative_to(tmp_path / "sharded") for p in (tmp_path / "sharded").rglob("*.npz"))
    assert len(sharded) == 3
    # each shard job wrote its own manifest; together they index the set, and its samples re-crop
    from training.data import IdentityDataset, Sample, read_manifests

    assert sorted(p.name for p in (tmp_path / "sharded").glob("manifest*.json")) == ["manifest.0of2.json",
                                                                                     "manifest.1of2.json"]
    assert sum(map(len, read_manifests(tmp_path / "sharded").values())) == 3
    ds = IdentityDataset(tmp_path / "sharded", crop="release")
    assert ds.indexed_by == "manifest" and len(ds) == 3
    with np.load(tmp_path / "sharded" / sharded[0]) as z:
        # the full image's landmarks map onto the stored crop's through full_matrix
        m = z["full_matrix"]
        assert np.abs(z["full_landmarks"] @ m[:2, :2].T + m[:2, 2] - z["landmarks"]).max() < 1e-3
    item = ds[Sample(0, 0, 1)]
    lm = item["landmarks"].numpy()
    side = (lm.max(0) - lm.min(0)).sum() / 2.0  # the landmark box in the re-crop: 224 / scale
    assert 224 / 1.8 - 0.5 < side < 224 / 1.4 + 0.5
    # an interrupted run resumes: a sample cut off before its .npz (written last) is redone, the rest kept
    victim = tmp_path / "sharded" / sharded[1]
    victim.unlink()
    kept = (tmp_path / "sharded" / sharded[0]).stat().st_mtime_ns
    again = prepare_dataset(src, tmp_path / "sharded", detector="dlib")
    assert again.written == 1 and again.identities == 2 and victim.is_file()
    assert (tmp_path / "sharded" / sharded[0]).stat().st_mtime_ns == kept
    assert prepare_dataset(src, tmp_path / "sharded", detector="dlib").written == 0
    assert sum(map(len, read_manifests(tmp_path / "sharded").values())) == 3
    # two worker processes write the same samples as the sharded single-process jobs
    par = prepare_dataset(src, tmp_path / "parallel", detector="dlib", workers=2)
    assert par.written == 3
    for rel in sharded:
        with np.load(tmp_path / "sharded" / rel) as x, np.load(tmp_path / "parallel" / rel) as y:
            assert np.array_equal(x["landmarks"], y["landmarks"]) and np.array_equal(x["skin_mask"], y["skin_mask"])
            assert np.array_equal(x["full_landmarks"], y["full_landmarks"])
    assert parse_shard("3/16") == (3, 16)
    for bad in ("16/16", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
