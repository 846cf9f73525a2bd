"""The wrinkle model fit (core.pipeline.wrinkles) on decoders whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

from core.pipeline import wrinkles as wr

S = 32


def _mask():
    yy, xx = np.mgrid[0:S, 0:S]
    return (xx - S / 2) ** 2 + (yy - S / 2) ** 2 < (S / 2.5) ** 2


def _linear_decoder(rank: int, seed: int = 0, noise: float = 0.0, quad: float = 0.0):
    rng = np.random.default_rng(seed)
    mask = _mask()
    fixed = rng.normal(size=(S, S)) * 1e-3
    base = rng.normal(size=(S, S)) * 1e-4
    maps = rng.normal(size=(rank, S, S)) * 1e-4
    A = rng.normal(size=(rank, 53))

    def decode(x):
        x = np.asarray(x, np.float64)
        w = x @ A.T
        d = base + np.einsum("nk,khw->nhw", w, maps)
        if quad:
            d = d + quad * np.einsum("n,hw->nhw", (x[:, :5] ** 2).sum(1), maps[0])
        if noise:
            d = d + noise * np.random.default_rng(1).normal(size=d.shape)
        return (d * mask + fixed).astype(np.float32)

    return decode, mask, fixed


def test_orthogonal_design_blocks_are_orthogonal():
    z = wr.orthogonal_design(70, np.random.default_rng(0))
    assert z.shape == (70, 53)
    block = z[:53]
    np.testing.assert_allclose(block @ block.T, 53 * np.eye(53), atol=1e-9)
    x = wr.sample_prior(200, np.random.default_rng(1), "orthogonal")
    assert x.shape == (200, 53) and x[:, 50].min() >= 0 and x[:, 50].max() <= 0.5


def test_a_low_rank_linear_decoder_is_recovered_exactly():
    decode, mask, fixed = _linear_decoder(rank=6)
    model, info = wr.fit_wrinkle_model(decode, mask, n_samples=64, n_holdout=16, n_components=16)
    assert info.rank == 6
    assert model.maps.shape == (16, S, S) and model.matrix.shape == (16, 53) and model.base.shape == (S, S)
    assert info.explained_variance > 0.995  # the light ridge shrinks the coefficients by ~1.5%
    np.testing.assert_array_equal(model.maps[6:], 0)  # beyond the rank: zero maps
    rng = np.random.default_rng(5)
    for _ in range(3):
        exp, jaw = rng.normal(size=50), np.array([0.2, 0.01, -0.02])
        want = decode(np.concatenate([exp, jaw])[None])[0]
        got = model.evaluate(exp, jaw)
        np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want - fixed).max())  # ridge shrinkage
    # outside the mask the displacement is the fixed map, exactly
    np.testing.assert_allclose(model.base[~mask], fixed[~mask], atol=1e-7)
    np.testing.assert_array_equal(model.maps[:, ~mask], 0)
    # maps have unit RMS over the mask
    np.testing.assert_allclose(np.sqrt((model.maps[:6][:, mask] ** 2).mean(1)), 1.0, rtol=1e-4)


def test_rank_truncation_and_nonlinearity_lower_the_held_out_variance_honestly():
    decode, mask, _ = _linear_decoder(rank=30, seed=2, quad=0.3)
    model, info = wr.fit_wrinkle_model(decode, mask, n_samples=64, n_holdout=32, n_components=4)
    assert 0.0 < info.explained_variance < 0.9
    assert info.train_explained_variance >= info.explained_variance - 0.05
    # the reported value is the held-out one computed the documented way
    X = wr.sample_prior(200, np.random.default_rng(9))
    D = decode(X.astype(np.float32)).reshape(200, -1)[:, mask.ravel()]
    P = np.stack([model.evaluate(x[:50], x[50:]) for x in X]).reshape(200, -1)[:, mask.ravel()]
    ev_fresh = wr.explained_variance(D, P)
    assert abs(ev_fresh - info.explained_variance) < 0.15


def test_bad_arguments():
    decode, mask, _ = _linear_decoder(rank=2)
    with pytest.raises(ValueError):
        wr.fit_wrinkle_model(decode, mask, n_samples=1)
    with pytest.raises(ValueError):
        wr.fit_wrinkle_model(decode, mask, n_components=0)
    with pytest.raises(ValueError, match="decoder returned"):
        wr.fit_wrinkle_model(decode, np.ones((8, 8), bool), n_samples=8, n_holdout=2)


def test_fit_is_deterministic():
    decode, mask, _ = _linear_decoder(rank=3, noise=1e-6)
    a, _ = wr.fit_wrinkle_model(decode, mask, n_samples=20, n_holdout=4, n_components=3)
    b, _ = wr.fit_wrinkle_model(decode, mask, n_samples=20, n_holdout=4, n_components=3)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.matrix, b.matrix)
