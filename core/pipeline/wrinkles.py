"""The wrinkle model: a linear model of DECA's detail decoder per person, for animation in Blender.

DECA's detail decoder ``D_detail([jaw, exp, detail])`` is a deep network; Blender cannot run it per frame.
For one person (one detail code) the result stores

    d(x) ~= base + sum_k (M x)_k * maps_k,      x = [exp (50), jaw axis-angle (3)]

with ``K`` maps (default 16), a ``K x 53`` matrix ``M`` and a base map, where ``d`` is the displacement the
result stores (``uv_z * uv_face_eye_mask + fixed_displacement``, metres along the normal). Two fits produce
it (``Reconstructor(wrinkle_fit=...)``, recorded as the result's ``wrinkle_fit``):

- **shared** (default): the maps and ``M`` are shared by every person of a checkpoint (`fit_shared_basis`,
  computed once and cached on disk by `core.pipeline.wrinkle_cache`); per person only the base map is
  fitted (`fit_on_shared`, 12 decodes) and the held-out explained variance measured leave-one-out on those
  same decodes (`loo_explained_variance`; before: 8 further decodes).
- **person**: the reduced-rank regression of one person's decodes (`fit_wrinkle_model`, 56 + 16 decodes);
  also the fallback when no cache can be written (the result's ``wrinkle_fit_note`` says why).

**The expression prior** both fits sample (documented in the result as ``extra_wrinkle_prior``):

- ``exp ~ N(0, 1)`` per component: DECA regularises its expression codes towards 0 with an L2 prior,
  so real codes are of order one.
- jaw axis-angle: x (opening) ``~ N(0.15, 0.12)`` clipped to ``[0, 0.5]`` rad; y, z ``~ N(0, 0.03)``.

**The shared fit.** ``D_detail``'s first layer is linear in ``[jaw, exp, detail]``, so a person enters the
decoder only through an offset of that layer; the response to ``x`` changes with the person only through
which units the offset switches on. The basis pools 8 detail codes, each with one orthogonal block of 53
prior samples (below): every code's decodes are centred about their own mean, one ridge regression (GCV,
one mean per code) on the pooled standardised inputs, then its rank-``K`` truncation. The codes are
``E_detail``'s on 8 synthetic renders of the face model (`core.evaluation.synthetic`, yaw within 30
degrees, cropped from their known landmarks): no user photo is involved, and measured with both kinds of
random weights their codes lie among those of the real photos in ``../shared/photos``, while Gaussian codes
do not (tiny weights: pooled ``N(0, s^2)`` codes, s = 0.3 to 3, gave a held-out explained variance of
0.43-0.48 against 0.79 for the renders' codes). A person's base is ``mean_i (d(x_i) - M x_i . maps)`` over
12 i.i.d. prior samples. Fitting more than the base per person did not help: a ridge correction of the
shared coefficients, fitted from 16 decodes of the person, changed the explained variance by -0.01 to
+0.001 (``lambda`` 100-300; smaller ``lambda`` lowered it by up to 0.03).

Measured (held-out explained variance on 48 fresh prior samples, mean [min] over the 9 people of
``../shared/photos``, whose codes the shared fit never saw; input-dependent weights
`core.networks.responsive` / PyTorch's default tiny weights): per-person fit, 56 samples 0.45 [0.43] /
0.76 [0.75], 106 samples 0.52 [0.51] / 0.79 [0.78]; shared basis from 8 render codes with the base from 8,
12, 16 decodes 0.55 / 0.57 / 0.58 [0.57] and 0.77 / 0.78 / 0.79 [0.78]; from 16 codes 0.57 / 0.58 / 0.59
and 0.77 / 0.78 / 0.79; the same shared basis without the rank-16 truncation 0.64 / 0.92 (the rank is what
the Blender side evaluates; a better rank-16 model needs a better basis, not more per-person samples).
Cost: 8 x 53 = 424 decodes plus 8 renders and ``E_detail`` once per checkpoint (several seconds; then a
~2 MB file), 12 decodes per photo.

**Fewer decodes per photo** (issue 11: <= 0.4 s per photo on 2 cores). The decodes are nearly all of the
per-photo cost (~20 ms each on 2 quiet cores), so their number is what counts. Measured on the 9 photos
(fresh explained variance on 48 samples, mean [min], input-dependent / tiny weights; two draws each):
base from 8 i.i.d. samples 0.561 [0.540] / 0.789 [0.776], 12: 0.570 [0.552] / 0.794 [0.785], 16: 0.576
[0.554] / 0.796 [0.786]; antithetic pairs ``x, 2 mu - x`` (which cancel the odd part of what the shared
response leaves) 8: 0.560 / 0.794, 12: 0.570 / 0.798, and an orthogonal design 8: 0.557 / 0.785, 12: 0.562
/ 0.794 -- no better than i.i.d. on the input-dependent weights, so the base stays the mean over 12 i.i.d.
samples (the model is the one of before, bit for bit). What went is the 8 held-out decodes: the base is the
only per-person parameter, so leaving each sample out of it in turn is a closed form (`loo_explained_variance`)
and a held-out measurement on this person at no cost. Against the 48 fresh samples it erred by 0.016 on
average (max 0.037) with 12 samples (8 samples: 0.042, max 0.10), input-dependent; 0.019 (max 0.034) tiny;
on a synthetic family (tests) over 30 draws as well as 12 extra held-out decodes would (mean |error| 0.057
against 0.068), erring low by ~0.03 (a base from 11 samples predicts a little worse than one from 12).
Per photo 20 -> 12 decodes: 0.60 of the decoding time; measured (interleaved in one process, 2 threads, load
4.6-5.1 on 2 cores, median of 5, tiny / input-dependent weights): 0.57 / 0.49 of the 12 + 8 fit, and 0.43 /
0.49 with `core.networks.runtime.PersonDecoder`'s chunked decoding; a second run (load 5.4, median of 8):
0.66 / 0.53 and 0.53 / 0.56 (0.629 / 0.496 s on the quiet machine before: extrapolated 0.27-0.33 /
0.24-0.28 s). Also measured and not taken: a cheaper per-checkpoint basis from fewer
decodes per code (8 codes x 32 or 24 instead of 53: 0.59 / 0.52 of its CPU time, but a fresh explained
variance of 0.543 / 0.537 instead of 0.568 input-dependent and 0.782 / 0.771 instead of 0.793 tiny, mean
over the 9 photos; the build is ~75 % decodes, ~20 % renders and ``E_detail``).

**The per-person fit.** ``N`` samples (default 56) follow an *orthogonal design*: ``x = mu + sigma * z``
where the rows of ``z`` come in blocks of 53 orthogonal vectors of length ``sqrt(53)`` (marginally close to
the Gaussian prior). This keeps the least-squares problem well conditioned with few samples (measured with
random weights: held-out explained variance 0.70 with 64 orthogonal samples against 0.59 with 64
i.i.d. ones). The fit is a reduced-rank regression: ridge least squares of the masked texels on the
standardised ``x`` with ``lambda`` chosen per person by generalised cross-validation (below), then the
rank-``K`` truncation of the fitted values by SVD (the maps are its right singular vectors, each scaled to
unit RMS over the mask and signed so its largest texel is positive; ``M`` carries the scale).

**How many samples (per-person fit).** ``D_detail`` costs about 10-13 ms per sample on 2 CPU threads (fp32,
channels_last, batches of 16; bfloat16 is 3x faster but its rounding swamps the expression-driven part of
the map: held-out explained variance 0.56 instead of 0.72 with random weights, so the fit stays in
float32). Measured with random weights on two detail codes, fresh held-out explained variance: 48 samples
0.63/0.62, 53 0.70/0.65, 56 0.71/0.67, 64 0.72/0.69, 80 0.73/0.70 -- the fit needs at least one full block
of 53, and beyond 56 each sample buys little.

**Ridge by generalised cross-validation.** With 56 samples for 53 inputs a fixed light ridge (``lambda = 1``)
nearly interpolates: on a decoder that responds strongly and nonlinearly to its input
(`core.networks.responsive`) it reached a training explained variance of 0.85 but a held-out one of only
0.25. ``lambda`` is now the minimiser of the GCV score ``N * RSS(lambda) / (N - 1 - df(lambda))^2`` over
a log grid from 1 to 1000 (closed form from one SVD of the standardised design, no extra decodes).
Measured on 100 fresh held-out samples of one detail code (input-dependent weights / PyTorch's default
small weights): 56 samples 0.45 / 0.77 (fixed ``lambda = 1``: 0.34 / 0.78), 72 samples 0.48 / 0.79,
106 samples 0.54 / 0.81; the best rank-16 linear model (359 samples) reaches 0.61 / 0.81, the best
rank-53 one 0.67 / 0.93: the remainder is the decoder's nonlinearity.
A model with a hinge per slider (``[x, max(0, x - mean)]``, 106 features, one Math node each in Blender)
did not help on these weights: 56 samples 0.31 / 0.66, 106 samples 0.50 / 0.76, 359 samples 0.60 / 0.81
(the linear model: 0.61 / 0.81), so the stored model stays linear in ``x`` (no change on the Blender side).

**Held-out explained variance** (`explained_variance`): ``1 - (SSE / n) / (SST / (n - 1))`` over the masked
texels of ``n`` further i.i.d. samples from the prior that the fit never saw (16 for the per-person fit;
the shared fit's default is leave-one-out over its 12 base samples, above), ``SST`` about their own mean:
the mean squared error over the unbiased variance (``SSE / SST``, used for the numbers above, overstates the
error by ``n / (n - 1)``: for 48 samples and an explained variance near 0.55 the two definitions differ by
0.01).

All of it is deterministic (fixed seeds). The decoder itself stays available for exact re-evaluation
(`Reconstructor.decode_displacement`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from core import sizes
from core.results.result import WrinkleModel

N_EXP, N_JAW = sizes.N_EXP, sizes.N_JAW  # the decoder's input x = [exp, jaw]
N_INPUT = N_EXP + N_JAW
PRIOR_MEAN = np.r_[np.zeros(N_EXP), 0.15, 0.0, 0.0]
PRIOR_STD = np.r_[np.ones(N_EXP), 0.12, 0.03, 0.03]
JAW_OPEN_RANGE = (0.0, 0.5)
PRIOR_DESCRIPTION = ("exp ~ N(0, 1) x 50; jaw x ~ N(0.15, 0.12) clipped to [0, 0.5] rad, jaw y, z ~ N(0, 0.03); "
                     "fit on an orthogonal design, held out on i.i.d. samples")
DEFAULT_SAMPLES = 56
DEFAULT_HOLDOUT = 16
DEFAULT_COMPONENTS = 16
#: the shared fit (per checkpoint): detail codes pooled, prior samples per code (one orthogonal block)
SHARED_CODES = 8
SHARED_CODE_SAMPLES = N_INPUT
#: the shared fit (per person): samples for the base map, held-out samples for the explained variance
SHARED_SAMPLES = 12
SHARED_HOLDOUT = 0  # 0: leave-one-out over the SHARED_SAMPLES (`loo_explained_variance`); > 0: extra decodes
SHARED_SEED = 0
#: how a result says that its held-out explained variance is the leave-one-out one (its ``wrinkle_holdout`` is 0)
LOO_NOTE = "held-out explained variance: leave-one-out over the {n} base samples"
RIDGE = "gcv"
#: the ridge values generalised cross-validation chooses from (standardised inputs)
RIDGE_GRID = np.geomspace(1.0, 1000.0, 19)

#: decode(x (n, 53) float32 [exp 50, jaw 3]) -> (n, S, S) displacement d(x) as numpy float
DecodeFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class WrinkleFitInfo:
    n_samples: int
    n_holdout: int
    n_components: int
    rank: int  # rank of the fitted values (maps beyond it are zero)
    explained_variance: float
    train_explained_variance: float
    seed: int
    ridge: float = 1.0  # the ridge lambda used (chosen by GCV unless given)
    method: str = "person"  # "person" (the per-person regression) or "shared" (`fit_on_shared`)
    note: str = ""  # how the shared basis was obtained, or why the per-person fit ran instead
    shared_codes: int = 0  # detail codes the shared basis pooled (0: per-person fit)
    shared_samples: int = 0  # decodes the shared basis pooled


@dataclass
class SharedWrinkleBasis:
    """The per-checkpoint part of the shared wrinkle model (`fit_shared_basis`).

    ``maps (K, T)`` over the mask's ``T`` texels (unit RMS, zero beyond ``rank``), ``matrix (K, 53)``: a
    person's model is ``base_p + (x @ matrix.T) @ maps`` with only ``base_p`` fitted per person.
    """
    maps: np.ndarray
    matrix: np.ndarray
    rank: int
    ridge: float
    n_codes: int
    n_samples: int  # decodes pooled over all codes
    train_explained_variance: float  # pooled, about each code's own mean


def _clip_jaw(x: np.ndarray) -> np.ndarray:
    x = np.array(x, dtype=np.float64)
    x[:, N_EXP] = np.clip(x[:, N_EXP], *JAW_OPEN_RANGE)
    return x


def orthogonal_design(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 53) standardised design: blocks of 53 orthogonal rows of length sqrt(53)."""
    blocks, have = [], 0
    while have < n:
        q, r = np.linalg.qr(rng.standard_normal((N_INPUT, N_INPUT)))
        q = q * np.sign(np.diag(r))[None, :]  # a uniformly random orthogonal matrix
        blocks.append(q.T * np.sqrt(N_INPUT))
        have += N_INPUT
    return np.concatenate(blocks)[:n]


