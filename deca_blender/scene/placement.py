"""Where a new head goes, and the photo's camera and reference image around it.

Placement. The rig's data stays in FLAME space (bones at FLAME's joints), and FLAME's origin lies far
below the face (the TEST model's and FLAME's heads sit about 1.5 m above it, FLAME being a body-part
model). So the armature object is not put at the 3D cursor: it is put where the *head's* bounding-box
centre (the neutral mesh's) lands on the cursor. A head that would overlap an existing DECA head is moved
along +X, one head width plus a gap at a time, until it is free: successive imports stand side by side.
Size stays real (metres; a head is about 0.25 m tall): engines and other assets expect it.

Photo alignment. DECA's camera is orthographic, `ndc = s * (X[:2] + t)` with y negated (docs/CONVENTIONS.md),
and the crop maps photo pixels to the 224x224 network input (`crop_matrix`). Together they map photo pixels
to FLAME's xy plane by a similarity `A` (2x3). An orthographic camera looking along FLAME -z whose frame
is the photo, and an image empty showing the photo in that plane behind the head, therefore line the
photo up with the head, in FLAME's "photo space" where the head wears the photo's global pose. A head
imported at rest (root bone not rotated) is the photo's head rotated back about the root joint, so both
objects get the same inverse rotation: they are children of the armature object at
`T(J0) R_global^T T(-J0) @ photo_space_matrix`.
"""
from __future__ import annotations

import numpy as np

# FLAME space -> Blender object space of the armature: +90 degrees about X (FLAME +y up -> Blender +z).
FLAME_TO_BLENDER = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
CROP_SIZE = 224.0  # the network input the camera's NDC refers to
GAP = 0.05  # metres between heads placed side by side


def box_of(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of points (N, 3)."""
    points = np.asarray(points, np.float64)
    return points.min(0), points.max(0)


def armature_location(cursor, flame_box: tuple[np.ndarray, np.ndarray], occupied: list[tuple[np.ndarray, np.ndarray]],
                      gap: float = GAP, max_tries: int = 1000) -> np.ndarray:
    """The armature object's location (3,) that puts the head's box centre on `cursor`, moved along +X
    until its world box overlaps none of `occupied` (world (lo, hi) boxes). `flame_box` is the neutral
    head's box in FLAME space."""
    lo, hi = (FLAME_TO_BLENDER @ np.asarray(c, np.float64) for c in flame_box)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)  # the rotation flips one axis
    centre = (lo + hi) / 2
    location = np.asarray(cursor, np.float64) - centre
    step = (hi[0] - lo[0]) + gap
    for _ in range(max_tries):
        a, b = lo + location, hi + location
        if not any(np.all(a < o_hi + gap / 2) and np.all(b > o_lo - gap / 2) for o_lo, o_hi in occupied):
            return location
        location = location + np.array([step, 0.0, 0.0])
    return location


def photo_to_flame(cam, crop_matrix) -> np.ndarray:
    """A (2, 3): photo pixel (u, v, 1) -> FLAME (x, y) in the plane the orthographic camera sees."""
    s, tx, ty = (float(c) for c in np.asarray(cam, np.float64).ravel()[:3])
    if abs(s) < 1e-12:
        raise ValueError(f"the result's camera scale is {s}; cannot place the photo")
    to_ndc = np.array([[2.0 / CROP_SIZE, 0, -1.0], [0, 2.0 / CROP_SIZE, -1.0], [0, 0, 1.0]])
    # ndc = (s (x + tx), -s (y + ty))  =>  x = ndc_x / s - tx,  y = -ndc_y / s - ty
    to_flame = np.array([[1.0 / s, 0, -tx], [0, -1.0 / s, -ty], [0, 0, 1.0]])
    return (to_flame @ to_ndc @ np.asarray(crop_matrix, np.float64))[:2]


def photo_frame(cam, crop_matrix, image_size_hw) -> dict:
    """The photo's frame in FLAME space: centre (2,), unit axes along the photo's +u and up (2,), the
    size of one pixel in metres and the photo's (width, height) in metres."""
    A = photo_to_flame(cam, crop_matrix)
    h, w = (float(x) for x in np.asarray(image_size_hw).ravel()[:2])
    centre = A @ np.array([w / 2, h / 2, 1.0])
    du, dv = A[:, 0], A[:, 1]
    pixel = float(np.linalg.norm(du))
    return {"centre": centre, "x_axis": du / pixel, "up_axis": -dv / np.linalg.norm(dv), "pixel": pixel,
            "width": w * pixel, "height": h * pixel, "pixels": (int(w), int(h))}


