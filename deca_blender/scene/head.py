"""A finished head from a result folder: collection, armature, mesh, shape keys, drivers, material.

Nothing is created when the folder cannot be read: the result is loaded and checked first, and if a
later step fails every datablock made so far is removed again, so an error leaves the scene as it was.
Names are made unique per head up front (`DECA_<folder>`, `DECA_<folder>.001`, ...), and every datablock
(mesh, armature, material, node group, images, collection) carries that name, so importing the same
result twice gives two independent heads.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from . import armature as arm_mod
from . import drivers as drv
from . import material as mat_mod
from . import mesh as mesh_mod
from . import placement

N_JOINTS = 5


@dataclass
class ImportOptions:
    all_expressions: bool = False  # all expression components the result holds (100 when present), else 50
    use_head_pose: bool = False  # rotate the root bone to the photo's global head pose
    name: str | None = None
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)  # where the head's centre goes (the 3D cursor)
    photo_reference: bool = True  # the photo's camera and reference image, lined up with the head
    arkit_keys: bool = True  # the 52 ARKit-named shape keys (core.results.arkit), after exp_/pc_
    identity_sliders: bool = True  # shape_000.. from rig_shape_basis, when the result carries it


def load_result(folder: str | Path):
    """ReconstructionResult of a folder (or result.npz), with the rig's shapes checked. Raises ResultError."""
    from core.results.result import ReconstructionResult, ResultError

    result = ReconstructionResult.load(folder).validate(folder)  # shapes, index ranges, NaN (core.results)
    if result.rig_joints.shape[0] != N_JOINTS:
        raise ResultError(f"{folder}: the rig has {result.rig_joints.shape[0]} joints, expected FLAME's {N_JOINTS}; "
                          "the result folder is damaged")
    return result


def unique_head_name(base: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40] or "head"
    taken = lambda n: (n in bpy.data.objects or f"{n}_rig" in bpy.data.objects or f"DECA {n}" in bpy.data.collections
                       or f"DECA {n}" in bpy.data.materials)
    if not taken(base):
        return base
    i = 1
    while taken(f"{base}.{i:03d}"):
        i += 1
    return f"{base}.{i:03d}"


def _default_name(folder: Path) -> str:
    name = folder.name
    if name in ("", ".", "result"):
        name = folder.parent.name or "head"
    return f"DECA_{name}"


@contextmanager
def _timed(timings: dict | None, stage: str):
    """Add the block's seconds to ``timings[stage]`` (the benchmark's and the import report's breakdown)."""
    t = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t


def build_head(context, folder: str | Path, options: ImportOptions | None = None, timings: dict | None = None):
    """Import one result folder. Returns (mesh_object, armature_object). With ``timings`` (a dict), the
    seconds of each stage (reading, mesh, shape keys, ARKit keys, node groups, material, ...) are added to it."""
    options = options or ImportOptions()
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    with _timed(timings, "read result"):
        result = load_result(folder)
    name = unique_head_name(options.name or _default_name(folder))

    created: list = []  # (collection, datablock) to remove if anything below fails
    try:
        build = _build_rig(context, folder, result, name, options, created, timings)
        return _build_detail(context, build, folder, result, timings)
    except Exception:
        _remove(created)
        raise


def _remove(created: list) -> None:
    for coll_name, block in reversed(created):
        try:
            getattr(bpy.data, coll_name).remove(block)
        except Exception:
            pass


# ---------------------------------------------------------------------------------------- in two parts
#
# Import Photo builds a head in parts so that the scene is made while the worker still works. The worker
# (`core.worker`, reconstruct with early=True) sends each face's result fields ahead, as result.npz stores
# them: the rig as soon as its networks ran, from which `begin_head` builds everything the rig determines
# (armature, mesh, shape keys, ARKit and identity keys, corrective drivers, photo camera); then the wrinkle
# model and displacement while it writes the folder, from which `add_early_wrinkles` builds the wrinkle
# node group and drivers; `finish_head` adds the material from the finished folder (and checks that the
# folder holds the values the parts were built from). The parts run the very functions `build_head` runs,
# on the same values, in the same order (tests/test_blender_addon.py compares the heads field by field),
# so the head is the same either way.