def sample_prior(n: int, rng: np.random.Generator, design: str = "iid") -> np.ndarray:
    """(n, 53) samples x = [exp, jaw] from the expression prior ('iid' or 'orthogonal' design)."""
    z = orthogonal_design(n, rng) if design == "orthogonal" else rng.standard_normal((n, N_INPUT))
    return _clip_jaw(PRIOR_MEAN + PRIOR_STD * z)


def gcv_ridge(Xs: np.ndarray, Yc: np.ndarray, grid: np.ndarray = RIDGE_GRID, n_means: int = 1) -> float:
    """The ridge ``lambda`` of ``grid`` minimising generalised cross-validation for centred ``Xs (N, p)``,
    ``Yc (N, T)``: ``N * RSS / (N - n_means - df)^2`` with ``df = sum s^2 / (s^2 + lambda)`` (the
    intercepts take ``n_means``: 1, or one per detail code for the shared fit's pooled data)."""
    N = len(Xs)
    U, s, _ = np.linalg.svd(Xs, full_matrices=False)
    proj = ((U.T @ Yc) ** 2).sum(1)  # energy of Yc along each left singular vector
    total = float((Yc ** 2).sum())
    best, best_lam = np.inf, float(grid[0])
    for lam in grid:
        f = s ** 2 / (s ** 2 + lam)  # shrinkage of each direction
        rss = total - float(((2 * f - f ** 2) * proj).sum())
        dof = N - n_means - float(f.sum())
        if dof <= 0:
            continue
        score = N * rss / dof ** 2
        if score < best:
            best, best_lam = score, float(lam)
    return best_lam


