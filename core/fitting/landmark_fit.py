"""Stage 1: pose, camera, shape and expression from 68 2D landmarks, with Gaussian priors.

The model's fitting-form landmarks (`FaceModel.geometry(...).landmarks2d`: the 51 inner points plus the
yaw-dependent jaw contour) are projected by the orthographic camera into the crop's image NDC and compared
with the target landmarks in the same NDC. The energy is a negative log posterior in crop pixels:

    E = sum_i w_i |p_i - q_i|^2 / (2 sigma^2)            (p projected, q target, pixels of a 224 crop)
      + |shape|^2 / 2 + |exp|^2 / (2 sigma_exp^2) + |jaw|^2 / (2 sigma_jaw^2)

Initialisation is closed form: an affine camera fitted to the 51 inner landmarks of the mean face gives the
head rotation (its nearest scaled rotation) and scale; the translation follows by least squares once the
rotation is applied through FLAME (the root joint is not at the origin). Then Levenberg-Marquardt
optimises the rigid parameters alone, then everything. The problem is small (68 points, <= 159 unknowns
per photo) and `LandmarkModel` evaluates only the ~200 vertices the landmarks sit on, so exact Jacobians
(forward-mode autodiff) are cheap and the solver converges in a few tens of steps. The camera is
optimised as ``(log s, s0 tx, s0 ty)`` (s0 the initial scale), which keeps the scale positive.

With `shared_shape` the batch is one person: one shape vector for every photo.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from core.fitting.codes import FitCodes
from core.fitting.landmark_model import LandmarkModel, project

CROP_SIZE = 224
N_INNER = 51  # landmarks 17..67 (0-based): brows, nose, eyes, mouth


def default_landmark_weights() -> np.ndarray:
    """Per-landmark weights: the jaw contour (a sliding, approximate correspondence) counts half."""
    w = np.ones(68)
    w[:17] = 0.5
    return w


@dataclass
class LandmarkFitConfig:
    sigma_px: float = 1.0  # landmark noise, pixels of a 224 crop
    shape_std: float = 1.0
    exp_std: float = 1.0
    jaw_std: float = 0.3  # radians, the jaw's opening (about FLAME's x axis)
    # The jaw's rotation about the vertical (y) and forward (z) axes: a real jaw barely twists sideways,
    # yet 68 points on an extreme expression let the fit explain mouth shapes by a 0.5-0.6 rad twist.
    jaw_side_std: float = 0.05  # radians
    dense_sigma_px: float = 2.0  # noise of the dense (MediaPipe) points, pixels of a 224 crop
    rigid_iterations: int = 10  # Levenberg-Marquardt iterations on pose and camera alone
    iterations: int = 30  # Levenberg-Marquardt iterations of the full fit
    landmark_weights: np.ndarray = field(default_factory=default_landmark_weights)
    fit_shape: bool = True
    fit_exp: bool = True


@dataclass
class LandmarkFitInfo:
    reprojection_px: np.ndarray  # (B,) mean landmark distance, pixels of the 224 crop
    energy: float
    iterations: int


# ------------------------------------------------------------------------------------------ helpers

def rotation_to_axis_angle(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def nearest_scaled_rotation(A: np.ndarray) -> tuple[np.ndarray, float]:
    """(2, 3) affine camera rows -> the rotation whose first two rows are nearest, and the scale."""
    U, S, Vt = np.linalg.svd(A, full_matrices=False)  # (2,2), (2,), (2,3)
    rows = U @ Vt
    r3 = np.cross(rows[0], rows[1])
    return np.stack([rows[0], rows[1], r3]), float(S.mean())


@torch.no_grad()
def rigid_init(face_model, target_ndc: torch.Tensor, shape: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form global pose (B, 6) and camera (B, 3) from target landmarks (B, 68, 2) in image NDC."""
    B = target_ndc.shape[0]
    dev, dt = target_ndc.device, target_ndc.dtype
    shape = torch.zeros(B, face_model.flame.n_shape, device=dev, dtype=dt) if shape is None else shape
    zeros_exp = torch.zeros(B, face_model.flame.n_expression, device=dev, dtype=dt)
    rest = face_model.flame(shape, zeros_exp, torch.zeros(B, 6, device=dev, dtype=dt))
    X = rest.landmarks2d[:, 17:].double().cpu().numpy()  # (B, 51, 3) inner landmarks, neutral pose
    J0 = rest.joints[:, 0].double().cpu().numpy()
    q = target_ndc[:, 17:].double().cpu().numpy().copy()
    q[..., 1] *= -1  # image NDC has y down; FLAME has y up
    poses, cams = [], []
    for b in range(B):
        Xh = np.concatenate([X[b], np.ones((N_INNER, 1))], 1)
        M, *_ = np.linalg.lstsq(Xh, q[b], rcond=None)  # (4, 2): q = X A^T + c
        R, s = nearest_scaled_rotation(M[:3].T)
        poses.append(np.concatenate([rotation_to_axis_angle(R), np.zeros(3)]))
        # With global rotation R about the root joint: X' = R (X - J0) + J0; q = s (X'_xy + t).
        Xp = (X[b] - J0[b]) @ R.T + J0[b]
        t = (q[b] / s - Xp[:, :2]).mean(0)
        cams.append(np.array([s, t[0], t[1]]))
    pose = torch.as_tensor(np.stack(poses), device=dev, dtype=dt)
    cam = torch.as_tensor(np.stack(cams), device=dev, dtype=dt)
    # One refinement of scale and translation with the actual (posed, contour-selected) landmarks.
    g = face_model.geometry(shape, zeros_exp, pose, torch.cat([torch.ones_like(cam[:, :1]), torch.zeros_like(cam[:, 1:])], 1))
    P = g.landmarks2d.double().cpu().numpy()  # = X'_xy with y negated
    tq = target_ndc.double().cpu().numpy()
    for b in range(B):
        A = np.concatenate([P[b].reshape(-1, 1), np.tile(np.eye(2), (68, 1)) * np.array([1.0, -1.0])], 1)
        sol, *_ = np.linalg.lstsq(A, tq[b].reshape(-1), rcond=None)  # q = s P + s (tx, -ty)
        s = sol[0]
        cam[b] = torch.as_tensor([s, sol[1] / s, sol[2] / s], dtype=dt)
    return pose, cam


