"""Finding a DECA head's objects from any of them (no bpy import: it reads the objects' `deca` settings).

Its own module so that `exact` (the exact-wrinkle timer) and `properties` (whose update callback starts that
timer) do not import each other.
"""
from __future__ import annotations


def head_objects(obj):
    """(mesh, armature) of the DECA head `obj` belongs to, or (None, None)."""
    if obj is None or not hasattr(obj, "deca"):
        return None, None
    if obj.deca.role == "HEAD":
        arm = obj.parent if obj.parent is not None and obj.parent.type == "ARMATURE" else None
        return obj, arm
    if obj.deca.role == "RIG":
        for child in obj.children:
            if getattr(child, "deca", None) is not None and child.deca.role == "HEAD":
                return child, obj
        return None, obj
    return None, None