def _reduced_rank(Xs: np.ndarray, B: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rank-``K`` truncation of the fitted values ``F = Xs @ B`` (``Xs (N, 53)`` standardised, ``B (53, T)``).

    Returns ``maps (K, T)`` (the right singular vectors of ``F``, each scaled to unit RMS and signed so its
    largest texel is positive; zero beyond the rank), ``coef (K, 53)`` with ``Xs @ B ~= (Xs @ coef.T) @ maps``
    and the rank.
    """
    # SVD of the fitted values F = Xs @ B (N, T) through its small Gram matrix F F^T = Xs (B B^T) Xs^T
    # (N x N): F = U S Vt, Vt = S^-1 (U^T Xs) B. F itself (N x T, 87 MB for the shared fit) is never formed.
    G = Xs @ (B @ B.T) @ Xs.T
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    tol = max(evals[0], 0.0) * 1e-10 if evals.size else 0.0
    rank = int(min(np.sum(evals > tol), n_components)) if evals.size and evals[0] > 0 else 0
    K, T = int(n_components), B.shape[1]
    maps = np.zeros((K, T))
    coef = np.zeros((K, N_INPUT))
    if rank:
        s = np.sqrt(evals[:rank])
        Vt = ((evecs[:, :rank].T @ Xs) @ B) / s[:, None]  # (rank, T) orthonormal rows
        Ms = Vt @ B.T  # (rank, 53): coefficients of the standardised input
        rms = np.sqrt((Vt ** 2).mean(1))
        rms[rms == 0] = 1.0
        sign = np.sign(Vt[np.arange(rank), np.abs(Vt).argmax(1)])
        sign[sign == 0] = 1.0
        maps[:rank] = Vt / rms[:, None] * sign[:, None]
        coef[:rank] = Ms * (rms * sign)[:, None]
    return maps, coef, rank


def fit_linear_model(X: np.ndarray, Y: np.ndarray, n_components: int, ridge: float | str = RIDGE
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Reduced-rank ridge regression of Y (N, T) on X (N, 53).

    ``ridge``: a ``lambda`` for the standardised inputs, or ``"gcv"`` to choose it (`gcv_ridge`).
    Returns ``base (T,)``, ``maps (K, T)`` (unit RMS, zero beyond the rank), ``matrix (K, 53)`` with
    ``Y ~= base + (X @ matrix.T) @ maps``, and the rank of the fitted values.
    """
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    mx, my = X.mean(0), Y.mean(0)
    Xs = (X - mx) / PRIOR_STD
    Yc = Y - my
    if isinstance(ridge, str):
        if ridge != "gcv":
            raise ValueError(f"ridge must be a number or 'gcv', got {ridge!r}")
        ridge = gcv_ridge(Xs, Yc)
    A = Xs.T @ Xs + ridge * np.eye(N_INPUT)
    B = np.linalg.solve(A, Xs.T @ Yc)  # (53, T), standardised inputs
    maps, coef, rank = _reduced_rank(Xs, B, n_components)
    matrix = coef / PRIOR_STD[None, :]
    base = my - (matrix @ mx) @ maps
    return base, maps, matrix, rank


def explained_variance(Y: np.ndarray, P: np.ndarray) -> float:
    """``1 - (SSE / N) / (SST / (N - 1))`` of predictions P for Y (N, T), SST about Y's mean over samples:
    the mean squared error over the unbiased variance, so that a few held-out samples do not understate
    the explained variance (with ``SSE / SST`` the error is overstated by ``N / (N - 1)``, 14 % for 8)."""
    Y = np.asarray(Y, np.float64)
    N = len(Y)
    sst = float(((Y - Y.mean(0)) ** 2).sum())
    sse = float(((Y - P) ** 2).sum())
    if sst <= 0.0 or N < 2:
        return 1.0 if sse <= 1e-30 else 0.0
    return 1.0 - (sse / N) / (sst / (N - 1))


def _decode_samples(decode: DecodeFn, mask: np.ndarray, X: np.ndarray, Xh: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Decode the fit samples ``X (N, 53)`` and held-out samples ``Xh (H, 53)`` in one batch. Returns the
    flat maps ``(N + H, S*S)``, the masked texel indices, their float64 values for the fit ``Y (N, T)`` and
    the held-out set ``Yh (H, T)``, and the map size ``S``."""
    D = np.asarray(decode(np.concatenate([X, Xh]).astype(np.float32)))
    S = D.shape[-1]
    if D.shape != (len(X) + len(Xh), S, S) or mask.shape != (S, S):
        raise ValueError(f"decoder returned {D.shape}, mask is {mask.shape}")
    flat = D.reshape(len(D), -1)
    idx = np.flatnonzero(mask.ravel())
    return flat, idx, flat[: len(X), idx].astype(np.float64), flat[len(X):, idx].astype(np.float64), S


def fit_wrinkle_model(decode: DecodeFn, mask: np.ndarray, n_samples: int = DEFAULT_SAMPLES,
                      n_holdout: int = DEFAULT_HOLDOUT, n_components: int = DEFAULT_COMPONENTS,
                      seed: int = 0, ridge: float | str = RIDGE) -> tuple[WrinkleModel, WrinkleFitInfo]:
    """Fit the wrinkle model of one person.

    Args:
        decode: the person's decoder, x (n, 53) -> displacement (n, S, S) (``uv_z * mask + fixed``).
        mask: (S, S) bool, texels where details apply (outside them the displacement is constant).
        n_samples, n_holdout, n_components, seed: see the module docstring.
        ridge: ``"gcv"`` (default: chosen per person) or a fixed ``lambda`` for the standardised inputs.
    """
    if n_samples < 2:
        raise ValueError(f"the wrinkle model needs at least 2 samples, got {n_samples}")
    if n_components < 1:
        raise ValueError(f"the wrinkle model needs at least one component, got {n_components}")
    mask = np.asarray(mask, bool)
    rng = np.random.default_rng(seed)
    X = sample_prior(n_samples, rng, "orthogonal")
    Xh = sample_prior(n_holdout, rng, "iid") if n_holdout > 0 else np.zeros((0, N_INPUT))
    flat, idx, Y, Yh, S = _decode_samples(decode, mask, X, Xh)
    if isinstance(ridge, str):
        ridge = gcv_ridge((X - X.mean(0)) / PRIOR_STD, Y - Y.mean(0)) if ridge == "gcv" else ridge
    base_t, maps_t, matrix, rank = fit_linear_model(X, Y, n_components, ridge)
    train_ev = explained_variance(Y, base_t + (X @ matrix.T) @ maps_t)
    ev = explained_variance(Yh, base_t + (Xh @ matrix.T) @ maps_t) if len(Xh) else float("nan")
    # Full maps: outside the mask the displacement is the same in every sample (the fixed map).
    base = flat[: len(X)].mean(0, dtype=np.float64)
    base[idx] = base_t
    maps = np.zeros((n_components, S * S))
    maps[:, idx] = maps_t
    model = WrinkleModel(base.reshape(S, S).astype(np.float32), maps.reshape(-1, S, S).astype(np.float32),
                         matrix.astype(np.float32), float(ev))
    info = WrinkleFitInfo(n_samples=int(n_samples), n_holdout=int(n_holdout), n_components=int(n_components),
                          rank=rank, explained_variance=float(ev), train_explained_variance=float(train_ev),
                          seed=int(seed), ridge=float(ridge))
    return model, info


def fit_shared_basis(X_list: list[np.ndarray], Y_list: list[np.ndarray], n_components: int = DEFAULT_COMPONENTS,
                     ridge: float | str = RIDGE) -> SharedWrinkleBasis:
    """The shared maps and matrix from decodes of several detail codes.

    ``X_list[j] (N_j, 53)``, ``Y_list[j] (N_j, T)``: inputs and masked displacements of detail code ``j``.
    Each code's data is centred about its own mean (a person's base is fitted per person), then one ridge
    regression on the pooled standardised inputs (``lambda`` by GCV with one mean per code) and its rank-``K``
    truncation (`_reduced_rank`).
    """
    if not X_list or len(X_list) != len(Y_list):
        raise ValueError("the shared wrinkle basis needs the same number (>= 1) of input and output blocks")
    if n_components < 1:
        raise ValueError(f"the wrinkle model needs at least one component, got {n_components}")
    Xs, rows = [], 0
    for X, Y in zip(X_list, Y_list):
        X = np.asarray(X, np.float64)
        if X.shape != (len(Y), N_INPUT) or len(Y) < 2 or np.ndim(Y) != 2 or np.shape(Y)[1] != np.shape(Y_list[0])[1]:
            raise ValueError(f"shared fit block: inputs {X.shape}, outputs {np.shape(Y)}")
        Xs.append((X - X.mean(0)) / PRIOR_STD)
        rows += len(X)
    Xs = np.concatenate(Xs)
    Yc = np.empty((rows, np.shape(Y_list[0])[1]))  # filled block by block: one pooled copy in memory
    at = 0
    for Y in Y_list:
        Yc[at:at + len(Y)] = Y
        Yc[at:at + len(Y)] -= Yc[at:at + len(Y)].mean(0)
        at += len(Y)
    if isinstance(ridge, str):
        if ridge != "gcv":
            raise ValueError(f"ridge must be a number or 'gcv', got {ridge!r}")
        ridge = gcv_ridge(Xs, Yc, n_means=len(X_list))
    B = np.linalg.solve(Xs.T @ Xs + ridge * np.eye(N_INPUT), Xs.T @ Yc)
    maps, coef, rank = _reduced_rank(Xs, B, n_components)
    train_ev = 1.0 - float(((Yc - (Xs @ coef.T) @ maps) ** 2).sum()) / max(float((Yc ** 2).sum()), 1e-300)
    return SharedWrinkleBasis(maps=maps.astype(np.float32), matrix=coef / PRIOR_STD[None, :], rank=rank,
                              ridge=float(ridge), n_codes=len(X_list), n_samples=len(Xs),
                              train_explained_variance=float(train_ev))


def loo_explained_variance(Y: np.ndarray, R: np.ndarray) -> float:
    """Leave-one-out `explained_variance` of the shared fit's base on its own samples ``Y (n, T)``, with
    ``R = Y - (X @ matrix.T) @ maps`` their residuals: sample ``i`` is predicted by the model whose base is the
    mean of the *other* ``n - 1`` residuals, so each sample is held out from the model that predicts it. The
    ``n`` models have one parameter fitted per person (the base), so in closed form the error of sample ``i``
    is ``R_i - mean_{j != i} R_j = n / (n - 1) * (R_i - mean_j R_j)``: no refit, no extra decode. A model on
    ``n - 1`` samples predicts a little worse than the stored one on ``n``, so this errs on the low side."""
    Y = np.asarray(Y, np.float64)
    R = np.asarray(R, np.float64)
    n = len(Y)
    if n < 2 or R.shape != Y.shape:
        raise ValueError(f"leave-one-out needs >= 2 samples and residuals of their shape, got {Y.shape} / {R.shape}")
    return explained_variance(Y, Y - n / (n - 1) * (R - R.mean(0)))


def fit_on_shared(decode: DecodeFn, mask: np.ndarray, basis: SharedWrinkleBasis,
                  n_samples: int = SHARED_SAMPLES, n_holdout: int = SHARED_HOLDOUT, seed: int = 0,
                  note: str = "") -> tuple[WrinkleModel, WrinkleFitInfo]:
    """A person's wrinkle model on the shared basis: only the base map is the person's.

    ``n_samples`` i.i.d. prior samples ``x_i`` give ``base = mean_i (d(x_i) - (x_i @ matrix.T) @ maps)``.
    The held-out explained variance: with ``n_holdout = 0`` (`SHARED_HOLDOUT`, the default) leave-one-out
    over those samples (`loo_explained_variance`, no extra decode); with ``n_holdout > 0``, ``n_holdout``
    further i.i.d. samples measure exactly the stored model. The stored model is the same either way (the
    fit samples are drawn first from ``seed``).
    """
    if n_samples < 1:
        raise ValueError(f"the shared wrinkle fit needs at least 1 sample, got {n_samples}")
    mask = np.asarray(mask, bool)
    idx = np.flatnonzero(mask.ravel())
    K = basis.maps.shape[0]
    if basis.maps.shape != (K, idx.size) or basis.matrix.shape != (K, N_INPUT):
        raise ValueError(f"shared basis maps {basis.maps.shape} / matrix {basis.matrix.shape} do not fit a mask "
                         f"of {idx.size} texels")
    if n_holdout == 0 and n_samples < 2:
        raise ValueError(f"a leave-one-out explained variance needs at least 2 samples, got {n_samples}")
    if n_holdout < 0:
        raise ValueError(f"n_holdout must be >= 0 (0: leave-one-out), got {n_holdout}")
    rng = np.random.default_rng(seed)
    X = sample_prior(n_samples, rng, "iid")
    Xh = sample_prior(n_holdout, rng, "iid") if n_holdout > 0 else np.zeros((0, N_INPUT))
    flat, idx, Y, Yh, S = _decode_samples(decode, mask, X, Xh)
    maps_t = basis.maps.astype(np.float64)
    R = Y - (X @ basis.matrix.T) @ maps_t  # what the shared response leaves of each sample
    base_t = R.mean(0)
    train_ev = explained_variance(Y, Y - (R - base_t)) if len(X) > 1 else float("nan")
    if len(Xh):
        ev = explained_variance(Yh, base_t + (Xh @ basis.matrix.T) @ maps_t)
    else:
        ev = loo_explained_variance(Y, R)
    base = flat[: len(X)].mean(0, dtype=np.float64)  # outside the mask: the fixed map, in every sample
    base[idx] = base_t
    maps = np.zeros((K, S * S), np.float32)
    maps[:, idx] = basis.maps
    model = WrinkleModel(base.reshape(S, S).astype(np.float32), maps.reshape(K, S, S),
                         basis.matrix.astype(np.float32), float(ev))
    info = WrinkleFitInfo(n_samples=int(n_samples), n_holdout=int(n_holdout), n_components=K, rank=basis.rank,
                          explained_variance=float(ev), train_explained_variance=float(train_ev), seed=int(seed),
                          ridge=basis.ridge, method="shared", shared_codes=basis.n_codes,
                          note=note if len(Xh) else (f"{note}; " if note else "") + LOO_NOTE.format(n=len(X)),
                          shared_samples=basis.n_samples)
    return model, info