class _Layout:
    """Where each code lives in the flat parameter vector of the Levenberg-Marquardt solver."""

    def __init__(self, B: int, n_shape: int, n_exp: int, shared_shape: bool) -> None:
        self.B, self.S, self.E, self.shared = B, n_shape, n_exp, shared_shape
        self.n_shape_vec = 1 if shared_shape else B
        self.per = n_exp + 3 + 3 + 3  # exp, global, jaw, (log s, u, v)
        self.size = self.n_shape_vec * n_shape + B * self.per

    def pack(self, codes: FitCodes, s0: torch.Tensor) -> torch.Tensor:
        shape = codes.shape.mean(0, keepdim=True) if self.shared else codes.shape
        cam = codes.cam
        cam_p = torch.cat([torch.log(cam[:, :1].abs() / s0), cam[:, 1:] * s0], 1)
        per = torch.cat([codes.exp[:, :self.E], codes.pose[:, :3], codes.pose[:, 3:], cam_p], 1)
        return torch.cat([shape[:, :self.S].reshape(-1), per.reshape(-1)])

    def unpack(self, x: torch.Tensor, s0: torch.Tensor):
        n = self.n_shape_vec * self.S
        shape = x[:n].reshape(self.n_shape_vec, self.S)
        if self.shared:
            shape = shape.expand(self.B, -1)
        per = x[n:].reshape(self.B, self.per)
        E = self.E
        exp, glob, jaw, cam_p = per[:, :E], per[:, E:E + 3], per[:, E + 3:E + 6], per[:, E + 6:]
        cam = torch.cat([s0 * cam_p[:, :1].exp(), cam_p[:, 1:] / s0], 1)
        return shape, exp, torch.cat([glob, jaw], 1), cam

    def mask(self, rigid_only: bool, fit_shape: bool, fit_exp: bool, device) -> torch.Tensor:
        """Which entries are free."""
        m = torch.zeros(self.size, dtype=torch.bool, device=device)
        n = self.n_shape_vec * self.S
        if not rigid_only and fit_shape:
            m[:n] = True
        per = m[n:].view(self.B, self.per)
        E = self.E
        per[:, E:E + 3] = True  # global rotation
        per[:, E + 6:] = True  # camera
        if not rigid_only:
            per[:, E + 3:E + 6] = True  # jaw
            if fit_exp:
                per[:, :E] = True
        return m


