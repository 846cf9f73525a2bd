"""Identity sliders' reset: every `shape_*` key of the active head back to 0 (the photo's identity).

The sliders themselves are shape keys made at import (scene/mesh.py `add_shape_sliders`) when the result
carries `rig_shape_basis`; as in MPI's FLAME add-on, a button puts them all back at once.
"""
from __future__ import annotations

import bpy

from ..scene.mesh import shape_slider_keys


class DECA_OT_reset_identity(bpy.types.Operator):
    """Set every identity slider (shape_000..) of the head to 0: back to the identity reconstructed from the photo"""

    bl_idname = "deca.reset_identity"
    bl_label = "Reset Identity"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        from ..properties import head_objects

        return bool(shape_slider_keys(head_objects(context.active_object)[0]))

    def execute(self, context):
        from ..properties import head_objects

        keys = shape_slider_keys(head_objects(context.active_object)[0])
        for kb in keys:
            kb.value = 0.0
        self.report({"INFO"}, f"reset {len(keys)} identity sliders")
        return {"FINISHED"}


classes = (DECA_OT_reset_identity,)


register, unregister = bpy.utils.register_classes_factory(classes)