EARLY_FIELDS = ("source_image", "image_size", "face_index", "exp", "pose", "cam", "crop_matrix", "faces",
                "uv_coords", "uv_faces", "rig_template", "rig_expr_basis", "rig_posedirs", "rig_weights",
                "rig_joints", "rig_parents", "is_test_model")  # and rig_shape_basis when present
EARLY_WRINKLE_FIELDS = ("wrinkle_base", "wrinkle_maps", "wrinkle_matrix", "displacement")
_CHECKED = ("rig_template", "rig_joints", "exp", "pose", "cam", "crop_matrix")  # must equal the folder's


@dataclass
class HeadBuild:
    """A head whose first part is built (`begin_head`): what `finish_head` needs."""
    name: str
    folder: Path  # the result folder the worker is writing (its planned name)
    options: ImportOptions
    early: object  # the early fields (attributes as on a ReconstructionResult)
    created: list
    coll: object = None
    arm_obj: object = None
    obj: object = None
    me: object = None
    n_expr: int = 0
    wrinkles: object = None  # the second early part, once its node group and drivers are built
    images: list = field(default_factory=list)  # the wrinkle node group's images


def load_early_fields(path: str | Path):
    """The early fields of one face (an .npz the worker wrote) as attributes, as `ReconstructionResult.load`
    would give them. Raises OSError / KeyError / ValueError when the file is gone or incomplete."""
    from types import SimpleNamespace

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in EARLY_FIELDS if k not in data]
    if missing:
        raise KeyError(f"{path} lacks {missing}")
    data["source_image"] = str(data["source_image"])
    data["is_test_model"] = bool(data["is_test_model"])
    data["face_index"] = int(data["face_index"])
    data.setdefault("rig_shape_basis", None)
    return SimpleNamespace(**data)


def begin_head(context, early, folder: str | Path, options: ImportOptions | None = None,
               timings: dict | None = None) -> HeadBuild:
    """The first part of a head from a face's early fields (`load_early_fields`), for the result folder
    `folder` that is being written. On an error nothing is left in the scene and the error is raised.
    The view layer is not updated here (measured: that did not make the final update any cheaper); a
    caller that begins another head before finishing this one updates it first, as `build_head` does
    between heads, so that the next head is placed beside this one."""
    options = options or ImportOptions()
    folder = Path(folder)
    name = unique_head_name(options.name or _default_name(folder))
    created: list = []
    try:
        return _build_rig(context, folder, early, name, options, created, timings)
    except Exception:
        _remove(created)
        raise


def finish_head(context, build: HeadBuild, folder: str | Path, timings: dict | None = None):
    """The rest of a head begun with `begin_head`, from its finished result folder. Returns (mesh_object,
    armature_object). When the folder is not the one the first part was made for (another name, other
    values), the first part is removed and the head is built from the folder alone (`build_head`). On an
    error the whole head is removed and the error raised."""
    folder = Path(folder)
    try:
        with _timed(timings, "read result"):
            result = load_result(folder)
        same = folder.name == build.folder.name and all(
            np.array_equal(np.asarray(getattr(result, k)), np.asarray(getattr(build.early, k))) for k in _CHECKED)
        if same and build.wrinkles is not None:
            w, wr = build.wrinkles, result.wrinkles
            same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in (
                (w.wrinkle_base, wr.base), (w.wrinkle_maps, wr.maps), (w.wrinkle_matrix, wr.matrix),
                (w.displacement, result.displacement)))
    except Exception:
        discard_head(build)
        raise
    if not same:
        discard_head(build)
        return build_head(context, folder, build.options, timings)
    try:
        return _build_detail(context, build, folder, result, timings)
    except Exception:
        discard_head(build)
        raise


