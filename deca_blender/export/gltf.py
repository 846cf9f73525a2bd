"""glTF 2.0 binary (.glb) export of one head: skinned mesh, morph targets, albedo; wrinkle package beside.

Blender's exporter writes the shape keys as morph targets (names in `mesh.extras.targetNames`) and the
armature as a skin. `export_apply` stays off, since applying modifiers would drop the shape keys.
glTF skins carry 4 influences per vertex (JOINTS_0/WEIGHTS_0): the head's weights are limited to
`max_influences` and renormalised first (export/weights.py), instead of the exporter dropping the fifth.
"""
from __future__ import annotations

from pathlib import Path

import bpy

from .fbx import selected_only


def export_glb(context, mesh_obj, arm_obj, filepath: str | Path, wrinkles: bool = True, animations: bool = True,
               max_influences: int | None = 4) -> Path:
    path = Path(bpy.path.abspath(str(filepath)))
    if path.suffix.lower() != ".glb":
        path = path.with_suffix(".glb")
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = [o for o in (mesh_obj, arm_obj) if o is not None]
    from .weights import limited_influences

    with selected_only(context, objects), limited_influences(mesh_obj, max_influences):
        result = bpy.ops.export_scene.gltf(
            filepath=str(path), export_format="GLB", use_selection=True, export_apply=False, export_yup=True,
            export_morph=True, export_morph_normal=False, export_skins=True, export_animations=animations,
            export_extras=False, export_influence_nb=max_influences or 4,
            export_all_influences=max_influences is None,
        )
    if "FINISHED" not in result:
        raise RuntimeError(f"the glTF exporter did not finish ({result})")
    if wrinkles:
        from .wrinkles import write_wrinkle_package

        write_wrinkle_package(mesh_obj, path)
    return path
