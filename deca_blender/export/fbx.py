"""FBX export of one head (mesh + armature, shape keys as morph targets, embedded textures).

Presets:
  * UNREAL: sizes in centimetres through FBX's unit scale (UnitScaleFactor 100; Unreal converts on
    import), -Z forward / Y up (Unreal's importer converts the axis system), no leaf bones, face smoothing.
  * UNITY: FBX_SCALE_ALL so the head arrives with scale 1 and its real size in Unity, -Z forward / Y up,
    and at most 4 bone influences per vertex, renormalised (export/weights.py; `max_influences`).
Shape keys survive only without "apply modifiers" (the Armature modifier is exported as the skin), so
use_mesh_modifiers is off. The wrinkle package (export/wrinkles.py) is written beside the file.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import bpy

COMMON = dict(
    use_selection=True, object_types={"ARMATURE", "MESH"}, use_mesh_modifiers=False, use_armature_deform_only=True,
    add_leaf_bones=False, primary_bone_axis="Y", secondary_bone_axis="X", armature_nodetype="NULL",
    bake_anim=True, bake_anim_use_all_actions=False, bake_anim_use_nla_strips=False,
    path_mode="COPY", embed_textures=True, use_custom_props=False, mesh_smooth_type="FACE",
    axis_forward="-Z", axis_up="Y", apply_unit_scale=True, global_scale=1.0,
)
PRESETS = {
    "UNREAL": dict(apply_scale_options="FBX_SCALE_NONE"),
    "UNITY": dict(apply_scale_options="FBX_SCALE_ALL"),
}
#: bone influences per vertex each preset keeps by default (None: all of FLAME's, up to 5)
MAX_INFLUENCES = {"UNREAL": None, "UNITY": 4}


@contextmanager
def selected_only(context, objects):
    """Select exactly `objects` (and make the first active) for an exporter; restore afterwards."""
    view_layer = context.view_layer
    before = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    for o in before:
        o.select_set(False)
    for o in objects:
        o.select_set(True)
    view_layer.objects.active = objects[0]
    try:
        yield
    finally:
        for o in objects:
            o.select_set(False)
        for o in before:
            if o.name in view_layer.objects:
                o.select_set(True)
        view_layer.objects.active = active


def export_fbx(context, mesh_obj, arm_obj, filepath: str | Path, preset: str = "UNREAL", wrinkles: bool = True,
               max_influences: int | None | str = "PRESET") -> Path:
    """Export one head. `max_influences`: bone influences kept per vertex (renormalised), None for all,
    "PRESET" for the preset's default (MAX_INFLUENCES)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown FBX preset {preset!r}; use one of {sorted(PRESETS)}")
    path = Path(bpy.path.abspath(str(filepath)))
    if path.suffix.lower() != ".fbx":
        path = path.with_suffix(".fbx")
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = [o for o in (mesh_obj, arm_obj) if o is not None]
    if max_influences == "PRESET":
        max_influences = MAX_INFLUENCES[preset]
    from .weights import limited_influences

    with selected_only(context, objects), limited_influences(mesh_obj, max_influences):
        result = bpy.ops.export_scene.fbx(filepath=str(path), **COMMON, **PRESETS[preset])
    if "FINISHED" not in result:
        raise RuntimeError(f"the FBX exporter did not finish ({result})")
    if wrinkles:
        from .wrinkles import write_wrinkle_package

        write_wrinkle_package(mesh_obj, path)
    return path