def discard_head(build: HeadBuild) -> None:
    """Remove a head's first part (a request that failed or was cancelled)."""
    _remove(build.created)
    build.created.clear()


def _build_rig(context, folder: Path, result, name: str, options: ImportOptions, created: list,
               timings: dict | None) -> HeadBuild:
    """Everything the rig's fields determine (`EARLY_FIELDS`); `result` has them as attributes."""
    T = lambda stage: _timed(timings, stage)  # noqa: E731
    coll = bpy.data.collections.new(f"DECA {name}")
    created.append(("collections", coll))
    context.scene.collection.children.link(coll)

    with T("armature"):
        arm_obj = arm_mod.create_armature(context, coll, f"{name}_rig", np.asarray(result.rig_joints, np.float64),
                                          np.asarray(result.rig_parents))
    created += [("objects", arm_obj), ("armatures", arm_obj.data)]
    # The head's centre (not FLAME's origin, ~1.5 m below it) at the cursor, beside any head already there.
    occupied = placement.occupied_boxes(context.scene, exclude={arm_obj})
    arm_obj.location = tuple(placement.armature_location(
        options.location, placement.box_of(np.asarray(result.rig_template, np.float64)), occupied))
    arm_obj.deca.role = "RIG"
    jaw = np.asarray(result.pose, np.float64).ravel()[3:6]
    arm_mod.set_joint_rotation(arm_obj, "jaw", jaw)
    if options.use_head_pose:
        arm_mod.set_joint_rotation(arm_obj, "root", np.asarray(result.pose, np.float64).ravel()[:3])

    E = result.rig_expr_basis.shape[2]
    n_expr = E if options.all_expressions else min(E, 50)
    with T("mesh"):
        me = mesh_mod.create_mesh(name, np.asarray(result.rig_template, np.float64), np.asarray(result.faces),
                                  np.asarray(result.uv_coords, np.float64), np.asarray(result.uv_faces))
    created.append(("meshes", me))
    obj = bpy.data.objects.new(name, me)
    created.append(("objects", obj))
    coll.objects.link(obj)
    obj.parent = arm_obj  # identity parent inverse: mesh space == armature space (FLAME space)
    with T("vertex groups"):
        mesh_mod.add_vertex_groups(obj, np.asarray(result.rig_weights, np.float64))
    mod = obj.modifiers.new("Armature", "ARMATURE")
    mod.object = arm_obj
    mod.use_vertex_groups = True
    mod.use_bone_envelopes = False
    mod.use_deform_preserve_volume = False  # linear blend skinning, as FLAME

    exp = np.zeros(n_expr)
    photo_exp = np.asarray(result.exp, np.float64).ravel()
    exp[: min(n_expr, photo_exp.size)] = photo_exp[:n_expr]
    with T("shape keys (expression, correctives)"):
        mesh_mod.add_shape_keys(obj, result.rig_template, np.asarray(result.rig_expr_basis, np.float64),
                                np.asarray(result.rig_posedirs, np.float64), exp, n_expr)

    if options.arkit_keys:
        from core.results.arkit import solve_arkit_keys

        with T("ARKit-52 solve"):
            keys = solve_arkit_keys(result.rig_template, result.faces, result.rig_expr_basis, result.rig_posedirs,
                                    result.rig_weights, result.rig_joints)
        with T("ARKit-52 keys"):
            mesh_mod.add_arkit_keys(obj, result.rig_template, keys)
        # How well each expression key met its definition on this head (the README explains the numbers).
        obj["deca_arkit_rms_mm"] = {k.name: round(k.rms_error_mm, 3) for k in keys if k.kind == "expression"}

    if options.identity_sliders and result.rig_shape_basis is not None:
        with T("identity keys"):
            mesh_mod.add_shape_sliders(obj, result.rig_template, result.rig_shape_basis)

    props = obj.deca
    props.role = "HEAD"
    props.source_image = str(result.source_image)
    props.is_test_model = bool(result.is_test_model)
    props.n_expression = n_expr
    with T("drivers"):
        drv.add_pose_corrective_drivers(obj, arm_obj)

    if options.photo_reference:
        with T("photo camera"):
            placement.add_photo_objects(context, coll, name, arm_obj, result, folder, created)
    if result.is_test_model:
        obj["deca_note"] = "built from the deca-blender TEST model (synthetic), not FLAME"
    return HeadBuild(name=name, folder=folder, options=options, early=result, created=created, coll=coll,
                     arm_obj=arm_obj, obj=obj, me=me, n_expr=n_expr)


