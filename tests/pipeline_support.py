"""Helpers shared by the pipeline tests (no tests here): oracle networks and detectors, an asset home
with the TEST FLAME model and a random-weight checkpoint, synthetic photos rendered from known codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.frontend.landmarks import FaceDetection, LandmarkDetector
from core.networks import FlameCodes, build_deca_networks

_HOMES: dict[str, Path] = {}


def random_checkpoint_home(tmp_path_factory, test_flame_pkl: Path, deca_data_dir: Path, seed: int = 0) -> Path:
    """An asset home holding the TEST FLAME model, DECA's data and a random checkpoint saved in the official
    layout (built once per session, whichever module asks first)."""
    key = f"{seed}"
    if key not in _HOMES:
        from core.assets import AssetManager
        from core.networks import save_deca_checkpoint

        root = tmp_path_factory.mktemp("pipeline_home")
        torch.manual_seed(seed)
        ckpt = save_deca_checkpoint(build_deca_networks(), root / "downloads" / "deca_model.tar")
        home = root / "home"
        AssetManager(home).install(flame=test_flame_pkl, deca=ckpt, data=deca_data_dir, progress=lambda m: None)
        ckpt.unlink()  # the installed copy is enough
        _HOMES[key] = home
    return _HOMES[key]


def oracle_networks(shape, exp, pose, cam, detail=None, tex=None, light=None, seed: int = 0):
    """DecaNetworks whose encoders ignore the image and return the given codes (the last linear layers'
    weights are zero, their biases the codes); D_detail keeps its random weights."""
    torch.manual_seed(seed)
    nets = build_deca_networks()
    codes = FlameCodes(
        shape=torch.as_tensor(np.asarray(shape, np.float32)[None]),
        tex=torch.as_tensor(np.zeros(50, np.float32) if tex is None else np.asarray(tex, np.float32))[None],
        exp=torch.as_tensor(np.asarray(exp, np.float32)[None]),
        pose=torch.as_tensor(np.asarray(pose, np.float32)[None]),
        cam=torch.as_tensor(np.asarray(cam, np.float32)[None]),
        light=torch.as_tensor(np.zeros((9, 3), np.float32) if light is None else np.asarray(light, np.float32))[None],
    )
    d = np.random.default_rng(seed).normal(size=128).astype(np.float32) if detail is None else detail
    with torch.no_grad():
        nets.E_flame.layers[2].weight.zero_()
        nets.E_flame.layers[2].bias.copy_(codes.to_vector()[0])
        nets.E_detail.layers[2].weight.zero_()
        nets.E_detail.layers[2].bias.copy_(torch.as_tensor(np.asarray(d, np.float32)))
    return nets.eval()


class OracleDetector(LandmarkDetector):
    """Returns fixed landmarks for every image (the rendered ones)."""

    name = "oracle"

    def __init__(self, landmarks: np.ndarray):
        self.landmarks = np.asarray(landmarks, np.float64)

    def detect(self, image):
        lm = self.landmarks
        box = np.array([lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()])
        return [FaceDetection(box=box, landmarks=lm, score=1.0, detector="oracle")]

    @classmethod
    def availability(cls):
        return True, "test oracle"


def crop_frame_camera(cam_render, render_size: int, offset, crop) -> np.ndarray:
    """The camera that shows a mesh in the network crop exactly where `cam_render` puts it in a
    `render_size` render pasted at `offset` (x, y) into the photo. `crop` maps photo to crop pixels and is
    a scaled translation (DECA's crop)."""
    M = np.asarray(crop.matrix, np.float64)
    a = M[0, 0]
    assert abs(M[1, 1] - a) < 1e-12 and abs(M[0, 1]) < 1e-12 and abs(M[1, 0]) < 1e-12
    b = M[:2, 2]
    s, tx, ty = (float(v) for v in cam_render)
    n = crop.size
    k = a * render_size / n
    c = (2 * a / n) * (render_size / 2 + np.asarray(offset, np.float64)) + 2 * b / n - 1
    s2 = k * s
    return np.array([s2, tx + c[0] / s2, ty - c[1] / s2])


def known_codes(seed: int = 3, yaw: float = 0.35):
    rng = np.random.default_rng(seed)
    shape = rng.normal(size=100).astype(np.float32)
    exp = (rng.normal(size=50) * 0.8).astype(np.float32)
    pose = np.array([0.08, yaw, -0.05, 0.18, 0.01, 0.0], np.float32)
    return shape, exp, pose


def framing_camera(face_model, shape, exp, pose, fill: float = 0.8) -> np.ndarray:
    """A camera that centres the posed head's vertices and fills `fill` of the image."""
    with torch.no_grad():
        g = face_model.geometry(torch.as_tensor(shape)[None], torch.as_tensor(exp)[None], torch.as_tensor(pose)[None],
                                torch.tensor([[1.0, 0.0, 0.0]]))
    v = g.vertices[0].numpy()
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    centre = (lo + hi) / 2
    s = 2 * fill / float((hi - lo).max())
    return np.array([s, -centre[0], -centre[1]], np.float32)


def uv_pattern(size: int = 512) -> np.ndarray:
    """A smooth colourful (size, size, 3) UV image, far from the mean skin texture."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    return np.stack([0.2 + 0.6 * xx, 0.85 - 0.6 * yy, 0.5 + 0.35 * np.sin(2 * np.pi * (xx + yy))], -1).astype(np.float32)
