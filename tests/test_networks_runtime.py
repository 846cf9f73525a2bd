"""Inference forms of the networks (core.networks.runtime) against the eager reference modules.

Input-dependent random weights (core.networks.responsive) so that a wrong fold changes the outputs by far
more than float rounding; the bound is the issue's 1e-4 relative (of each output's largest magnitude).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.networks import DecaNetworks
from core.networks.responsive import AMBIENT_LIGHT, CAMERA_SCALE, responsive_networks
from core.networks.runtime import (PERSON_CHUNK, PersonDecoder, fold_batch_norms, fold_decoder,
                                   inference_networks)
from core.pipeline import wrinkles as wr

REL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@pytest.fixture(scope="module")
def nets() -> DecaNetworks:
    return responsive_networks(seed=3)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 224, 224, generator=g)


def test_responsive_weights_make_outputs_depend_on_the_input(nets, images):
    with torch.inference_mode():
        out = nets(images)
    assert out.codes.cam[:, 0].mean().item() == pytest.approx(CAMERA_SCALE, abs=2.0)
    assert out.codes.light[:, 0].mean().item() == pytest.approx(AMBIENT_LIGHT, abs=1.5)
    # different photos give different codes and maps: the spread across images is far above rounding
    assert out.codes.exp.std(0).mean() > 1e-2
    assert out.detail.std(0).mean() > 1e-2
    disp = out.displacement
    assert 3e-4 < disp.std().item() < 5e-3  # ~1 mm, inside D_detail's (-0.01, 0.01)
    d1 = nets.D_detail.decode(torch.zeros(1, 3), torch.zeros(1, 50), out.detail[:1])
    d2 = nets.D_detail.decode(torch.zeros(1, 3), 2 * torch.ones(1, 50), out.detail[:1])
    assert (d1 - d2).abs().mean() > 0.2 * disp.std()  # the expression input matters


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_networks_equal_the_eager_reference(nets, images, channels_last):
    ref = nets.eval()
    fast = inference_networks(nets) if channels_last else fold_batch_norms(nets)
    x = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    with torch.inference_mode():
        a, b = ref(images), fast(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    for name in ("shape", "tex", "exp", "pose", "cam", "light"):
        assert _rel(getattr(a.codes, name), getattr(b.codes, name)) < REL, name
    assert _rel(a.detail, b.detail) < REL
    assert _rel(a.displacement, b.displacement) < REL
    # the reference is untouched (the fold works on a copy)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in nets.modules()) > 50


@pytest.mark.parametrize("chunk", [0, 1, PERSON_CHUNK, 5])
def test_person_decoder_equals_the_full_decoder(nets, chunk):
    """Chunked or not (7 samples: chunks of 5 leave a remainder of 2), folded or not: the eager decoder on
    the full [jaw, exp, detail] input, sample by sample (a mixed-up chunk order would fail: 7 distinct x)."""
    g = torch.Generator().manual_seed(1)
    detail = torch.randn(1, 128, generator=g) * 0.3
    x = torch.as_tensor(wr.sample_prior(7, np.random.default_rng(0)), dtype=torch.float32)
    with torch.inference_mode():
        want = nets.D_detail.decode(x[:, 50:], x[:, :50], detail.expand(7, -1))
        assert (want[1:] - want[:-1]).abs().amax((1, 2, 3)).min() > 100 * REL * want.abs().max()
        for dec in (nets.D_detail, fold_decoder(nets.D_detail).to(memory_format=torch.channels_last)):
            person = PersonDecoder(dec, detail, chunk=chunk)
            assert person._split == 9  # conv_blocks.9: the third up-sampling, where the chunks start
            got = person(x[:, 50:], x[:, :50])
            assert got.shape == (7, 1, 256, 256)
            assert _rel(want, got) < REL


def test_folding_twice_changes_nothing(nets, images):
    once = fold_batch_norms(nets)
    twice = fold_batch_norms(once)
    with torch.inference_mode():
        a, b = once(images), twice(images)
    torch.testing.assert_close(a.codes.to_vector(), b.codes.to_vector(), rtol=0, atol=0)
    torch.testing.assert_close(a.displacement, b.displacement, rtol=0, atol=0)


def test_gcv_ridge_matches_a_direct_computation():
    """The closed-form GCV score equals N * RSS / (N - 1 - tr H)^2 computed by fitting each lambda."""
    rng = np.random.default_rng(0)
    N, T = 40, 30
    Xs = rng.normal(size=(N, wr.N_INPUT))
    Xs -= Xs.mean(0)
    Y = Xs[:, :5] @ rng.normal(size=(5, T)) + 2.0 * rng.normal(size=(N, T))
    Yc = Y - Y.mean(0)
    grid = np.array([1.0, 3.0, 10.0, 30.0, 100.0])
    scores = []
    for lam in grid:
        H = Xs @ np.linalg.solve(Xs.T @ Xs + lam * np.eye(wr.N_INPUT), Xs.T)
        rss = float(((Yc - H @ Yc) ** 2).sum())
        scores.append(N * rss / (N - 1 - np.trace(H)) ** 2)
    assert wr.gcv_ridge(Xs, Yc, grid) == grid[int(np.argmin(scores))]
    # noisy data with a few true directions: more shrinkage than the lightest ridge
    assert wr.gcv_ridge(Xs, Yc, grid) > 1.0


def test_inplace_fold_reuses_the_module_and_keeps_the_function(images):
    nets = responsive_networks(seed=4)
    with torch.inference_mode():
        want = nets(images)
    folded = fold_batch_norms(nets, inplace=True)
    assert folded is nets and not any(isinstance(m, torch.nn.BatchNorm2d) for m in nets.modules())
    with torch.inference_mode():
        got = folded(images)
    assert _rel(want.codes.to_vector(), got.codes.to_vector()) < REL
    assert _rel(want.displacement, got.displacement) < REL


@pytest.mark.parametrize("inplace", [False, True])
def test_inference_networks_fold_bit_for_bit_like_torchs_fuse(inplace):
    """The fold writes each fused weight straight into channels_last (one new tensor instead of two): the
    same bits and strides as torch's own ``fuse_conv_bn_eval`` on every conv/bn pair followed by the module's
    channels_last conversion (bound 0: the same elementwise float operations in the same order)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from core.networks.resnet import Bottleneck

    ref = responsive_networks(seed=5)
    with torch.no_grad():  # batch norms away from identity, so that the fold changes every weight
        g = torch.Generator().manual_seed(2)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    got = inference_networks(copy.deepcopy(ref) if inplace else ref, "cpu", inplace=inplace)

    want = copy.deepcopy(ref).eval()
    for enc in (want.E_flame, want.E_detail):
        t = enc.encoder
        t.conv1, t.bn1 = fuse_conv_bn_eval(t.conv1, t.bn1), torch.nn.Identity()
        for block in t.modules():
            if isinstance(block, Bottleneck):
                for i in (1, 2, 3):
                    conv, bn = getattr(block, f"conv{i}"), getattr(block, f"bn{i}")
                    setattr(block, f"conv{i}", fuse_conv_bn_eval(conv, bn))
                    setattr(block, f"bn{i}", torch.nn.Identity())
                if block.downsample is not None:
                    block.downsample = torch.nn.Sequential(fuse_conv_bn_eval(*block.downsample))
    blocks = list(want.D_detail.conv_blocks)
    bn0, lin = blocks[0], want.D_detail.l1[0]
    with torch.no_grad():
        # D_detail's leading batch norm, per 8x8 block of l1's rows (eval BatchNorm2d: x * scale + shift)
        scale = bn0.weight / torch.sqrt(bn0.running_var + bn0.eps)
        shift = bn0.bias - bn0.running_mean * scale
        lin.weight.mul_(scale.repeat_interleave(64)[:, None])
        lin.bias.mul_(scale.repeat_interleave(64)).add_(shift.repeat_interleave(64))
    blocks[0] = torch.nn.Identity()
    for i, m in enumerate(blocks):
        if isinstance(m, torch.nn.BatchNorm2d):
            blocks[i - 1], blocks[i] = fuse_conv_bn_eval(blocks[i - 1], m), torch.nn.Identity()
    want.D_detail.conv_blocks = torch.nn.Sequential(*blocks)
    want = want.to(memory_format=torch.channels_last)

    sw, sg = want.state_dict(), got.state_dict()
    assert list(sw) == list(sg)
    for k in sw:
        assert sw[k].stride() == sg[k].stride(), k
        assert torch.equal(sw[k], sg[k]), k
