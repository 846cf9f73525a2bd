"""deca.export_fbx and deca.export_gltf: the active head for game engines, with the wrinkle package."""
from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, StringProperty

from .common import USER_ERRORS, active_head, report_exception


class _ExportBase:
    filepath: StringProperty(name="File Path", subtype="FILE_PATH")
    directory: StringProperty(name="Directory", subtype="DIR_PATH", default="", options={"SKIP_SAVE"},
                              description="Write <head name>.<ext> into this folder (instead of filepath)")
    wrinkles: BoolProperty(name="Wrinkle Maps + JSON", default=True,
                           description="Write the wrinkle maps and the morph-target-to-wrinkle JSON beside the file")
    limit_influences: BoolProperty(name="At Most 4 Influences", default=True,
                                   description="Keep each vertex's 4 largest bone weights, renormalised to sum 1 "
                                               "(Unity, glTF); the .blend is not changed")
    extension = ""

    @classmethod
    def poll(cls, context):
        mesh, _ = active_head(context)
        return mesh is not None and context.mode == "OBJECT"

    def invoke(self, context, event):
        mesh, _ = active_head(context)
        if not self.filepath:
            blend = Path(bpy.data.filepath).parent if bpy.data.filepath else Path.home()
            self.filepath = str(blend / f"{bpy.path.clean_name(mesh.name)}{self.extension}")
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def target(self, mesh) -> str:
        if self.directory and not self.filepath:
            return str(Path(bpy.path.abspath(self.directory)) / f"{bpy.path.clean_name(mesh.name)}{self.extension}")
        if not self.filepath:
            raise ValueError("give filepath or directory")
        return self.filepath


class DECA_OT_export_fbx(_ExportBase, bpy.types.Operator):
    """Export the active DECA head as FBX for Unreal or Unity (shape keys as morph targets, armature, textures)"""

    bl_idname = "deca.export_fbx"
    bl_label = "Export FBX"
    bl_options = {"REGISTER"}
    extension = ".fbx"

    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})
    preset: EnumProperty(name="Preset", items=(("UNREAL", "Unreal", "Centimetres via FBX unit scale, -Z forward, Y up"),
                                               ("UNITY", "Unity", "Scale applied (FBX_SCALE_ALL), -Z forward, Y up, "
                                                "at most 4 influences per vertex (option)")),
                         default="UNREAL")

    def execute(self, context):
        from ..export.fbx import export_fbx

        mesh, arm = active_head(context)
        try:
            limit = (4 if self.limit_influences else None) if self.preset == "UNITY" else None
            path = export_fbx(context, mesh, arm, self.target(mesh), self.preset, self.wrinkles, max_influences=limit)
        except USER_ERRORS as exc:
            report_exception(self, exc)
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {path}")
        return {"FINISHED"}


class DECA_OT_export_gltf(_ExportBase, bpy.types.Operator):
    """Export the active DECA head as glTF 2.0 (.glb) with morph targets, plus the wrinkle maps and JSON"""

    bl_idname = "deca.export_gltf"
    bl_label = "Export glTF"
    bl_options = {"REGISTER"}
    extension = ".glb"

    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def execute(self, context):
        from ..export.gltf import export_glb

        mesh, arm = active_head(context)
        try:
            path = export_glb(context, mesh, arm, self.target(mesh), self.wrinkles,
                              max_influences=4 if self.limit_influences else None)
        except USER_ERRORS as exc:
            report_exception(self, exc)
            return {"CANCELLED"}
        self.report({"INFO"}, f"exported {path}")
        return {"FINISHED"}


classes = (DECA_OT_export_fbx, DECA_OT_export_gltf)


register, unregister = bpy.utils.register_classes_factory(classes)
