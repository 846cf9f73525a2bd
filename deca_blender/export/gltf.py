"""glTF 2.0 binary (.glb) export of one head: skinned mesh, morph targets, albedo; wrinkle package beside.

Blender's exporter writes the shape keys as morph targets (names in `mesh.extras.targetNames`) and the
armature as a skin. `export_apply` stays off, since applying modifiers would drop the shape keys.
"""
from __future__ import annotations

from pathlib import Path

import bpy

from .fbx import selected_only


def export_glb(context, mesh_obj, arm_obj, filepath: str | Path, wrinkles: bool = True, animations: bool = True) -> Path:
    path = Path(bpy.path.abspath(str(filepath)))
    if path.suffix.lower() != ".glb":
        path = path.with_suffix(".glb")
    path.parent.mkdir(parents=True, exist_ok=True)
    objects = [o for o in (mesh_obj, arm_obj) if o is not None]
    with selected_only(context, objects):
        result = bpy.ops.export_scene.gltf(
            filepath=str(path), export_format="GLB", use_selection=True, export_apply=False, export_yup=True,
            export_morph=True, export_morph_normal=False, export_skins=True, export_animations=animations,
            export_extras=False,
        )
    if "FINISHED" not in result:
        raise RuntimeError(f"the glTF exporter did not finish ({result})")
    if wrinkles:
        from .wrinkles import write_wrinkle_package

        write_wrinkle_package(mesh_obj, path)
    return path
