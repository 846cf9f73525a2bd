"""The validation grid (``train.eval_every`` + ``train.val_images``, training/visualise.py).

A short run validates at its last step; the PNG is read back and checked panel by panel against this test's
own computation: the size from N and the crop size, the input row against the crops on disk, the landmark
row against the crop with the 3x3 squares of the dataset's and the checkpoint's projected landmarks drawn by
the rule written here, and the shape row (grey, inside the projected mesh's box).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.config import config_from_dict
from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)

REDUCED = {"encoder_blocks": [1, 1, 1, 1], "encoder_input_size": 64}
P = 224


@pytest.fixture(scope="module")
def synth(face, tmp_path_factory):
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), face,
                                  SyntheticSpec(n_identities=2, images_per_identity=2, seed=11, detail_amplitude=0.0))


def _squares(points: np.ndarray) -> np.ndarray:
    """(P, P) bool: the 3x3 pixels around floor(x), floor(y) of each point, clamped into the image."""
    out = np.zeros((P, P), dtype=bool)
    base = np.floor(points).astype(np.int64)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x = np.clip(base[:, 0] + dx, 0, P - 1)
            y = np.clip(base[:, 1] + dy, 0, P - 1)
            out[y, x] = True
    return out


def test_validation_writes_the_grid_of_the_first_images(face, synth, tmp_path):
    from PIL import Image

    from core.render import ndc_to_pixels
    from training.data import IdentityDataset, collate
    from training.networks import load_training_networks
    from training.trainer import train

    n = 3  # of the 4 validation images
    cfg = config_from_dict({"stage": "pretrain", "output_dir": str(tmp_path),
                            "data": {"root": str(synth), "identities_per_batch": 2, "images_per_identity": 2},
                            "model": {**REDUCED, "bn_calibration_images": 4},
                            "train": {"max_steps": 2, "eval_every": 2, "val_root": str(synth), "val_images": n,
                                      "tensorboard": True, "resume": "never", "threads": 1}})
    res = train(cfg, face=face)
    path = tmp_path / "val" / "step_0000002.png"
    assert sorted(p.name for p in (tmp_path / "val").iterdir()) == [path.name]  # eval_every 2: step 2 only
    val = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert [(v["step"], v["val_grid"]) for v in val] == [(2, "val/step_0000002.png")]
    with Image.open(path) as im:
        assert im.mode == "RGB"
        grid = np.asarray(im)
    assert grid.shape == (3 * P, n * P, 3)  # rows: input, landmarks, shape; one column per image

    ds = IdentityDataset(synth)
    samples = ds.all_samples()[:n]
    # the predictions of the step-2 checkpoint (the networks the grid was made with), same batch, eval mode
    nets = load_training_networks(res.checkpoint, cfg.model)
    batch = collate([ds[s] for s in samples])
    with torch.no_grad():
        codes = nets.E_flame.encode(batch["image"])
        g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
    pred = ndc_to_pixels(g.landmarks2d, P).numpy()
    verts = ndc_to_pixels(g.verts_screen[..., :2], P).numpy()
    for j, s in enumerate(samples):
        cols = slice(j * P, (j + 1) * P)
        with Image.open(ds.files[s.identity][s.image]) as im:
            crop = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(grid[:P, cols], crop)  # the input panel is the validation crop
        lmk = grid[P:2 * P, cols]
        red, green = _squares(pred[j]), _squares(batch["landmarks"][j].numpy())
        drawn = red | green
        assert 9 * 10 <= drawn.sum() <= 2 * 68 * 9
        np.testing.assert_array_equal(lmk[~drawn], crop[~drawn])  # unchanged where nothing is drawn
        assert (lmk[red] == (255, 0, 0)).all()  # predicted on top
        assert (lmk[green & ~red] == (0, 255, 0)).all()
        changed = (lmk != crop).any(-1)
        # where a square lands on a pixel that already has its colour nothing changes; everywhere else it does
        same_colour = (red & (crop == (255, 0, 0)).all(-1)) | (green & ~red & (crop == (0, 255, 0)).all(-1))
        np.testing.assert_array_equal(changed, drawn & ~same_colour)
        shape = grid[2 * P:, cols].astype(np.int64)
        assert (shape[..., 0] == shape[..., 1]).all() and (shape[..., 1] == shape[..., 2]).all()  # grey
        lit = shape[..., 0] > 0
        assert shape.max() <= round(255 * 0.95)  # ambient 0.3 + diffuse 0.65: never saturated
        assert lit.sum() > 500
        ys, xs = np.nonzero(lit)
        lo, hi = verts[j].min(0), verts[j].max(0)
        assert xs.min() >= np.floor(lo[0]) and xs.max() <= np.ceil(hi[0])  # inside the projected mesh
        assert ys.min() >= np.floor(lo[1]) and ys.max() <= np.ceil(hi[1])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    ev.Reload()
    imgs = ev.Images("val/images")
    assert [(e.step, e.height, e.width) for e in imgs] == [(2, 3 * P, n * P)]


def test_val_images_zero_writes_no_grid_and_negative_is_refused(face, synth, tmp_path):
    from training.trainer import train

    cfg = config_from_dict({"stage": "pretrain", "output_dir": str(tmp_path),
                            "data": {"root": str(synth), "identities_per_batch": 2, "images_per_identity": 1},
                            "model": {**REDUCED, "bn_calibration_images": 2},
                            "train": {"max_steps": 1, "eval_every": 1, "val_root": str(synth), "val_images": 0,
                                      "tensorboard": False, "resume": "never", "threads": 1}})
    train(cfg, face=face)
    assert not (tmp_path / "val").exists()
    val = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(val) == 1 and "val_grid" not in val[0]
    with pytest.raises(Exception, match="train.val_images"):
        config_from_dict({"train": {"eval_every": 1, "val_root": "x", "val_images": -1}})


def test_shape_light_is_ambient_plus_cosine():
    from core.render.shading import sh_shading
    from training.visualise import SHAPE_LIGHT_DIRECTION, shape_light

    gen = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(1, 500, 3, dtype=torch.float64, generator=gen), dim=-1)
    d = torch.tensor(SHAPE_LIGHT_DIRECTION, dtype=torch.float64)
    expected = 0.3 + 0.65 * (n @ (d / d.norm()))
    got = sh_shading(n, shape_light(1, torch.float64))
    torch.testing.assert_close(got, expected[..., None].expand(-1, -1, 3), rtol=0, atol=1e-12)
