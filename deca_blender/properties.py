"""Per-head settings, stored on the head's objects (`Object.deca`).

The mesh object (role 'HEAD') carries the head's settings: the drivers read `deca.wrinkle_strength`, the
material follows `detail_source`, `detail_strength` and `exact_wrinkles`. The armature (role 'RIG')
only marks itself so the panel finds the head from either object.
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from .scene.objects import head_objects  # noqa: F401 - its home before scene/objects.py; ui and operators import it here


def _update_material(self, context) -> None:
    obj = self.id_data
    if self.role != "HEAD":
        return
    from .scene.material import apply_head_settings

    apply_head_settings(obj)


def _update_strength(self, context) -> None:
    # Drivers read `deca.wrinkle_strength`; setting an add-on property does not tag the object for the
    # dependency graph by itself, so tag it to re-evaluate the wrinkle-factor drivers.
    self.id_data.update_tag()


def _update_exact(self, context) -> None:
    _update_material(self, context)
    if self.role == "HEAD" and self.exact_wrinkles:
        from . import exact

        exact.start()


class DecaHeadProperties(bpy.types.PropertyGroup):
    role: EnumProperty(
        name="Role",
        items=(("NONE", "None", "Not part of a DECA head"), ("HEAD", "Head", "The head mesh"),
               ("RIG", "Rig", "The head's armature")),
        default="NONE",
    )
    result_path: StringProperty(name="Result Folder", subtype="DIR_PATH",
                                description="The result folder this head was imported from")
    source_image: StringProperty(name="Photo", description="The photo the result was reconstructed from")
    is_test_model: BoolProperty(name="Test Model", description="Built from the synthetic TEST model, not FLAME")
    n_expression: IntProperty(name="Expressions", default=50)
    wrinkle_strength: FloatProperty(
        name="Wrinkle Strength", default=1.0, min=0.0, soft_max=3.0, update=_update_strength,
        description="Scales how much the expression sliders and the jaw change the wrinkle maps",
    )
    detail_strength: FloatProperty(
        name="Detail Strength", default=1.0, min=0.0, soft_max=5.0, update=_update_material,
        description="Scale of the detail displacement (or of the detail normal map)",
    )
    detail_source: EnumProperty(
        name="Details",
        items=(("DISPLACEMENT", "Live Displacement", "Wrinkle maps mixed by the sliders, shaded as bump"),
               ("NORMAL_MAP", "Photo Normal Map", "The detail normal map at the photo's expression (static)")),
        default="DISPLACEMENT", update=_update_material,
    )
    exact_wrinkles: BoolProperty(
        name="Exact Wrinkles", default=False, update=_update_exact,
        description="Re-decode the detail displacement with DECA's decoder (in the worker) after slider changes, "
                    "instead of the linear wrinkle model",
    )
    show_all_expressions: BoolProperty(name="Show All", default=False, description="Show every expression slider")
    wrinkle_group: PointerProperty(name="Wrinkle Node Group", type=bpy.types.NodeTree)
    exact_image: PointerProperty(name="Exact Displacement Image", type=bpy.types.Image)


classes = (DecaHeadProperties,)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    bpy.types.Object.deca = PointerProperty(type=DecaHeadProperties)


def unregister() -> None:
    del bpy.types.Object.deca
    _unregister_classes()