def photo_space_matrix(frame: dict, z: float) -> np.ndarray:
    """4x4 in FLAME space: origin at the photo's centre at depth z, local x along the photo's +u, local y
    up the photo, local z towards the viewer (FLAME +z): a camera there looks at the face."""
    M = np.eye(4)
    x = np.array([*frame["x_axis"], 0.0])
    y = np.array([*frame["up_axis"], 0.0])
    M[:3, 0], M[:3, 1], M[:3, 2] = x, y, np.cross(x, y)
    M[:3, 3] = [frame["centre"][0], frame["centre"][1], z]
    return M


def unpose_matrix(global_pose, root_joint) -> np.ndarray:
    """4x4 in FLAME space taking the photo's (posed) space to the head at rest: T(J0) R^T T(-J0)."""
    aa = np.asarray(global_pose, np.float64).ravel()[:3]
    from core.results.rig import axis_angle_matrix

    R = axis_angle_matrix(aa)
    J = np.asarray(root_joint, np.float64)
    M = np.eye(4)
    M[:3, :3] = R.T
    M[:3, 3] = J - R.T @ J
    return M


# ------------------------------------------------------------------------------------------------ Blender


def occupied_boxes(scene, exclude=()) -> list[tuple[np.ndarray, np.ndarray]]:
    """World boxes (lo, hi) of the DECA heads in `scene`."""
    from mathutils import Vector

    boxes = []
    for obj in scene.objects:
        if obj in exclude or getattr(obj, "deca", None) is None or obj.deca.role != "HEAD":
            continue
        corners = np.array([list(obj.matrix_world @ Vector(c)) for c in obj.bound_box])
        boxes.append(box_of(corners))
    return boxes


def add_photo_objects(context, collection, name: str, arm_obj, result, folder, created: list):
    """The photo's orthographic camera and a reference image of the photo (when the file exists), both
    children of the armature, lined up with the head at rest. Returns (camera_object, image_empty or None)."""
    import bpy
    from mathutils import Matrix

    from pathlib import Path

    frame = photo_frame(result.cam, result.crop_matrix, result.image_size)
    template = np.asarray(result.rig_template, np.float64)
    z_front, z_back = template[:, 2].max(), template[:, 2].min()
    unpose = unpose_matrix(np.asarray(result.pose).ravel()[:3], np.asarray(result.rig_joints)[0])

    cam_data = bpy.data.cameras.new(f"{name}_photo_camera")
    created.append(("cameras", cam_data))
    cam_data.type = "ORTHO"
    w, h = frame["width"], frame["height"]
    cam_data.sensor_fit = "HORIZONTAL" if w >= h else "VERTICAL"
    cam_data.ortho_scale = max(w, h)
    cam_data.clip_start, cam_data.clip_end = 0.01, 10.0
    cam = bpy.data.objects.new(f"{name}_photo_camera", cam_data)
    created.append(("objects", cam))
    collection.objects.link(cam)
    cam.parent = arm_obj
    cam.matrix_parent_inverse = Matrix.Identity(4)
    cam.matrix_basis = Matrix((unpose @ photo_space_matrix(frame, z_front + 1.0)).tolist())
    cam["deca_photo_pixels"] = list(frame["pixels"])  # set the render resolution to this to match the photo

    photo = Path(str(result.source_image))
    if not photo.is_absolute():
        photo = Path(folder) / photo
    empty = None
    if photo.is_file():
        image = bpy.data.images.load(str(photo), check_existing=False)  # its own: removed with the head on an error
        created.append(("images", image))
        empty = bpy.data.objects.new(f"{name}_photo", None)
        created.append(("objects", empty))
        empty.empty_display_type = "IMAGE"
        empty.data = image
        empty.empty_display_size = max(w, h)
        empty.empty_image_offset = (-0.5, -0.5)
        empty.empty_image_side = "FRONT"
        empty.use_empty_image_alpha = True
        empty.color[3] = 0.5
        empty.hide_render = True
        collection.objects.link(empty)
        empty.parent = arm_obj
        empty.matrix_parent_inverse = Matrix.Identity(4)
        empty.matrix_basis = Matrix((unpose @ photo_space_matrix(frame, z_back - 0.02)).tolist())
        bg = cam_data.background_images.new()
        bg.image = image
        bg.alpha = 0.5
        cam_data.show_background_images = True
    return cam, empty
