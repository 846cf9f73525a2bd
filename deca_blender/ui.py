"""The sidebar panel: 3D View > Sidebar > DECA. Panels only; the work is in operators/."""
from __future__ import annotations

import bpy

from .properties import head_objects
from .scene.mesh import arkit_slider_keys, shape_slider_keys

N_SLIDERS_COLLAPSED = 10


class VIEW3D_PT_deca(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DECA"
    bl_label = "DECA Heads"

    def draw(self, context):
        from . import warmup
        from .preferences import get_prefs

        if get_prefs(context).warm_up != "OFF":
            warmup.start_from_panel()  # the user is about to import: load the models meanwhile
        layout = self.layout
        col = layout.column(align=True)
        col.operator("deca.import_photo", text="Import Photo...", icon="IMAGE_DATA")
        col.operator("deca.import_result", text="Import Result...", icon="FILE_FOLDER")
        mesh, arm = head_objects(context.active_object)
        if mesh is None:
            layout.label(text="Select a DECA head to edit it", icon="INFO")
            return
        box = layout.box()
        box.label(text=mesh.name, icon="USER")
        if mesh.deca.is_test_model:
            box.label(text="TEST model (synthetic), not FLAME", icon="ERROR")
        props = mesh.deca
        box.prop(props, "detail_source", text="")
        box.prop(props, "wrinkle_strength")
        box.prop(props, "detail_strength")
        row = box.row()
        row.prop(props, "exact_wrinkles")
        if "_deca_exact_error" in mesh:
            box.label(text=str(mesh["_deca_exact_error"])[:120], icon="ERROR")
        layout.operator("deca.view_photo_camera", text="View Through Photo Camera", icon="VIEW_CAMERA")
        layout.operator("deca.apply_expression", text="Apply Expression from Photo...", icon="SHAPEKEY_DATA")
        row = layout.row(align=True)
        op = row.operator("deca.export_fbx", text="FBX Unreal", icon="EXPORT")
        op.preset = "UNREAL"
        op = row.operator("deca.export_fbx", text="FBX Unity", icon="EXPORT")
        op.preset = "UNITY"
        layout.operator("deca.export_gltf", text="Export glTF (.glb)", icon="EXPORT")


def _draw_sliders(layout, keys) -> None:
    col = layout.column(align=True)
    for kb in keys:
        col.prop(kb, "value", text=kb.name, slider=True)


class VIEW3D_PT_deca_expression(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DECA"
    bl_label = "Expression"
    bl_parent_id = "VIEW3D_PT_deca"

    @classmethod
    def poll(cls, context):
        mesh, _ = head_objects(context.active_object)
        return mesh is not None and mesh.data.shape_keys is not None

    def draw(self, context):
        layout = self.layout
        mesh, arm = head_objects(context.active_object)
        if arm is not None and "jaw" in arm.pose.bones:
            layout.label(text="Jaw (bone rotation)")
            layout.prop(arm.pose.bones["jaw"], "rotation_quaternion", text="")
        props = mesh.deca
        keys = [kb for kb in mesh.data.shape_keys.key_blocks if kb.name.startswith("exp_")]
        shown = keys if props.show_all_expressions else keys[:N_SLIDERS_COLLAPSED]
        _draw_sliders(layout, shown)
        layout.prop(props, "show_all_expressions", text=f"Show all {len(keys)}")


class _ShapeKeySliders:
    """A closed sub-panel of sliders for the head's shape keys that the subclass's ``slider_keys(mesh)`` lists;
    shown only when the head has such keys (they are import options)."""
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "DECA"
    bl_parent_id = "VIEW3D_PT_deca"
    bl_options = {"DEFAULT_CLOSED"}

    @classmethod
    def poll(cls, context):
        return bool(cls.slider_keys(head_objects(context.active_object)[0]))


class VIEW3D_PT_deca_identity(_ShapeKeySliders, bpy.types.Panel):
    bl_label = "Identity"
    slider_keys = staticmethod(shape_slider_keys)

    def draw(self, context):
        self.layout.operator("deca.reset_identity", text="Reset Identity", icon="LOOP_BACK")
        _draw_sliders(self.layout, shape_slider_keys(head_objects(context.active_object)[0]))


class VIEW3D_PT_deca_arkit(_ShapeKeySliders, bpy.types.Panel):
    bl_label = "ARKit Shapes"
    slider_keys = staticmethod(arkit_slider_keys)

    def draw(self, context):
        _draw_sliders(self.layout, arkit_slider_keys(head_objects(context.active_object)[0]))


classes = (VIEW3D_PT_deca, VIEW3D_PT_deca_expression, VIEW3D_PT_deca_arkit, VIEW3D_PT_deca_identity)


register, unregister = bpy.utils.register_classes_factory(classes)