def jaw_prior_std(cfg: LandmarkFitConfig, like: torch.Tensor) -> torch.Tensor:
    """(3,) prior std of the jaw's axis-angle: opening (x), then the sideways twists (y, z)."""
    return like.new_tensor([cfg.jaw_std, cfg.jaw_side_std, cfg.jaw_side_std])


def _residuals(lm: LandmarkModel, layout: _Layout, x: torch.Tensor, s0: torch.Tensor, target: torch.Tensor,
               sqrt_w: torch.Tensor, cfg: LandmarkFitConfig, rows: torch.Tensor) -> torch.Tensor:
    """Residual vector r with energy E = |r|^2 / 2 (see the module docstring). ``target`` and ``sqrt_w``
    hold the 68 landmarks, then the dense points when `lm` has them (their weights carry 1 / sigma)."""
    shape, exp, pose, cam = layout.unpack(x, s0)
    p = project(lm.landmarks(shape, exp, pose, rows), cam)
    r_lmk = ((p - target) * (CROP_SIZE / 2.0) * sqrt_w[..., None] / cfg.sigma_px).reshape(-1)
    n = layout.n_shape_vec * layout.S
    return torch.cat([r_lmk, x[:n] / cfg.shape_std, exp.reshape(-1) / cfg.exp_std,
                      (pose[:, 3:] / jaw_prior_std(cfg, pose)).reshape(-1)])


def spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve A x = b for a symmetric positive definite (n, n) A and (n,) b, by Cholesky.

    Why not `torch.linalg.solve`: its LU runs LAPACK's threaded getrf, which on a loaded 2-core machine
    with 2 torch threads took 36-350 ms for n = 159-285 (measured; 0.1-0.4 ms on one thread), while the
    Cholesky factorisation stays at 0.1-0.5 ms either way. LU is the fallback if A is not numerically
    positive definite."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        return torch.linalg.solve(A, b)
    return torch.cholesky_solve(b[:, None], L)[:, 0]


def _levenberg_marquardt(fun, x: torch.Tensor, free: torch.Tensor, rows_of, iterations: int,
                         tol: float = 1e-10) -> tuple[torch.Tensor, int]:
    """Minimise |fun(x, rows)|^2 / 2 over x[free] (Marquardt's diagonal damping, exact Jacobians by
    forward-mode autodiff; the contour rows are re-selected at every accepted step)."""
    from torch.func import jacfwd

    idx = torch.nonzero(free).squeeze(1)
    lam = 1e-3
    rows = rows_of(x)
    r = fun(x, rows)
    cost = 0.5 * float((r.double() ** 2).sum())
    it = 0
    for it in range(1, iterations + 1):
        def sub(z, rows=rows):
            return fun(x.index_put((idx,), z), rows)
        J = jacfwd(sub)(x[idx]).double()  # (R, n_free)
        g = J.T @ r.double()
        H = J.T @ J
        diag = H.diagonal().clamp_min(1e-12)
        improved = False
        for _ in range(10):
            step = spd_solve(H + lam * torch.diag(diag), -g)
            x_new = x.index_put((idx,), x[idx] + step.to(x.dtype))
            rows_new = rows_of(x_new)
            r_new = fun(x_new, rows_new)
            cost_new = 0.5 * float((r_new.double() ** 2).sum())
            if math.isfinite(cost_new) and cost_new < cost:
                improved = True
                break
            lam *= 4.0
        if not improved:
            break
        rel = (cost - cost_new) / max(cost, 1e-30)
        x, r, rows, cost = x_new, r_new, rows_new, cost_new
        lam = max(lam / 3.0, 1e-9)
        if rel < tol:
            break
    return x, it


