"""A result folder for the Blender tests, built WITHOUT the reconstruction pipeline.

The add-on consumes `result.npz` (docs/CONVENTIONS.md) plus a few images. These tests must not depend on
DECA's checkpoint or on the pipeline, so this module assembles a plausible result from the FLAME-format
**test model**: a random identity and expression, a jaw pose, the rig from `build_rig`, vertices from
`FlameLayer`, UVs from DECA's template and a random (but smooth) wrinkle model. Everything the add-on
shows is therefore known exactly and the tests can compare Blender's numbers with independent ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

N_WRINKLE_MAPS = 16
DETAIL_SIZE = 256


def _smooth_maps(rng: np.random.Generator, n: int, size: int, amplitude: float) -> np.ndarray:
    """(n, size, size) smooth random fields: a coarse random grid upsampled bilinearly."""
    coarse = rng.normal(size=(n, 9, 9))
    t = np.linspace(0, 8, size)
    i0 = np.clip(np.floor(t).astype(int), 0, 7)
    f = t - i0
    rows = coarse[:, i0, :] * (1 - f)[None, :, None] + coarse[:, i0 + 1, :] * f[None, :, None]
    out = rows[:, :, i0] * (1 - f)[None, None, :] + rows[:, :, i0 + 1] * f[None, None, :]
    return out * amplitude


def _write_png16(path: Path, values01: np.ndarray) -> None:
    from PIL import Image

    arr = np.clip(np.round(values01 * 65535), 0, 65535).astype(np.uint16)
    Image.fromarray(arr).save(path)  # uint16 -> a 16-bit grayscale PNG


def _write_rgb(path: Path, rgb01: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.clip(np.round(rgb01 * 255), 0, 255).astype(np.uint8), mode="RGB").save(path)


def make_codes(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "shape": rng.normal(size=100) * 0.8,
        "exp": rng.normal(size=50) * 0.7,
        # DECA pose: global axis-angle (kept out of the rig) then jaw axis-angle.
        "pose": np.array([0.05, -0.12, 0.02, 0.18, 0.01, -0.015]),
    }


def flame_vertices(model, shape: np.ndarray, exp: np.ndarray, full_pose: np.ndarray) -> np.ndarray:
    """FLAME's forward model through the project's torch layer (independent of Blender). full_pose (5, 3)."""
    import torch

    from core.flame import FlameLayer

    layer = FlameLayer(model, n_shape=100, n_expression=exp.shape[0]).to(torch.float64)
    with torch.no_grad():
        out = layer(torch.as_tensor(shape[None], dtype=torch.float64), torch.as_tensor(exp[None], dtype=torch.float64),
                    pose=torch.as_tensor(np.asarray(full_pose).reshape(1, 15), dtype=torch.float64))
    return out.vertices[0].numpy()


def build_result_folder(folder: str | Path, model, deca_data_dir: str | Path, seed: int = 0,
                        n_expression: int = 50) -> Path:
    """Write a complete result folder (result.npz + images) for `model` (the test FLAME). Returns the folder."""
    from core.flame.template import read_template_obj
    from core.results.result import ReconstructionResult, WrinkleModel
    from core.results.rig import build_rig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1000)
    codes = make_codes(seed)
    shape, pose = codes["shape"], codes["pose"]
    exp = np.zeros(n_expression)
    exp[:50] = codes["exp"]
    rig = build_rig(model, shape, n_expression=n_expression)
    full_pose = np.zeros((5, 3))
    full_pose[0], full_pose[2] = pose[:3], pose[3:]
    vertices = flame_vertices(model, shape, exp, full_pose)
    template = read_template_obj(Path(deca_data_dir) / "head_template.obj")

    base = _smooth_maps(rng, 1, DETAIL_SIZE, 4e-4)[0]
    maps = _smooth_maps(rng, N_WRINKLE_MAPS, DETAIL_SIZE, 1.0)
    maps /= np.sqrt((maps ** 2).mean(axis=(1, 2), keepdims=True))
    matrix = rng.normal(size=(N_WRINKLE_MAPS, 53)) * 1e-4
    wrinkles = WrinkleModel(base.astype(np.float32), maps.astype(np.float32), matrix.astype(np.float32), 0.93)
    displacement = wrinkles.evaluate(exp[:50], pose[3:]).astype(np.float32)
    displacement_scale = 0.01

    result = ReconstructionResult(
        source_image=str(folder / "photo.jpg"), image_size=np.array([480, 360]), face_index=0,
        shape=shape, exp=exp[:50], pose=pose, cam=np.array([8.0, 0.01, 0.02]), tex=np.zeros(50),
        light=rng.normal(size=(9, 3)) * 0.1, detail=rng.normal(size=128),
        vertices=vertices, landmarks2d=rng.uniform(100, 300, size=(68, 2)), landmarks3d=rng.normal(size=(68, 3)) * 0.05,
        detected_landmarks=rng.uniform(100, 300, size=(68, 2)), crop_matrix=np.eye(3),
        faces=model.faces, uv_coords=template.uv_coords, uv_faces=template.uv_faces,
        rig_template=rig.template, rig_expr_basis=rig.expr_basis, rig_posedirs=rig.posedirs, rig_weights=rig.weights,
        rig_joints=rig.joints, rig_parents=rig.parents, rig_shape_basis=rig.shape_basis,
        displacement=displacement, displacement_scale=displacement_scale, wrinkles=wrinkles,
        flame_model="deca-blender test model (synthetic, not FLAME)", is_test_model=True,
    )
    result.save(folder)

    # Images beside it, as the pipeline writes them (UV images top row first = v 1).
    yy, xx = np.mgrid[0:512, 0:512] / 511.0
    albedo = np.stack([0.55 + 0.25 * xx, 0.42 + 0.1 * yy, 0.35 + 0.05 * np.sin(12 * xx)], -1)
    checker = ((np.floor(xx * 16) + np.floor(yy * 16)) % 2)[..., None] * 0.06
    _write_rgb(folder / "albedo.png", albedo - checker)
    _write_rgb(folder / "texture.png", albedo * 0.9)
    _write_png16(folder / "displacement.png", (displacement / displacement_scale + 1) / 2)
    normals = np.zeros((DETAIL_SIZE, DETAIL_SIZE, 3))
    normals[..., 2] = 1.0
    _write_rgb(folder / "detail_normals.png", normals * 0.5 + 0.5)
    return folder
