"""A **test model** in FLAME's exact file format, on FLAME's real topology. Not FLAME.

The licensed FLAME model cannot enter the repo or CI, yet the whole pipeline (landmark embedding,
UVs, masks, renderer, Blender rig) must run on the real 5023-vertex topology. This generator builds a
model from what we may use: DECA's template mesh (geometry, faces, UVs) and FLAME 2020's joint
regressor. Its bases are smooth synthetic fields (the first 10 expression components are region-driven,
landmark-placed expressions: smile, lips apart, pucker, brow raise/furrow, eye closure, ...), its skinning weights and pose correctives are derived
from the geometry. It is written as the official pickle is: a Python-2-compatible protocol-2 pickle with
chumpy objects and a scipy sparse `J_regressor`, so the same loader path is exercised.

The file carries `deca_blender_test_model = True`; everything downstream labels it as a test model.
"""
from __future__ import annotations

import contextlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from core.flame.landmarks import LandmarkEmbedding, read_official_embedding
from core.atomic import atomic_write_bytes
from core.flame.model_file import FLAME_PARENTS, FlameModelData
from core.flame.template import read_template_obj
from core.testmodels.expressions import region_expression_basis

N_SHAPE, N_EXPR, N_POSE_FEATURES = 300, 100, 36


def _smooth_fields(points: np.ndarray, n: int, rng: np.random.Generator, max_freq: float, n_waves: int = 6) -> np.ndarray:
    """(V, 3) normalised points -> (V, 3, n) smooth random vector fields of unit RMS (random Fourier features)."""
    V = points.shape[0]
    out = np.empty((V, 3, n))
    for k in range(n):
        freq = rng.normal(size=(n_waves, 3)) * max_freq
        phase = rng.uniform(0, 2 * np.pi, size=n_waves)
        amp = rng.normal(size=(n_waves, 3))
        field = np.sin(points @ freq.T + phase) @ amp  # (V, 3)
        out[:, :, k] = field / (np.sqrt((field ** 2).mean()) + 1e-12)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _eyeball_masks(v: np.ndarray, faces: np.ndarray, eyes: np.ndarray) -> list[np.ndarray]:
    """FLAME's eyeballs are separate connected components; pick the one whose centre is at each eye joint."""
    from scipy.sparse.csgraph import connected_components

    n = v.shape[0]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = sp.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    masks = []
    for eye in eyes:
        centres = {lab: v[labels == lab].mean(0) for lab in np.unique(labels)}
        best = min(centres, key=lambda lab: np.linalg.norm(centres[lab] - eye))
        masks.append(labels == best)
    return masks


def _skinning_weights(v: np.ndarray, faces: np.ndarray, joints: np.ndarray, mouth_y: float) -> np.ndarray:
    """Geometry-derived weights: eyeballs to the eyes, the lower face to the jaw, head vs neck by height."""
    root, neck, jaw, eye_l, eye_r = joints
    W = np.zeros((v.shape[0], 5))
    eye_l_mask, eye_r_mask = _eyeball_masks(v, faces, joints[3:5])
    # Head above the neck joint follows the neck; the base of the neck stays with the root.
    head = _sigmoid((v[:, 1] - (root[1] + neck[1]) / 2) / 0.012)
    lower_face = _sigmoid((mouth_y - v[:, 1]) / 0.004) * _sigmoid((v[:, 2] - (jaw[2] - 0.01)) / 0.008)
    lower_face *= _sigmoid((v[:, 1] - (jaw[1] - 0.09)) / 0.01)  # not the neck below the chin
    W[:, 0] = 1.0 - head
    W[:, 2] = head * lower_face
    W[:, 1] = head * (1.0 - lower_face)
    for mask, j in ((eye_l_mask, 3), (eye_r_mask, 4)):
        W[mask] = 0.0
        W[mask, j] = 1.0
    return W / W.sum(1, keepdims=True)