def load_early_wrinkles(path: str | Path):
    """A face's second early part (an .npz the worker wrote): the wrinkle model and the displacement, as
    attributes named as in result.npz. Raises OSError / KeyError / ValueError when gone or incomplete."""
    from types import SimpleNamespace

    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in EARLY_WRINKLE_FIELDS if k not in data]
    if missing:
        raise KeyError(f"{path} lacks {missing}")
    return SimpleNamespace(**data)


def add_early_wrinkles(build: HeadBuild, early, timings: dict | None = None) -> None:
    """The wrinkle node group and drivers of a begun head from its second early part (`load_early_wrinkles`),
    built while the worker writes the folder. On an error the whole head is removed and the error raised."""
    try:
        _build_wrinkles(build, early.wrinkle_base, early.wrinkle_maps, early.displacement, early.wrinkle_matrix,
                        timings)
        build.wrinkles = early
    except Exception:
        discard_head(build)
        raise


def _build_wrinkles(build: HeadBuild, base, maps, displacement, matrix, timings: dict | None) -> None:
    """The wrinkle node group (maps as images) and the drivers from the sliders to its factors."""
    T = lambda stage: _timed(timings, stage)  # noqa: E731
    obj, arm_obj = build.obj, build.arm_obj
    with T("node group (wrinkle images)"):
        group, images = mat_mod.build_wrinkle_group(build.name, np.asarray(base), np.asarray(maps),
                                                    np.asarray(displacement))
    build.created += [("node_groups", group)] + [("images", im) for im in images]
    build.images = images
    props = obj.deca
    props.wrinkle_group = group
    props.exact_image = images[-1]
    matrix = np.asarray(matrix, np.float64)
    with T("drivers"):
        drv.add_wrinkle_drivers(obj, arm_obj, group, matrix, n_exp_inputs=50)
    # Kept on the object so exports can write the wrinkle JSON without the result folder.
    obj["_deca_wrinkle_matrix"] = matrix.astype(np.float64).ravel().tolist()
    obj["_deca_wrinkle_shape"] = list(matrix.shape)


def _build_detail(context, build: HeadBuild, folder: Path, result, timings: dict | None):
    """The wrinkle node group and drivers (unless built early) and the material, from the finished folder."""
    T = lambda stage: _timed(timings, stage)  # noqa: E731
    name, obj, arm_obj, me, created = build.name, build.obj, build.arm_obj, build.me, build.created
    props = obj.deca
    props.result_path = str(folder.resolve())
    wr = result.wrinkles
    if build.wrinkles is None:
        _build_wrinkles(build, wr.base, wr.maps, result.displacement, wr.matrix, timings)
    group, images = props.wrinkle_group, build.images
    with T("material (textures)"):
        mat = mat_mod.build_material(name, folder, group)
    created.append(("materials", mat))
    for node in mat.node_tree.nodes:
        if node.type == "TEX_IMAGE" and node.image is not None and node.image not in images:
            created.append(("images", node.image))
    me.materials.append(mat)
    mat_mod.apply_head_settings(obj)

    for o in context.view_layer.objects:
        o.select_set(False)
    obj.select_set(True)
    arm_obj.select_set(False)
    context.view_layer.objects.active = obj
    with T("view layer update"):
        context.view_layer.update()  # world matrices for the next import's placement
    return obj, arm_obj
