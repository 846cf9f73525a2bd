"""A synthetic training set rendered from a face model (for tests, benchmarks and debugging the trainer).

Identities get random shape codes (and, with a texture space, albedo codes) and a per-person detail
pattern; each of their images gets a random expression, jaw opening, head rotation, light, framing and
background. Images are rendered with the project's own :class:`~core.model.face_model.FaceModel` at 224,
framed with DECA's crop rule around the projected landmarks (plus jitter), so they look like what
``deca-train prepare`` produces. Each image's ``.npz`` stores the exact projected landmarks, the skin mask
(rendered pixels inside FLAME's UV face mask, eyes excluded) and the ground-truth codes (``gt_*``) used by
:mod:`training.evaluate`.

With the **test model** (``core.testmodels.synthetic_flame``) this is entirely synthetic and licence-free.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.networks import INPUT_SIZE
from core.render import ndc_to_pixels

from .data import write_dataset_info, write_manifest, write_sample

__all__ = ["SyntheticSpec", "sample_codes", "render_images", "make_synthetic_dataset", "framing_camera",
           "full_frame", "detail_fields"]


@dataclass
class SyntheticSpec:
    n_identities: int = 4
    images_per_identity: int = 3
    seed: int = 0
    #: seed of the identities (shape, albedo, detail pattern); -1: same as ``seed``. Two sets with the same
    #: identity seed and different seeds show the same people in new expressions, poses and lighting.
    identity_seed: int = -1
    shape_sigma: float = 0.5
    exp_sigma: float = 1.0
    #: maximum head rotation (degrees, uniform in +-)
    yaw_deg: float = 20.0
    pitch_deg: float = 10.0
    roll_deg: float = 5.0
    #: maximum jaw opening (radians, uniform in [0, max])
    jaw_max: float = 0.2
    #: framing jitter around DECA's crop: relative scale (+-) and shift (+- fraction of the crop)
    scale_jitter: float = 0.05
    shift_jitter: float = 0.03
    #: also render each image's full frame (``<name>.full.png``, what ``data.crop: release`` re-cuts from):
    #: side ``full_size`` px, the face framed at ``full_scale`` x its landmark box (more than the re-crop's 1.8)
    full_image: bool = True
    full_size: int = 320
    full_scale: float = 2.2
    #: amplitude of the per-person + expression-dependent displacement (metres; 0: no details)
    detail_amplitude: float = 0.0005
    #: light: ambient band in [lo, hi] (1 / 0.2821 ~ 3.54 shades a frontal normal to 1), directional spread
    ambient: tuple = (2.4, 3.4)
    directional: float = 0.4
    prefix: str = "id"


def _euler_to_axis_angle(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_euler("xyz", np.stack([pitch, yaw, roll], 1)).as_rotvec()


def framing_camera(landmarks_unit: torch.Tensor, scale: float = 1.25) -> torch.Tensor:
    """Camera ``(B, 3)`` that frames 2D landmarks projected with ``cam = (1, 0, 0)`` (i.e. ``(X, -Y)``) by
    DECA's crop rule: square of side ``(w + h) / 2 * 1.1 * scale`` around the landmarks' extent centre."""
    lo = landmarks_unit.amin(1)
    hi = landmarks_unit.amax(1)
    size = ((hi - lo).sum(-1) / 2.0) * 1.1 * scale
    centre = (lo + hi) / 2.0
    s = 2.0 / size
    return torch.stack([s, -centre[:, 0], centre[:, 1]], dim=1)


def full_frame(face, codes: dict[str, torch.Tensor], full_scale: float, full_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """The full frame's camera (N, 3): the landmark box centred at ``full_scale`` x its size, no jitter; and
    for each image the similarity (N, 3, 3) from full-frame pixels to the stored crop's pixels. Both are
    orthographic views of one mesh, so in NDC ``crop = k full + d`` with ``k = s_c / s_f``,
    ``d = s_c (t_cx - t_fx), -s_c (t_cy - t_fy)``."""
    N = codes["shape"].shape[0]
    with torch.no_grad():
        g = face.geometry(codes["shape"], codes["exp"], codes["pose"], torch.tensor([[1.0, 0.0, 0.0]]).expand(N, 3))
    cam_f = framing_camera(g.landmarks2d, scale=full_scale / 1.1)
    cf, cc = cam_f.double().numpy(), codes["cam"].double().numpy()
    k = cc[:, 0] / cf[:, 0]
    d = np.stack([cc[:, 0] * (cc[:, 1] - cf[:, 1]), -cc[:, 0] * (cc[:, 2] - cf[:, 2])], 1)
    m = np.zeros((N, 3, 3))
    half = INPUT_SIZE / 2.0
    m[:, 0, 0] = m[:, 1, 1] = INPUT_SIZE * k / full_size
    m[:, :2, 2] = half * (d + 1.0 - k[:, None])
    m[:, 2, 2] = 1.0
    return cam_f, m


def _identity_rng(spec: SyntheticSpec) -> np.random.Generator:
    return np.random.default_rng([spec.seed if spec.identity_seed < 0 else spec.identity_seed, 101])


def sample_codes(face, spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Codes of ``n_identities * images_per_identity`` images (identity-major) plus ``identity`` (N,).
    Identity codes come from ``spec``'s identity seed, everything else from ``rng``."""
    n_id, k = spec.n_identities, spec.images_per_identity
    N = n_id * k
    n_shape = face.flame.n_shape
    n_exp = face.flame.n_expression
    id_rng = _identity_rng(spec)
    shape_id = id_rng.normal(size=(n_id, 100)) * spec.shape_sigma
    shape_id[:, n_shape:] = 0.0
    shape = np.repeat(shape_id, k, axis=0)
    tex = np.zeros((N, 50))
    if face.has_texture_space:
        tex = np.repeat(id_rng.normal(size=(n_id, 50)), k, axis=0)
    exp = rng.normal(size=(N, 50)) * spec.exp_sigma
    exp[:, n_exp:] = 0.0
    rad = math.pi / 180.0
    aa = _euler_to_axis_angle(rng.uniform(-1, 1, N) * spec.pitch_deg * rad, rng.uniform(-1, 1, N) * spec.yaw_deg * rad,
                              rng.uniform(-1, 1, N) * spec.roll_deg * rad)
    jaw = np.zeros((N, 3))
    jaw[:, 0] = rng.uniform(0.0, spec.jaw_max, N)
    pose = np.concatenate([aa, jaw], 1)
    light = np.zeros((N, 9, 3))
    amb = rng.uniform(*spec.ambient, size=(N, 1)) * (1.0 + rng.normal(size=(N, 3)) * 0.04)
    light[:, 0] = amb
    light[:, 1:4] = rng.normal(size=(N, 3, 1)) * spec.directional * (1.0 + rng.normal(size=(N, 3, 3)) * 0.03)
    light[:, 4:] = rng.normal(size=(N, 5, 1)) * spec.directional * 0.25
    f32 = torch.float32
    codes = {"shape": shape, "exp": exp, "pose": pose, "tex": tex, "light": light}
    out = {k_: torch.as_tensor(v, dtype=f32) for k_, v in codes.items()}
    out["identity"] = torch.arange(n_id).repeat_interleave(k)
    # framing: DECA's crop around the landmarks, then jitter
    with torch.no_grad():
        g = face.geometry(out["shape"], out["exp"], out["pose"], torch.tensor([[1.0, 0.0, 0.0]]).expand(N, 3))
    cam = framing_camera(g.landmarks2d)
    s = cam[:, 0] * torch.as_tensor(1.0 + rng.uniform(-1, 1, N) * spec.scale_jitter, dtype=f32)
    shift = torch.as_tensor(rng.uniform(-1, 1, (N, 2)) * spec.shift_jitter * 2.0, dtype=f32)  # NDC
    # ndc = s (X + t) (y negated): moving the image by +shift (NDC) is t += (shift_x, -shift_y) / s
    cam = torch.stack([s, cam[:, 1] + shift[:, 0] / s, cam[:, 2] - shift[:, 1] / s], 1)
    out["cam"] = cam
    return out