def build_test_flame(template_obj: str | Path, joint_regressor_npz: str | Path,
                     embedding: LandmarkEmbedding | str | Path | None = None, seed: int = 0) -> FlameModelData:
    """The test model's arrays (float64). See the module docstring."""
    mesh = read_template_obj(template_obj)
    with np.load(joint_regressor_npz, allow_pickle=False) as z:
        J_reg = np.asarray(z["joint_regressor"], dtype=np.float64)
    v = mesh.vertices
    rng = np.random.default_rng(seed)
    centre = v.mean(0)
    scale = np.abs(v - centre).max()
    p = (v - centre) / scale  # roughly [-1, 1]
    joints = J_reg @ v

    # Identity: smooth, low frequency, decaying like a PCA spectrum (std 4 mm down to ~0.1 mm).
    id_std = 0.004 / (1.0 + np.arange(N_SHAPE) / 4.0)
    shape_basis = _smooth_fields(p, N_SHAPE, rng, max_freq=2.0) * id_std
    # Expression: localised on the front of the face, higher frequency, 3 mm decaying.
    front = _sigmoid((v[:, 2] - centre[2]) / 0.01) * _sigmoid((v[:, 1] - (joints[0, 1] + 0.06)) / 0.01)
    exp_std = 0.003 / (1.0 + np.arange(N_EXPR) / 6.0)
    expr_basis = _smooth_fields(p, N_EXPR, rng, max_freq=4.0) * front[:, None, None] * exp_std
    # The first components look like expressions (smile, lips apart, pucker, brows, eye closure, ...; see
    # core/testmodels/expressions.py), so that fits, renders and Blender sliders can be judged by eye;
    # the rest stay random smooth bumps. The random fields are drawn first, so every other array is
    # unchanged.
    eyeballs = np.logical_or(*_eyeball_masks(v, mesh.faces, joints[3:5]))
    region = region_expression_basis(v, mesh.faces, eyeballs)
    expr_basis[:, :, : region.shape[2]] = region

    if embedding is None:
        mouth_y = joints[2, 1] - 0.02  # without landmarks: 2 cm below the jaw joint
    else:
        emb = embedding if isinstance(embedding, LandmarkEmbedding) else read_official_embedding(embedding)
        f = mesh.faces[emb.full_faces[48:68]]
        mouth_y = float((v[f] * emb.full_bary[48:68, :, None]).sum(1)[:, 1].mean())
    weights = _skinning_weights(v, mesh.faces, joints, mouth_y)

    # Pose correctives: smooth fields living where a joint's influence changes (w (1 - w) peaks there),
    # scaled so a 0.3 rad rotation moves those vertices by about a millimetre.
    posedirs = np.zeros((v.shape[0], 3, N_POSE_FEATURES))
    fields = _smooth_fields(p, N_POSE_FEATURES, rng, max_freq=3.0)
    for j in range(1, 5):
        boundary = 4.0 * weights[:, j] * (1.0 - weights[:, j])
        block = slice(9 * (j - 1), 9 * j)
        posedirs[:, :, block] = fields[:, :, block] * boundary[:, None, None] * 0.004

    return FlameModelData(
        v_template=v.copy(), shape_basis=shape_basis, expr_basis=expr_basis, posedirs=posedirs,
        J_regressor=J_reg, weights=weights, parents=FLAME_PARENTS.copy(), faces=mesh.faces.copy(),
        source="deca-blender test model (synthetic, not FLAME)", is_test_model=True, variant="test",
    )


# --------------------------------------------------------------------------------------------------
# Writing the official pickle form


def _fake_chumpy_modules() -> dict[str, types.ModuleType]:
    """Stand-in modules so pickle records `chumpy.ch.Ch` etc. exactly as chumpy itself would."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    reordering = types.ModuleType("chumpy.reordering")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            # The attributes chumpy keeps in __dict__ (its caches are dropped by __getstate__).
            self.__dict__.update({"x": x, "_dirty_vars": {"x"}, "_itr": None, "_depends_on_deps": {},
                                  "_make_dense": False, "_make_sparse": False})

    class Select:
        def __init__(self, a, idxs: np.ndarray, preferred_shape: tuple) -> None:
            self.__dict__.update({"a": a, "idxs": idxs, "preferred_shape": preferred_shape,
                                  "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {},
                                  "_make_dense": False, "_make_sparse": False})

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch.Ch, reordering.Select = Ch, Select
    chumpy.ch, chumpy.reordering = ch, reordering
    return {"chumpy": chumpy, "chumpy.ch": ch, "chumpy.reordering": reordering}


@contextlib.contextmanager
def _registered(modules: dict[str, types.ModuleType]):
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = old


def official_pickle_dict(data: FlameModelData, modules: dict[str, types.ModuleType]) -> dict:
    """The dict the official file holds, with chumpy objects where FLAME's release has them."""
    Ch = modules["chumpy.ch"].Ch
    Select = modules["chumpy.reordering"].Select
    shapedirs = np.concatenate([data.shape_basis, data.expr_basis], axis=2)
    kintree = np.stack([np.where(data.parents < 0, 4294967295, data.parents), np.arange(len(data.parents))]).astype(np.int64)
    # `weights` goes through chumpy's Select (a reordering of a flat Ch), as chumpy-built models do.
    flat_w = Ch(data.weights.ravel().copy())
    weights = Select(flat_w, np.arange(data.weights.size), data.weights.shape)
    return {
        "v_template": Ch(data.v_template.copy()),
        "f": data.faces.astype(np.uint32),
        "shapedirs": Ch(shapedirs),
        "posedirs": data.posedirs.copy(),
        "J_regressor": sp.csc_matrix(data.J_regressor),
        "weights": weights,
        "kintree_table": kintree,
        "J": data.J_regressor @ data.v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        "deca_blender_test_model": True,
    }


def write_official_pickle(data: FlameModelData, path: str | Path) -> None:
    """Write `data` as FLAME's release does: protocol 2 (Python 2 readable), chumpy, sparse regressor."""
    modules = _fake_chumpy_modules()
    with _registered(modules):
        payload = pickle.dumps(official_pickle_dict(data, modules), protocol=2, fix_imports=True)
    atomic_write_bytes(Path(path), lambda f: f.write(payload))


def write_test_flame(out_path: str | Path, deca_data_dir: str | Path, joint_regressor_npz: str | Path, seed: int = 0) -> Path:
    """Generate the test model from DECA's data folder and FLAME's joint regressor; returns the path."""
    deca_data_dir = Path(deca_data_dir)
    data = build_test_flame(deca_data_dir / "head_template.obj", joint_regressor_npz,
                            deca_data_dir / "landmark_embedding.npy", seed=seed)
    write_official_pickle(data, out_path)
    return Path(out_path)
