"""E_flame's standardised head (``model.standardise_head``, training/head.py).

* the reparametrised layer computes the same codes, and its folded state dict (what checkpoints and the export
  hold) is DECA's ``nn.Linear`` again;
* one Adam step moves every code by its std times what the plain head's step moves it (the point of it);
* the per-image camera fit recovers the cameras that framed the mean face;
* a run with it resumes bit for bit, and its checkpoints hold the folded head.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)


def _stats(n: int, seed: int = 0):
    from training.head import HeadStandardisation

    g = torch.Generator().manual_seed(seed)
    return HeadStandardisation(torch.randn(n, generator=g) * 5, torch.rand(n, generator=g) * 3 + 0.01)


def test_standardised_head_computes_the_same_codes_and_folds_back():
    from training.head import folded_state_dict, standardise_head

    torch.manual_seed(0)
    enc = nn.Module()
    enc.layers = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 7))
    x = torch.randn(5, 16)
    before = enc.layers(x)
    official = {k: v.clone() for k, v in enc.state_dict().items()}
    stats = _stats(7)
    handle = standardise_head(enc.layers[2], stats)
    assert torch.allclose(enc.layers(x), before, rtol=1e-5, atol=1e-5)
    # the trained parameters are the standardised ones: W / std and (b - mean) / std
    assert torch.allclose(enc.layers[2].weight * stats.std[:, None], official["layers.2.weight"], atol=1e-6)
    assert torch.allclose(enc.layers[2].bias * stats.std + stats.mean, official["layers.2.bias"], atol=1e-5)
    folded = folded_state_dict(enc, stats)
    assert set(folded) == set(official)
    for k, v in official.items():
        assert torch.allclose(folded[k], v, rtol=1e-6, atol=1e-5), k
    handle.remove()
    plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 7))
    plain.load_state_dict({k.removeprefix("layers."): v for k, v in folded.items()})
    assert torch.allclose(plain(x), before, rtol=1e-5, atol=1e-5)


def test_one_adam_step_moves_each_code_by_its_std():
    """Adam's first step is ``lr * g / (|g| + eps)``: the sign of the gradient. The standardised head's gradient
    is the plain one's times std (same signs), so its codes move std times as far: the camera scale (std ~1)
    moves 50x as far as a translation (std ~0.02), where a plain head moves both alike."""
    from training.head import standardise_head

    torch.manual_seed(1)
    x, target = torch.randn(8, 32, dtype=torch.float64), torch.randn(8, 7, dtype=torch.float64) * 4
    stats = _stats(7, seed=2)
    stats.mean, stats.std = stats.mean.double(), stats.std.double()  # float64: (after - before) cancels no digits

    def step(standardise: bool):
        layer = nn.Linear(32, 7).double()
        layer.load_state_dict(ref.state_dict())
        if standardise:
            standardise_head(layer, stats)
        before = layer(x).detach()
        opt = torch.optim.Adam(layer.parameters(), lr=1e-3, eps=1e-12)
        (layer(x) - target).abs().sum().backward()
        opt.step()
        return layer(x).detach() - before

    ref = nn.Linear(32, 7).double()
    moved_plain, moved_std = step(False), step(True)
    assert moved_plain.abs().min() > 1e-4  # every code moved
    assert torch.allclose(moved_std, moved_plain * stats.std, rtol=1e-6, atol=1e-12)


def test_landmark_cameras_recover_the_cameras_that_framed_the_mean_face(face):
    from core.render import ndc_to_pixels
    from training.head import landmark_cameras

    cams = torch.tensor([[9.0, 0.01, -0.02], [11.5, -0.03, 0.04], [10.2, 0.0, 0.0]])
    z = torch.zeros(3, 1)
    g = face.geometry(z.expand(3, 100), z.expand(3, 50), z.expand(3, 6), cams)
    fitted = landmark_cameras(face, ndc_to_pixels(g.landmarks2d, 224))
    assert torch.allclose(fitted, cams, rtol=1e-4, atol=1e-5), (fitted, cams)


def test_head_statistics_measure_the_camera_and_take_the_priors():
    from training.head import code_slices, head_statistics

    sl = code_slices()
    n = max(s.stop for s in sl.values())
    cams = torch.tensor([[9.0, 0.01, 0.3], [11.0, 0.03, 0.3], [10.0, 0.02, 0.3]])
    st = head_statistics(torch.arange(n, dtype=torch.float32), cams, {"shape": 0.3, "pose": 0.2})
    assert torch.equal(st.mean, torch.arange(n, dtype=torch.float32))
    assert torch.allclose(st.std[sl["cam"]], torch.tensor([1.0, 0.01, 0.01]))  # sample std; 0 floored at 1e-2
    assert torch.all(st.std[sl["shape"]] == 0.3) and torch.all(st.std[sl["pose"]] == 0.2)
    assert torch.all(st.std[sl["exp"]] == 1.0) and torch.all(st.std[sl["light"]] == 1.0)
    assert torch.all(head_statistics(st.mean, cams, {"cam": 2.0}).std[sl["cam"]] == 2.0)  # given: not measured
    given = head_statistics(st.mean, cams, {"cam": [5.0, 0.02, 0.03]}).std[sl["cam"]]  # one per code
    assert torch.allclose(given, torch.tensor([5.0, 0.02, 0.03]))
    with pytest.raises(ValueError, match="one per code"):
        head_statistics(st.mean, cams, {"cam": [5.0, 0.02]})


@pytest.mark.parametrize("value", [{"nose": 1.0}, {"shape": 0}, {"exp": "big"}, {"cam": [1.0, -0.1, 0.1]}, [0.3]])
def test_bad_head_code_std_is_a_config_error(value):
    from training.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="head_code_std"):
        config_from_dict({"model": {"head_code_std": value}})


@pytest.mark.slow
def test_a_run_with_a_standardised_head_resumes_exactly_and_saves_deca_layout(face, tmp_path):
    from training.config import config_from_dict
    from training.head import HeadStandardisation, code_slices, folded_state_dict
    from training.synthetic import SyntheticSpec, make_synthetic_dataset
    from training.trainer import train

    data = make_synthetic_dataset(tmp_path / "data", face, SyntheticSpec(n_identities=4, images_per_identity=2,
                                                                         seed=3, detail_amplitude=0.0))

    def cfg(out, **t):
        return config_from_dict({
            "stage": "pretrain", "output_dir": str(out),
            "data": {"root": str(data), "identities_per_batch": 2, "images_per_identity": 2},
            "model": {"encoder_blocks": [1, 1, 1, 1], "encoder_input_size": 64, "bn_mode": "train",
                      "standardise_head": True, "head_code_std": {"shape": 0.3}, "bn_calibration_images": 8},
            "optim": {"lr": 1e-3},
            "train": {"max_steps": 4, "threads": 1, "log_every": 1, "tensorboard": False, "checkpoint_every": 2,
                      "resume": "never", **t}})

    train(cfg(tmp_path / "full"), face=face)
    split = cfg(tmp_path / "split", stop_after=2, resume="auto")
    assert train(split, face=face).step == 2
    assert train(split, face=face).step == 4

    def metrics(out):
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    a, b = metrics(tmp_path / "full"), metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb["loss"] == ra["loss"], (ra["step"], ra["loss"], rb["loss"])
    ca = torch.load(tmp_path / "full/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    cb = torch.load(tmp_path / "split/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    for k, v in ca["E_flame"].items():
        assert torch.equal(v, cb["E_flame"][k]), k
    # the checkpoint's E_flame is DECA's layout: the trained standardised head folded with its statistics
    stats = HeadStandardisation.from_dict(ca["head_standardisation"])
    sl = code_slices()
    assert torch.all(stats.std[sl["shape"]] == 0.3) and float(stats.std[sl["cam"]][0]) > 0.01  # measured
    enc = nn.Module()
    enc.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, ca["E_flame"]["layers.2.bias"].numel()))
    enc.layers[2].weight.data.copy_(ca["head_standardised"]["weight"])
    enc.layers[2].bias.data.copy_(ca["head_standardised"]["bias"])
    folded = folded_state_dict(enc, stats)
    for k in ("layers.2.weight", "layers.2.bias"):
        assert torch.equal(folded[k], ca["E_flame"][k]), k