def detail_fields(n: int, rng: np.random.Generator, size: int = 256, n_waves: int = 24,
                  freq: tuple[float, float] = (4.0, 16.0)) -> torch.Tensor:
    """``(n, 1, size, size)`` smooth random UV fields of unit RMS (sums of oriented sinusoids: wrinkle-like)."""
    u = (np.arange(size) + 0.5) / size
    U, V = np.meshgrid(u, u)
    out = np.zeros((n, 1, size, size))
    for i in range(n):
        f = np.zeros((size, size))
        for _ in range(n_waves):
            k = rng.uniform(*freq)
            ang = rng.uniform(0, np.pi)
            f += rng.normal() * np.sin(2 * np.pi * k * (np.cos(ang) * U + np.sin(ang) * V) + rng.uniform(0, 2 * np.pi))
        out[i, 0] = f / (np.sqrt((f ** 2).mean()) + 1e-12)
    return torch.as_tensor(out, dtype=torch.float32)


def _backgrounds(n: int, rng: np.random.Generator, size: int = INPUT_SIZE) -> torch.Tensor:
    t = torch.linspace(0, 1, size)
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        c0, c1 = torch.as_tensor(rng.uniform(0, 1, 3), dtype=torch.float32), torch.as_tensor(rng.uniform(0, 1, 3), dtype=torch.float32)
        ang = rng.uniform(0, 2 * np.pi)
        ramp = (math.cos(ang) * t[None, :] + math.sin(ang) * t[:, None])
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min() + 1e-9)
        noise = torch.as_tensor(rng.normal(size=(1, size // 8, size // 8)), dtype=torch.float32)
        noise = F.interpolate(noise[None], size=(size, size), mode="bilinear", align_corners=False)[0] * 0.05
        out[i] = (c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp + noise).clamp(0, 1)
    return out


@torch.no_grad()
def render_images(face, codes: dict[str, torch.Tensor], uv_z: torch.Tensor | None, background: torch.Tensor,
                  chunk: int = 8, image_size: int = INPUT_SIZE) -> dict[str, torch.Tensor]:
    """Render ``codes`` (optionally with displacement maps ``uv_z`` (N, 1, 256, 256)) over ``background``
    (N, 3, S, S), S = ``image_size``. Returns images (N, 3, S, S), landmarks (N, 68, 2) pixels, skin masks
    (N, S, S) bool."""
    N = codes["shape"].shape[0]
    imgs, lms, masks = [], [], []
    for a in range(0, N, chunk):
        sl = slice(a, min(a + chunk, N))
        g = face.geometry(codes["shape"][sl], codes["exp"][sl], codes["pose"][sl], codes["cam"][sl])
        B = g.vertices.shape[0]
        albedo = face.albedo(codes["tex"][sl] if face.has_texture_space else None, B)
        normal_map = None
        if uv_z is not None:
            normal_map, _ = face.detail_normals(g.vertices, uv_z[sl])
        r = face.render(g.vertices, codes["cam"][sl], albedo, codes["light"][sl], normal_map=normal_map,
                        background=background[sl], image_size=image_size)
        face_region = F.grid_sample(face.uv_face_mask.expand(B, -1, -1, -1), r.uv_grid, mode="bilinear",
                                    align_corners=False)
        masks.append(((face_region * r.alpha) > 0.5)[:, 0])
        imgs.append(r.image.clamp(0, 1))
        lms.append(ndc_to_pixels(g.landmarks2d, image_size))
    return {"image": torch.cat(imgs), "landmarks": torch.cat(lms), "skin_mask": torch.cat(masks)}


def make_synthetic_dataset(out: str | Path, face, spec: SyntheticSpec | None = None) -> Path:
    """Render ``spec`` into a dataset folder (layout of :mod:`training.data`); returns the folder."""
    spec = spec or SyntheticSpec()
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    codes = sample_codes(face, spec, rng)
    N = codes["shape"].shape[0]
    uv_z = None
    if spec.detail_amplitude > 0:
        id_rng = _identity_rng(spec)
        id_rng.normal(size=(spec.n_identities, 150))  # skip the shape / albedo draws
        person = detail_fields(spec.n_identities, id_rng)
        wr = detail_fields(3, np.random.default_rng(2024), freq=(8.0, 20.0))  # shared wrinkle basis
        e = torch.tanh(codes["exp"][:, :3] / 2.0)  # expression-dependent wrinkles
        uv_z = person[codes["identity"]] + 0.5 * torch.einsum("nk,kchw->nchw", e, wr)
        uv_z = (uv_z * spec.detail_amplitude).clamp(-0.0099, 0.0099)
    bg = _backgrounds(N, rng)
    res = render_images(face, codes, uv_z, bg)
    fulls = [None] * N
    if spec.full_image:
        # its own random stream: the 224 crops stay those of a set rendered without full frames
        bg_full = _backgrounds(N, np.random.default_rng([spec.seed, 11]), spec.full_size)
        cam_f, mats = full_frame(face, codes, spec.full_scale, spec.full_size)
        rf = render_images(face, {**codes, "cam": cam_f}, uv_z, bg_full, image_size=spec.full_size)
        fulls = [{"image": rf["image"][n].permute(1, 2, 0).numpy(), "landmarks": rf["landmarks"][n].numpy(),
                  "skin_mask": rf["skin_mask"][n].numpy(), "matrix": mats[n]} for n in range(N)]
    k = spec.images_per_identity
    rows = []
    for n in range(N):
        ident = int(codes["identity"][n])
        rows.append((f"{spec.prefix}{ident:03d}", f"img{n % k:03d}"))
        write_sample(out / rows[-1][0], rows[-1][1],
                     res["image"][n].permute(1, 2, 0).numpy(), res["landmarks"][n].numpy(),
                     res["skin_mask"][n].numpy(), full=fulls[n],
                     gt_shape=codes["shape"][n].numpy(), gt_exp=codes["exp"][n].numpy(),
                     gt_pose=codes["pose"][n].numpy(), gt_cam=codes["cam"][n].numpy(),
                     gt_light=codes["light"][n].numpy(), gt_tex=codes["tex"][n].numpy())
    info = asdict(spec)
    info["ambient"] = list(spec.ambient)
    write_manifest(out, rows)
    write_dataset_info(out, synthetic=info, face_model=("test model" if face.is_test_model else "FLAME"))
    return out
