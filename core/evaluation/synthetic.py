"""Synthetic ground truth: photos of the face model with known shape, expression, pose, light and albedo.

Each face is rendered with the project's renderer (`FaceModel.render`) over a varied background and saved
with everything needed to score a reconstruction against it:

- ``<name>.png``: the photo (8-bit RGB), at one of several resolutions (224, 448, 640x480 by default);
- ``<name>.npz``: the ground truth (see `GT_KEYS`): posed and neutral meshes, their 68 and 7 (NoW)
  landmarks, the projected 68 fitting-form landmarks in photo pixels, the codes, the light and albedo
  parameters, and ``scan_mask`` (the vertices a scanner would see: FLAME's eyeballs, separate rigid
  components, are excluded);
- optionally ``<name>.obj``: the posed ground-truth mesh;
- ``manifest.json``: the configuration, the model used and the list of faces.

Sampling (per face, from one seeded generator): shape ~ N(0, 1) over the first 100 coefficients; expression
~ N(0, 0.8) over 50; yaw uniform in [-60, 60] degrees, pitch in [-15, 15], roll in [-10, 10]; jaw opened
0 to 0.25 rad; SH light = ambient (with a colour tint) plus a frontal-hemisphere directional term and small
second-order terms, resampled until the shading of the visible face stays positive; albedo = the mean
texture with a per-channel gain and a smooth multiplicative variation (or FLAME's texture space when the
assets have one, codes ~ N(0, 1)); the face spans 30 to 60 % of the image side at a random offset. The
renders are 2x supersampled and box-filtered (anti-aliased silhouettes) and get Gaussian noise
(sigma 1 %) before 8-bit quantisation. Backgrounds: smooth colour gradients, multi-scale noise, or (when a
folder of real photos is given, read at run time only) blurred, enlarged crops of their corners.

With the test model (`core.testmodels.synthetic_flame`) these are renders of a FLAME-topology model with
synthetic bases, NOT of FLAME: accuracy measured on them is about the method and the renderer.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from core.evaluation.now import now_landmarks

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((224, 224), (448, 448), (480, 640))  # (H, W)
GT_KEYS = (
    "image_size", "landmarks2d", "vertices", "neutral_vertices", "faces", "landmarks3d", "neutral_landmarks3d",
    "now_landmarks", "neutral_now_landmarks", "scan_mask", "shape", "exp", "pose", "cam", "render_size",
    "render_offset", "light", "tex", "albedo_gain", "background", "is_test_model", "flame_model",
)


@dataclass
class SyntheticConfig:
    n: int = 50
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    max_yaw_deg: float = 60.0
    max_pitch_deg: float = 15.0
    max_roll_deg: float = 10.0
    max_jaw_rad: float = 0.25
    shape_std: float = 1.0
    exp_std: float = 0.8
    n_shape: int = 100
    n_exp: int = 50
    face_fraction: tuple[float, float] = (0.3, 0.6)
    noise_std: float = 0.01
    supersample: int = 2
    seed: int = 0
    write_obj: bool = False
    yaws_deg: Sequence[float] | None = None  # explicit yaws (else uniform in +-max_yaw_deg)


def scan_vertex_mask(faces: np.ndarray, n_vertices: int) -> np.ndarray:
    """Vertices of the largest connected component (FLAME's skin surface; the eyeballs are separate)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    g = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
    _, labels = connected_components(g, directed=False)
    used = np.zeros(n_vertices, bool)
    used[f.ravel()] = True
    counts = np.bincount(labels[used], minlength=labels.max() + 1)
    return labels == counts.argmax()


def euler_to_axis_angle(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) Rx(pitch) Rz(roll) (radians) as an axis-angle vector."""
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler("YXZ", [yaw, pitch, roll])
    return r.as_rotvec()


# ------------------------------------------------------------------------------------------ backgrounds

def _smooth_field(rng: np.random.Generator, size: tuple[int, int], cells: int, channels: int = 3) -> np.ndarray:
    """(C, H, W) smooth random field in about [-1, 1]: a coarse random grid upsampled bicubically."""
    h, w = size
    coarse = torch.as_tensor(rng.uniform(-1, 1, size=(1, channels, cells, cells)), dtype=torch.float32)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0].numpy()


def _background(rng: np.random.Generator, size: tuple[int, int], photos: Sequence[Path]) -> tuple[np.ndarray, str]:
    """(3, H, W) float background in [0, 1] and its kind."""
    h, w = size
    kinds = ["gradient", "noise"] + (["photo"] if photos else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "gradient":
        c0, c1 = rng.uniform(0.05, 0.95, size=(2, 3, 1, 1))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        t = (np.cos(angle) * xx + np.sin(angle) * yy) * 0.5 + 0.5
        bg = c0 * (1 - t) + c1 * t
    elif kind == "noise":
        base = rng.uniform(0.1, 0.9, size=(3, 1, 1))
        bg = base + sum(amp * _smooth_field(rng, (h, w), cells) for amp, cells in ((0.25, 4), (0.12, 16), (0.06, 64)))
    else:
        from core.frontend import read_image

        img = read_image(photos[int(rng.integers(len(photos)))])
        ph, pw = img.shape[:2]
        side = int(min(ph, pw) * rng.uniform(0.25, 0.4))
        y0 = 0 if rng.uniform() < 0.5 else ph - side
        x0 = 0 if rng.uniform() < 0.5 else pw - side
        patch = torch.as_tensor(img[y0:y0 + side, x0:x0 + side]).permute(2, 0, 1)[None]
        if rng.uniform() < 0.5:
            patch = patch.flip(-1)
        patch = F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)
        patch = F.avg_pool2d(F.pad(patch, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
        bg = patch[0].numpy()
    return np.clip(bg, 0, 1).astype(np.float32), kind


# ------------------------------------------------------------------------------------------ light, albedo

def sample_light(rng: np.random.Generator) -> np.ndarray:
    """(9, 3) plausible SH light: ambient with a tint, a directional term from the front hemisphere, and
    small second-order terms."""
    from core.render.shading import SH_CONSTANTS

    c = SH_CONSTANTS
    light = np.zeros((9, 3))
    tint = rng.uniform(0.9, 1.1, size=3)
    ambient = rng.uniform(0.55, 0.85)
    light[0] = ambient / c[0] * tint
    d = rng.normal(size=3)
    d[2] = abs(d[2]) + 0.6  # towards the viewer's side
    d /= np.linalg.norm(d)
    strength = rng.uniform(0.15, 0.45)
    light[1:4] = (d * strength / c[1])[:, None] * tint[None]
    light[4:] = rng.normal(scale=0.04, size=(5, 3)) / np.asarray(c[4:])[:, None]
    return light


def _albedo(face_model, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(1, 3, S, S) albedo, its tex code (zeros without a texture space) and per-channel gain."""
    gain = rng.uniform(0.75, 1.15, size=3) * rng.uniform(0.85, 1.15)
    tex = np.zeros(50, np.float32)
    if face_model.has_texture_space:
        tex = rng.normal(size=50).astype(np.float32)
        base = face_model.albedo(torch.as_tensor(tex)[None].to(face_model.mean_texture))
    else:
        base = face_model.mean_texture
    s = base.shape[-1]
    variation = 1.0 + 0.08 * torch.as_tensor(_smooth_field(rng, (s, s), 6), dtype=base.dtype)[None]
    albedo = (base * torch.as_tensor(gain, dtype=base.dtype)[None, :, None, None] * variation).clamp(0, 1)
    return albedo, tex, gain.astype(np.float32)


# ------------------------------------------------------------------------------------------ generation

@dataclass
class SyntheticFace:
    name: str
    image: np.ndarray  # (H, W, 3) float32 in [0, 1] (before 8-bit quantisation)
    gt: dict = field(repr=False)


class SyntheticGenerator:
    """Renders synthetic faces of `face_model` (a `core.model.face_model.FaceModel`)."""

    def __init__(self, face_model, config: SyntheticConfig | None = None, photos_dir: str | Path | None = None,
                 flame_description: str = "") -> None:
        self.model = face_model
        self.config = config or SyntheticConfig()
        self.photos: list[Path] = []
        if photos_dir is not None and Path(photos_dir).is_dir():
            self.photos = sorted(p for p in Path(photos_dir).iterdir()
                                 if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith("."))
        faces = face_model.flame.faces.cpu().numpy()
        self.faces = faces
        self.scan_mask = scan_vertex_mask(faces, face_model.flame.v_template.shape[0])
        self.flame_description = flame_description or getattr(face_model.assets.flame, "source", "")

    def _light_ok(self, light: np.ndarray, normals: torch.Tensor) -> bool:
        from core.render import sh_shading

        front = normals[normals[:, 2] > 0.2]
        sh = sh_shading(front[None], torch.as_tensor(light, dtype=normals.dtype)[None])[0]
        return bool(sh.min() > 0.15) and bool(sh.max() < 1.6)

    @torch.no_grad()
    def sample(self, index: int) -> SyntheticFace:
        cfg = self.config
        m = self.model
        dev, dt = m.mean_texture.device, m.mean_texture.dtype
        rng = np.random.default_rng([cfg.seed, index])
        h, w = cfg.sizes[index % len(cfg.sizes)]
        shape = (rng.normal(size=cfg.n_shape) * cfg.shape_std).astype(np.float32)
        exp = (rng.normal(size=cfg.n_exp) * cfg.exp_std).astype(np.float32)
        if cfg.yaws_deg is not None:
            yaw = math.radians(float(cfg.yaws_deg[index % len(cfg.yaws_deg)]))
        else:
            yaw = math.radians(rng.uniform(-cfg.max_yaw_deg, cfg.max_yaw_deg))
        pitch = math.radians(rng.uniform(-cfg.max_pitch_deg, cfg.max_pitch_deg))
        roll = math.radians(rng.uniform(-cfg.max_roll_deg, cfg.max_roll_deg))
        jaw = np.array([rng.uniform(0, cfg.max_jaw_rad), rng.normal(scale=0.02), rng.normal(scale=0.02)])
        pose = np.concatenate([euler_to_axis_angle(yaw, pitch, roll), jaw]).astype(np.float32)

        t = lambda a: torch.as_tensor(a, dtype=dt, device=dev)[None]  # noqa: E731
        zero_cam = t(np.array([1.0, 0.0, 0.0]))
        geom = m.geometry(t(shape), t(exp), t(pose), zero_cam)
        neutral = m.flame(t(shape), t(np.zeros_like(exp)), t(np.zeros_like(pose)))

        # Camera: the fitting-form landmarks span `fraction` of the square render's side, at an offset
        # that keeps them inside the (possibly non-square) photo.
        side = max(h, w)
        lm3 = geom.landmarks2d_3d[0, :, :2].cpu().numpy()
        lo, hi = lm3.min(0), lm3.max(0)
        extent = float((hi - lo).max())
        frac = rng.uniform(*cfg.face_fraction) * min(h, w) / side
        s = 2.0 * frac / extent
        centre = (lo + hi) / 2.0
        room = np.array([w / side, h / side]) - frac * 1.2  # NDC half-room around the centre, x and y
        off = rng.uniform(-1, 1, size=2) * np.maximum(room, 0.0) * 0.5
        # xy_ndc = s * (X + t), y negated: put the landmark centre at NDC (off_x, off_y)
        cam = np.array([s, off[0] / s - centre[0], -off[1] / s - centre[1]], np.float32)

        normals = _vertex_normals(geom.vertices, m.flame.faces)[0]
        for _ in range(20):
            light = sample_light(rng)
            if self._light_ok(light, normals):
                break
        albedo, tex, gain = _albedo(m, rng)
        bg, kind = _background(rng, (side, side), self.photos)
        ss = max(1, int(cfg.supersample))
        bg_t = torch.as_tensor(bg, dtype=dt, device=dev)[None]
        bg_ss = F.interpolate(bg_t, scale_factor=ss, mode="nearest") if ss > 1 else bg_t
        r = m.render(geom.vertices, t(cam), albedo=albedo.to(dev, dt), light=t(light.astype(np.float32)),
                     background=bg_ss, image_size=side * ss)
        img = r.image
        if ss > 1:
            img = F.avg_pool2d(img, ss)
        img = img[0].cpu().numpy().transpose(1, 2, 0)
        r0, c0 = (side - h) // 2, (side - w) // 2
        img = img[r0:r0 + h, c0:c0 + w]
        img = np.clip(img + rng.normal(scale=cfg.noise_std, size=img.shape), 0, 1).astype(np.float32)

        from core.render import orthographic_project

        lmk_ndc = orthographic_project(geom.landmarks2d_3d, t(cam))[0, :, :2].cpu().numpy().astype(np.float64)
        lmk_px = (lmk_ndc + 1.0) * side / 2.0 - np.array([c0, r0])
        l3 = geom.landmarks3d[0].cpu().numpy()
        n3 = neutral.landmarks3d[0].cpu().numpy()
        gt = {
            "image_size": np.array([h, w], np.int64),
            "landmarks2d": lmk_px.astype(np.float64),
            "vertices": geom.vertices[0].cpu().numpy().astype(np.float64),
            "neutral_vertices": neutral.vertices[0].cpu().numpy().astype(np.float64),
            "faces": self.faces.astype(np.int64),
            "landmarks3d": l3.astype(np.float64),
            "neutral_landmarks3d": n3.astype(np.float64),
            "now_landmarks": now_landmarks(l3).astype(np.float64),
            "neutral_now_landmarks": now_landmarks(n3).astype(np.float64),
            "scan_mask": self.scan_mask.copy(),
            "shape": shape, "exp": exp, "pose": pose, "cam": cam,
            "render_size": np.int64(side), "render_offset": np.array([r0, c0], np.int64),
            "light": light.astype(np.float32), "tex": tex, "albedo_gain": gain,
            "background": np.str_(kind), "is_test_model": np.bool_(bool(m.assets.flame.is_test_model)),
            "flame_model": np.str_(self.flame_description),
        }
        return SyntheticFace(f"synth_{index:04d}", img, gt)

    def write(self, out_dir: str | Path, n: int | None = None, progress=None) -> list[Path]:
        """Generate `n` faces (default config.n) into `out_dir`; returns the ground-truth .npz paths."""
        from core.frontend import write_png

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        n = self.config.n if n is None else int(n)
        paths, names = [], []
        for i in range(n):
            face = self.sample(i)
            write_png(out / f"{face.name}.png", face.image)
            np.savez(out / f"{face.name}.npz", **face.gt)
            if self.config.write_obj:
                write_simple_obj(out / f"{face.name}.obj", face.gt["vertices"], face.gt["faces"])
            paths.append(out / f"{face.name}.npz")
            names.append(face.name)
            if progress:
                progress(i + 1, n, face.name)
        cfg = asdict(self.config)
        cfg["sizes"] = [list(s) for s in self.config.sizes]
        manifest = {
            "generator": "core.evaluation.synthetic", "config": cfg, "faces": names,
            "flame_model": self.flame_description,
            "is_test_model": bool(self.model.assets.flame.is_test_model),
            "note": ("renders of a FLAME-topology TEST model with synthetic bases, not FLAME"
                     if self.model.assets.flame.is_test_model else ""),
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return paths


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    from core.render import vertex_normals

    return vertex_normals(vertices, faces)


def write_simple_obj(path: str | Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """A plain OBJ (v and f lines, 1-based)."""
    from core.obj import write_obj

    return write_obj(path, vertices, faces)


def load_ground_truth(path: str | Path) -> dict:
    """Read a ground-truth .npz written by `SyntheticGenerator.write`."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
