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


# ------------------------------------------------------------------------------------ detail stage (UV space)

def test_binary_erosion_is_scipys_with_a_5x5_square():
    from scipy.ndimage import binary_erosion as scipy_erosion

    g = torch.Generator().manual_seed(4)
    m = (torch.rand(2, 1, 24, 20, generator=g) > 0.15).float() * torch.rand(2, 1, 24, 20, generator=g)
    m[0, 0, 4:20, 3:17] = 0.3  # a solid block (fractional values count as set, as in the released float mask)
    ours = R.binary_erosion(m)
    for b in range(2):
        ref = scipy_erosion(m[b, 0].numpy() != 0, structure=np.ones((5, 5)))  # border_value 0, as released
        assert np.array_equal(ours[b, 0].numpy() != 0, ref)
    assert float(ours[0, 0, 6:18, 5:15].min()) == 1.0 and float(ours[0, 0, :2].max()) == 0.0


def test_uv_face_patch_cuts_the_released_box_and_resizes():
    S = 256
    rows = torch.arange(S, dtype=torch.float32)[:, None].expand(S, S)
    cols = torch.arange(S, dtype=torch.float32)[None, :].expand(S, S)
    m = torch.stack([rows, cols])[None]  # (1, 2, S, S): each texel holds its own row and column
    lo, hi = int(400 * S / 2048), int(1648 * S / 2048)  # load_local_mask('bbx')[0] at S: 50, 206
    same = R.uv_face_patch(m, out_size=hi - lo)  # a resize to the box's own size is the identity
    assert (lo, hi) == (50, 206)
    assert float(same[0, 0].min()) == lo and float(same[0, 0].max()) == hi - 1
    assert float(same[0, 1, 0, 0]) == lo and float(same[0, 1, -1, -1]) == hi - 1
    out = R.uv_face_patch(m)
    assert out.shape == (1, 2, 256, 256)
    # bilinear, align_corners=False: output texel k samples the box at lo + (k + 0.5) * 156/256 - 0.5
    k = 100
    x = lo + (k + 0.5) * (hi - lo) / 256 - 0.5
    assert float(out[0, 0, k, 0]) == pytest.approx(x, abs=1e-4)


def _mrf_by_hand(gen: np.ndarray, tar: np.ndarray, h: float = 0.5) -> float:
    """lossfunc.IDMRFLoss.mrf_loss written out with loops: (B, C, H, W) numpy arrays -> batch sum."""
    B, C, H, W = gen.shape
    total = 0.0
    for b in range(B):
        locs = [(i, j) for i in range(H) for j in range(W)]
        mu = {p: sum(tar[b, c, p[0], p[1]] for c in range(C)) / C for p in locs}  # channel mean per location

        def unit(x, p):
            v = [x[b, c, p[0], p[1]] - mu[p] for c in range(C)]
            n = math.sqrt(sum(a * a for a in v))
            return [a / n for a in v]

        G = {p: unit(gen, p) for p in locs}
        T = {p: unit(tar, p) for p in locs}
        # d[t][g]: (1 - cos) / 2 between target location t and generated location g
        d = {t: {g: (1 - sum(x * y for x, y in zip(T[t], G[g]))) / 2 for g in locs} for t in locs}
        cx = {t: {} for t in locs}
        for g in locs:
            dmin = min(d[t][g] for t in locs)
            w = {t: math.exp((1 - d[t][g] / (dmin + 1e-5)) / h) for t in locs}
            s = sum(w.values())
            for t in locs:
                cx[t][g] = w[t] / s
        total += -math.log(sum(max(cx[t].values()) for t in locs) / len(locs))
    return total


def test_release_mrf_layer_matches_the_released_loops():
    g = torch.Generator().manual_seed(5)
    gen = torch.rand(2, 4, 3, 2, generator=g, dtype=torch.float64)
    tar = torch.rand(2, 4, 3, 2, generator=g, dtype=torch.float64)
    ref = _mrf_by_hand(gen.numpy(), tar.numpy())
    assert float(R.release_mrf_layer(gen, tar)) == pytest.approx(ref, rel=1e-9)
    # summed over the batch, not averaged
    assert float(R.release_mrf_layer(torch.cat([gen, gen]), torch.cat([tar, tar]))) == pytest.approx(2 * ref, rel=1e-9)
    # identical features: every target is its own best match; the value is the floor, below a mismatch
    assert float(R.release_mrf_layer(tar, tar)) < ref


def test_released_id_mrf_counts_relu4_2_twice_and_sums_over_the_batch():
    from training.perceptual import VGG19_LAYERS, IdMrfLoss, VGG19Features

    torch.manual_seed(0)
    vgg = VGG19Features().eval()
    assert (VGG19_LAYERS["relu3_1"], VGG19_LAYERS["relu4_1"]) == (11, 20)  # released names relu3_2 / relu4_2
    loss = IdMrfLoss(vgg, ["relu3_1", "relu4_1"], [1.0, 2.0], formula="release")
    g = torch.Generator().manual_seed(6)
    a, b = torch.rand(2, 3, 40, 40, generator=g), torch.rand(2, 3, 40, 40, generator=g)
    with torch.no_grad():
        # the released VGG19FeatLayer's walk: names count convolutions and ReLUs together within a block
        x, names, feats, block, k = (a - vgg.mean) / vgg.std, [], {}, 1, 0
        y = (b - vgg.mean) / vgg.std
        for m in vgg.features:
            if isinstance(m, torch.nn.MaxPool2d):
                block, k = block + 1, 0
            else:
                k += 1
            x, y = m(x), m(y)
            if isinstance(m, torch.nn.ReLU):
                feats[f"relu{block}_{k}"] = (x, y)
            if block == 5:
                break
        style = sum(R.release_mrf_layer(*feats[n]) for n in ("relu3_2", "relu4_2"))
        content = R.release_mrf_layer(*feats["relu4_2"])
        assert float(loss(a, b)) == pytest.approx(float(style + content), rel=1e-5)


def test_identity_permutation_permutes_within_each_person():
    ident = torch.tensor([0, 0, 0, 4, 4, 4, 9, 9, 9])
    seen_fixed_point = False
    for step in range(20):
        p = R.identity_permutation(ident, seed=1, step=step)
        assert sorted(p.tolist()) == list(range(9))  # a permutation
        assert bool((ident[p] == ident).all())  # within each person
        assert p.tolist() == R.identity_permutation(ident, seed=1, step=step).tolist()  # reproducible
        seen_fixed_point |= bool((p == torch.arange(9)).any())
    assert seen_fixed_point  # like np.random.permutation(K): an image may keep its own code
