"""The released DECA loss formulas (training.release_losses) against independent computations on small
tensors: plain Python / numpy loops written from the released definitions, not the vectorised code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import release_losses as R


@pytest.fixture
def lm():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 68, 2, generator=g) * 2 - 1, torch.rand(3, 68, 2, generator=g) * 2 - 1


def _weights_by_hand() -> list[float]:
    # written out from lossfunc.weighted_landmark_loss: later assignments win
    w = [1.0] * 68
    for i in (5, 6, 10, 11):
        w[i] = 2.0
    for i in range(27, 36):
        w[i] = 1.5
    for i in (30, 31, 35):
        w[i] = 3.0
    for i in range(48, 68):
        w[i] = 1.5
    w[48] = w[54] = 3.0
    return w


def test_release_landmark_weights():
    assert R.release_landmark_weights().tolist() == _weights_by_hand()


def test_weighted_landmark_loss_normalises_per_coordinate_over_the_batch(lm):
    p, t = lm
    w = _weights_by_hand()
    num = den = 0.0
    for b in range(p.shape[0]):
        for k in range(68):
            for c in range(2):
                num += w[k] * abs(float(p[b, k, c]) - float(t[b, k, c]))
                den += w[k]
    assert float(R.weighted_landmark_loss(p, t)) == pytest.approx(num / den, rel=1e-5)
    # unweighted: the mean absolute coordinate error
    assert float(R.weighted_landmark_loss(p, t, torch.ones(68))) == pytest.approx(float((p - t).abs().mean()), rel=1e-5)


@pytest.mark.parametrize("which", ["eye", "lip"])
def test_closure_losses_compare_euclidean_distances(lm, which):
    p, t = lm
    up, down = ((37, 38, 43, 44), (41, 40, 47, 46)) if which == "eye" else ((61, 62, 63), (67, 66, 65))
    fn = R.eye_distance_loss if which == "eye" else R.lip_distance_loss
    vals = []
    for b in range(p.shape[0]):
        for u, d in zip(up, down):
            dp = math.dist(p[b, u].tolist(), p[b, d].tolist())
            dt = math.dist(t[b, u].tolist(), t[b, d].tolist())
            vals.append(abs(dp - dt))
    assert float(fn(p, t)) == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    # a common translation or a flip of the opening's direction changes nothing (distances, not offsets)
    q = p.clone()
    q[:, list(up)], q[:, list(down)] = p[:, list(down)] + 0.3, p[:, list(up)] + 0.3
    assert float(fn(q, t)) == pytest.approx(float(fn(p, t)), rel=1e-5)


def test_regularisers_are_summed_over_the_batch():
    x = torch.arange(12.0).reshape(3, 4) / 10
    assert float(R.sum_regularizer(x)) == pytest.approx(sum(v * v for v in x.flatten().tolist()) / 2, rel=1e-6)
    # twice the batch: twice the regulariser (a batch mean would stay the same)
    assert float(R.sum_regularizer(torch.cat([x, x]))) == pytest.approx(2 * float(R.sum_regularizer(x)), rel=1e-6)


def test_light_regulariser_penalises_colour_only():
    g = torch.Generator().manual_seed(1)
    light = torch.randn(2, 9, 3, generator=g)
    a = light.numpy()
    ref = np.mean([(a[b, k].mean() - a[b, k, c]) ** 2 for b in range(2) for k in range(9) for c in range(3)])
    assert float(R.light_regularizer(light)) == pytest.approx(float(ref), rel=1e-5)
    grey = light.mean(-1, keepdim=True).expand(-1, -1, 3)
    assert float(R.light_regularizer(grey)) == 0.0


def test_shading_smoothness_on_interior_differences():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(2, 3, 5, 6, generator=g)
    a = s.numpy()
    B, C, H, W = a.shape
    dx = [(a[b, c, i, j + 1] - a[b, c, i, j]) ** 2 for b in range(B) for c in range(C) for i in range(1, H - 1)
          for j in range(W - 1)]
    dy = [(a[b, c, i + 1, j] - a[b, c, i, j]) ** 2 for b in range(B) for c in range(C) for i in range(H - 1)
          for j in range(1, W - 1)]
    assert float(R.shading_smoothness(s)) == pytest.approx(float(np.mean(dx) + np.mean(dy)), rel=1e-5)
    assert float(R.shading_smoothness(torch.full((1, 3, 4, 4), 0.7))) == 0.0


def test_soft_symmetry_only_on_invisible_texels_against_a_detached_mirror():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 1, 4, 6, generator=g, requires_grad=True)
    inv = torch.zeros(1, 1, 4, 6)
    inv[..., :2] = 1.0  # the left third is hidden
    a = z.detach().numpy()[0, 0]
    ref = sum(abs(a[i, j] - a[i, 5 - j]) for i in range(4) for j in range(2))
    loss = R.soft_symmetry(z, inv)
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    # gradient only where hidden (the visible mirror side is a detached target)
    assert bool((z.grad[..., 2:] == 0).all()) and bool((z.grad[..., :2].abs() == 1).all())
