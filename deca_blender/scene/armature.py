"""The armature: FLAME's five joints as bones, at this person's joint positions.

Coordinates. Armature data stays in FLAME space (metres, +y up, the face looking along +z); the armature
*object* gets a +90 degree X rotation so the head stands upright in Blender's z-up world (FLAME +y ->
Blender +z, the face looks towards -y, i.e. into the front view).

Bones. Every bone's head is its FLAME joint, its tail lies along armature +Y (FLAME up) and its roll is 0,
so each bone's rest matrix has the identity rotation. A pose bone's rotation is then exactly FLAME's
local joint rotation about that joint, and the armature's pose reproduces FLAME's kinematic chain. Pose
bones use rotation_mode 'QUATERNION'; the pose-corrective drivers read the bones' local rotation as a
quaternion through transform-channel variables, which also works when a user switches a bone to Euler.

Joints and expression. FLAME regresses its joints from the *expressive* mesh, so strictly a joint moves
a little with the expression (J_regressor @ expr_basis @ exp). The rig's joints are those of the neutral
identity mesh (`rig_joints`); Blender's bones cannot follow the expression without a driver on a bone's
location that reads that bone's own rotation, which is a dependency cycle. The head is therefore exact
FLAME at the neutral expression for any pose, and exact at any expression for a pose at rest; with both
an expression and a rotated joint it differs from FLAME by (R - I) times that joint's shift, well below a
millimetre for the rotations a jaw or neck makes (the tests measure it). result.npz does not carry the
joint regressor, so a correction would need the pipeline to export `J_regressor @ expr_basis`.
"""
from __future__ import annotations

import math

import bpy
import numpy as np
from mathutils import Quaternion

JOINT_NAMES = ("root", "neck", "jaw", "eye_L", "eye_R")  # FLAME's joint order (core.flame.JOINT_NAMES)
BONE_LENGTHS = (0.04, 0.05, 0.03, 0.015, 0.015)


def axis_angle_to_quaternion(aa) -> Quaternion:
    aa = np.asarray(aa, np.float64).ravel()
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return Quaternion((1.0, 0.0, 0.0, 0.0))
    return Quaternion(tuple(aa / angle), angle)


def quaternion_to_axis_angle(q) -> np.ndarray:
    """Inverse of axis_angle_to_quaternion, canonical (w >= 0), exact for any angle below pi."""
    w, x, y, z = (float(c) for c in q)
    if w < 0:
        w, x, y, z = -w, -x, -y, -z
    s = math.sqrt(x * x + y * y + z * z)
    if s < 1e-12:
        return np.array([2 * x, 2 * y, 2 * z]) / max(w, 1e-12)
    return np.array([x, y, z]) * (2 * math.atan2(s, w) / s)


def create_armature(context, collection, name: str, joints: np.ndarray, parents: np.ndarray) -> bpy.types.Object:
    """An armature object with one bone per FLAME joint (rest rotations identity). In object mode on return."""
    arm = bpy.data.armatures.new(name)
    arm.display_type = "STICK"
    obj = bpy.data.objects.new(name, arm)
    collection.objects.link(obj)
    obj.rotation_euler = (math.pi / 2, 0.0, 0.0)
    obj.show_in_front = True

    view_layer = context.view_layer
    previous_active = view_layer.objects.active
    view_layer.objects.active = obj
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj], selected_editable_objects=[obj]):
        bpy.ops.object.mode_set(mode="EDIT")
        try:
            bones = []
            for i, jname in enumerate(JOINT_NAMES[: len(joints)]):
                eb = arm.edit_bones.new(jname)
                head = np.asarray(joints[i], np.float64)
                eb.head = tuple(head)
                eb.tail = tuple(head + np.array([0.0, BONE_LENGTHS[i], 0.0]))
                eb.roll = 0.0
                eb.use_deform = True
                bones.append(eb)
            for i, p in enumerate(parents[: len(bones)]):
                if p >= 0:
                    bones[i].parent = bones[int(p)]
                    bones[i].use_connect = False
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = previous_active
    for pb in obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
    return obj


def set_joint_rotation(arm_obj, bone: str, axis_angle) -> None:
    arm_obj.pose.bones[bone].rotation_quaternion = axis_angle_to_quaternion(axis_angle)
