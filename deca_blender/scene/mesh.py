"""The head mesh: identity baked into the basis, the template's UVs, skinning vertex groups, shape keys.

Mesh data stays in FLAME space; the mesh object is parented to the armature object (identity parent
inverse), so armature space and mesh space coincide and the Armature modifier reproduces FLAME's linear
blend skinning exactly: Blender evaluates basis + sum(value * (key - basis)) for the shape keys first
(expression and pose correctives: FLAME's v_shaped + B_P), then skins the result.
"""
from __future__ import annotations

import bpy
import numpy as np

from .armature import JOINT_NAMES

EXP_PREFIX = "exp_"
PC_PREFIX = "pc_"
SHAPE_PREFIX = "shape_"
SHAPE_SLIDER = 3.0  # identity sliders: +-3 standard deviations of FLAME's identity, on top of the photo's
N_POSE_CORRECTIVES = 36
EXP_SLIDER = 3.0  # the default slider range is -3..3, widened when the photo's code is beyond it
MAX_SLIDER = 10.0  # Blender's hard limit for shape-key slider ranges


def exp_key_name(i: int) -> str:
    return f"{EXP_PREFIX}{i:03d}"


def pc_key_name(i: int) -> str:
    return f"{PC_PREFIX}{i:03d}"


def create_mesh(name: str, vertices: np.ndarray, faces: np.ndarray, uv_coords: np.ndarray, uv_faces: np.ndarray) -> bpy.types.Mesh:
    me = bpy.data.meshes.new(name)
    V, F = len(vertices), len(faces)
    me.vertices.add(V)
    me.vertices.foreach_set("co", np.ascontiguousarray(vertices, np.float32).ravel())
    me.loops.add(3 * F)
    me.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, np.int32).ravel())
    me.polygons.add(F)
    me.polygons.foreach_set("loop_start", np.arange(0, 3 * F, 3, dtype=np.int32))
    if bpy.app.version < (4, 0, 0):  # loop_total became derived from loop_start in Blender 4.0
        me.polygons.foreach_set("loop_total", np.full(F, 3, np.int32))
    uv = me.uv_layers.new(name="UVMap")
    uv.uv.foreach_set("vector", np.ascontiguousarray(uv_coords[uv_faces], np.float32).ravel())
    me.update(calc_edges=True)
    if hasattr(me, "shade_smooth"):
        me.shade_smooth()
    else:
        me.polygons.foreach_set("use_smooth", np.ones(F, bool))
    return me


def add_vertex_groups(obj, weights: np.ndarray) -> None:
    """One group per joint named like its bone; every non-zero skinning weight, exactly (float32)."""
    weights = np.asarray(weights, np.float64)
    for j, name in enumerate(JOINT_NAMES[: weights.shape[1]]):
        vg = obj.vertex_groups.new(name=name)
        w = weights[:, j]
        nz = np.flatnonzero(w)
        # Vertices sharing a weight (typically exactly 1.0) go in one call; the rest one by one.
        values, inverse = np.unique(w[nz], return_inverse=True)
        counts = np.bincount(inverse)
        add = vg.add
        for u in np.flatnonzero(counts > 1):
            add(nz[inverse == u].tolist(), float(values[u]), "REPLACE")
        singles = counts[inverse] == 1
        for i, value in zip(nz[singles].tolist(), w[nz[singles]].tolist()):
            add((i,), value, "REPLACE")


def add_shape_keys(obj, template: np.ndarray, expr_basis: np.ndarray, posedirs: np.ndarray,
                   exp_values: np.ndarray, n_expression: int) -> None:
    """Basis, exp_000.. (values = the photo's code), pc_000..pc_035 (driven later; value 0 at rest)."""
    template = np.asarray(template, np.float64)
    obj.shape_key_add(name="Basis", from_mix=False)
    obj.data.shape_keys.use_relative = True
    for e in range(n_expression):
        kb = obj.shape_key_add(name=exp_key_name(e), from_mix=False)
        kb.points.foreach_set("co", (template + expr_basis[:, :, e]).astype(np.float32).ravel())
        value = float(exp_values[e]) if e < len(exp_values) else 0.0
        limit = min(MAX_SLIDER, max(EXP_SLIDER, np.ceil(abs(value)) + 1.0))
        kb.slider_min, kb.slider_max = -limit, limit
        kb.value = value
    for p in range(N_POSE_CORRECTIVES):
        kb = obj.shape_key_add(name=pc_key_name(p), from_mix=False)
        kb.points.foreach_set("co", (template + posedirs[:, :, p]).astype(np.float32).ravel())
        kb.slider_min, kb.slider_max = -2.0, 2.0  # entries of R - I lie in [-2, 2]
        kb.value = 0.0


def add_arkit_keys(obj, template: np.ndarray, keys) -> None:
    """ARKit-named keys after the FLAME ones (core.results.arkit.ArkitKey list), value 0, sliders 0..1 as ARKit's
    coefficients. Joint keys (jawOpen, eyeLook*) carry their rotation baked in: they move the mesh without the
    bones, so an engine playing ARKit curves needs no bone track. tongueOut is created empty (FLAME has no tongue)."""
    template = np.asarray(template, np.float64)
    for key in keys:
        kb = obj.shape_key_add(name=key.name, from_mix=False)
        kb.points.foreach_set("co", (template + key.displacement).astype(np.float32).ravel())
        kb.slider_min, kb.slider_max = 0.0, 1.0
        kb.value = 0.0


def shape_key_name(i: int) -> str:
    return f"{SHAPE_PREFIX}{i:03d}"


def shape_slider_keys(obj) -> list:
    """The identity sliders (shape_* keys) of a head mesh object, [] when it has none."""
    if obj is None or obj.data.shape_keys is None:
        return []
    return [kb for kb in obj.data.shape_keys.key_blocks if kb.name.startswith(SHAPE_PREFIX)]


def arkit_slider_keys(obj) -> list:
    """The ARKit-named shape keys of a head mesh object, in Apple's order ([] when imported without them)."""
    from core.results.arkit import ARKIT_NAMES

    if obj is None or obj.data.shape_keys is None:
        return []
    blocks = obj.data.shape_keys.key_blocks
    return [blocks[n] for n in ARKIT_NAMES if n in blocks]


def add_shape_sliders(obj, template: np.ndarray, shape_basis: np.ndarray) -> None:
    """Identity sliders shape_000.. (FLAME's identity components, (V, 3, N)), value 0 = the photo's identity
    (already baked into the basis), so a slider adds `value * shape_basis[..., i]` to the rest mesh. The
    bones stay at the photo's joints (result.npz has no joint regressor): a large identity change leaves
    the jaw and eye pivots where they were."""
    template = np.asarray(template, np.float64)
    basis = np.asarray(shape_basis, np.float64)
    for i in range(basis.shape[2]):
        kb = obj.shape_key_add(name=shape_key_name(i), from_mix=False)
        kb.points.foreach_set("co", (template + basis[:, :, i]).astype(np.float32).ravel())
        kb.slider_min, kb.slider_max = -SHAPE_SLIDER, SHAPE_SLIDER
        kb.value = 0.0


def exp_key_values(obj, n: int = 50) -> np.ndarray:
    keys = obj.data.shape_keys.key_blocks
    return np.array([keys[exp_key_name(i)].value if exp_key_name(i) in keys else 0.0 for i in range(n)])