def fit_landmarks(face_model, target_ndc: torch.Tensor, init: FitCodes | None = None,
                  config: LandmarkFitConfig | None = None, shared_shape: bool = False,
                  landmark_weights: torch.Tensor | None = None, dense=None) -> tuple[FitCodes, LandmarkFitInfo]:
    """Fit FLAME codes to 68 landmarks per face.

    Args:
        face_model: a `core.model.face_model.FaceModel` (any device/dtype; codes follow it).
        target_ndc: (B, 68, 2) target landmarks in the crop's image NDC.
        init: starting codes (e.g. the regressor's); default: closed-form rigid init, zero shape/exp.
        shared_shape: one identity for the whole batch (several photos of one person).
        landmark_weights: (B, 68) or (68,) extra per-landmark weights (e.g. 0 for missing points).
        dense: optional `DenseTargets`: MediaPipe points with their FLAME embedding, fitted besides the 68
            (noise ``config.dense_sigma_px``; their weights, e.g. 0 for faces without them).
    Returns:
        the fitted codes (detached; tex and light copied from `init`) and `LandmarkFitInfo`.
    """
    cfg = config or LandmarkFitConfig()
    ref = face_model.flame.v_template
    target = target_ndc.to(ref).detach()
    B = target.shape[0]
    if init is None:
        init = FitCodes.zeros(B, device=ref.device, dtype=ref.dtype)
        pose, cam = rigid_init(face_model, target)
        init.pose[:, :3] = pose[:, :3]
        init.cam = cam
    init = FitCodes(**{k: v.detach().to(ref) for k, v in init.__dict__.items()})
    w = torch.as_tensor(cfg.landmark_weights, dtype=ref.dtype, device=ref.device).expand(B, 68).clone()
    if landmark_weights is not None:
        w = w * torch.as_tensor(landmark_weights, dtype=ref.dtype, device=ref.device).expand(B, 68)
    sqrt_w = w.clamp_min(0).sqrt()
    lm = _landmark_model(face_model)
    if dense is not None:  # the dense points after the 68, each weighted as sigma_px / dense_sigma_px
        lm = LandmarkModel(face_model.flame, dense.faces, dense.bary)
        target = torch.cat([target, dense.target_ndc.to(ref)], 1)
        wd = torch.as_tensor(dense.weights, dtype=ref.dtype, device=ref.device).expand(B, -1)
        sqrt_w = torch.cat([sqrt_w, wd.clamp_min(0).sqrt() * (cfg.sigma_px / cfg.dense_sigma_px)], 1)
    n_shape = min(init.shape.shape[1], face_model.flame.n_shape)
    n_exp = min(init.exp.shape[1], face_model.flame.n_expression)
    layout = _Layout(B, n_shape, n_exp, shared_shape)
    s0 = init.cam[:, :1].abs().clamp_min(1e-6)
    x = layout.pack(FitCodes(init.shape[:, :n_shape], init.exp[:, :n_exp], init.pose, init.cam, init.tex,
                             init.light), s0)

    def fun(x, rows):
        return _residuals(lm, layout, x, s0, target, sqrt_w, cfg, rows)

    def rows_of(x):
        return lm.rows(layout.unpack(x, s0)[2])

    x, it1 = _levenberg_marquardt(fun, x, layout.mask(True, cfg.fit_shape, cfg.fit_exp, ref.device), rows_of,
                                  cfg.rigid_iterations)
    x, it2 = _levenberg_marquardt(fun, x, layout.mask(False, cfg.fit_shape, cfg.fit_exp, ref.device), rows_of,
                                  cfg.iterations)
    with torch.no_grad():
        shape, exp, pose, cam = layout.unpack(x, s0)
        r = fun(x, rows_of(x))
        p = project(lm.landmarks(shape, exp, pose), cam)
        dist = ((p - target) * (CROP_SIZE / 2.0)).norm(dim=-1)[:, :68]
    shape_full = init.shape.clone()
    shape_full[:, :n_shape] = shape
    exp_full = init.exp.clone()
    exp_full[:, :n_exp] = exp
    codes = FitCodes(shape_full.detach().clone(), exp_full.detach(), pose.detach().clone(), cam.detach().clone(),
                     init.tex.clone(), init.light.clone())
    return codes, LandmarkFitInfo(reprojection_px=dist.mean(1).cpu().numpy(),
                                  energy=0.5 * float((r.double() ** 2).sum()), iterations=it1 + it2)


@dataclass
class DenseTargets:
    """Dense points for `fit_landmarks`: ``target_ndc`` (B, N, 2) in the crop's image NDC, their FLAME
    embedding ``faces`` (N,) / ``bary`` (N, 3), and ``weights`` (B, N) or (N,)."""

    target_ndc: torch.Tensor
    faces: np.ndarray
    bary: np.ndarray
    weights: np.ndarray | torch.Tensor


def _landmark_model(face_model) -> LandmarkModel:
    """One `LandmarkModel` per face model (cached on it; rebuilt if the model moved device/dtype)."""
    lm = getattr(face_model, "_fitting_landmark_model", None)
    v = face_model.flame.v_template
    if lm is None or lm.J_template.device != v.device or lm.J_template.dtype != v.dtype:
        lm = LandmarkModel(face_model.flame)
        object.__setattr__(face_model, "_fitting_landmark_model", lm)
    return lm
