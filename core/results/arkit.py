"""ARKit's 52 blend shapes on a FLAME rig, each solved from a documented landmark-displacement definition.

Apple's ARKit (and Live Link Face, which streams it) drives a face with 52 named coefficients in [0, 1].
FLAME has no such keys; it has a linear expression basis and five joints. Each ARKit key here is therefore
*defined* by how far points of the face move at value 1 (``DEFINITIONS``, millimetres in FLAME's frame:
+x the subject's left, +y up, +z forward; "Left" is the subject's left, as in ARKit), and turned into a
FLAME expression vector per head by least squares:

    e* = argmin_e  sum_points || B[p] e - d[p] ||^2  +  lam ||e||^2

over the key's moving points (target ``d``) and every other measurement point farther than
``STILL_RADIUS_MM`` from all of them (target 0: what the key must leave alone, e.g. the other eye).
``B[p]`` is the rig's expression basis at point ``p`` (``rig_expr_basis``). The ridge ``lam`` keeps the
code small where the points leave it free. Keys that FLAME moves with a joint instead (jawOpen, jawLeft,
jawRight and the eight eyeLook keys) are a joint rotation (``JOINT_KEYS``, axis-angle in radians), baked
into the key: the rig's linear blend skinning of the template plus its pose correctives, with every other
joint at rest. tongueOut has no FLAME counterpart (FLAME has no tongue): its key is empty, on purpose, so
a stream that carries it still finds the name.

Measurement points are MediaPipe face-mesh points on FLAME's surface from the project's OWN embedding
(core/frontend/data/mediapipe_flame_embedding.npz, our measurement, commercial-friendly), plus two derived
points per side not in MediaPipe's fixed sets (cheek, chin): an average of embedded points moved by a fixed
offset, snapped to the nearest rig vertex. Numpy only: Blender solves this at import time.

Shapes: template (V, 3), expr_basis (V, 3, E), posedirs (V, 3, 36), weights (V, J), joints (J, 3),
faces (F, 3); every displacement returned is (V, 3) in metres.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.results.rig import axis_angle_matrix

__all__ = ["ARKIT_NAMES", "DEFINITIONS", "JOINT_KEYS", "EMPTY_KEYS", "ArkitKey", "solve_arkit_keys",
           "measurement_points"]

MM = 1e-3
STILL_RADIUS_MM = 25.0  # points this far from every moving point must stay where they are
RIDGE = 1e-3  # lam, relative to the mean squared basis norm at the points (scale-free)

# Read directly, not through core.frontend: that package's __init__ imports torch, which must never load
# inside Blender's process. The file is package data of core and travels in the extension's vendored core.
EMBEDDING_FILE = Path(__file__).resolve().parents[1] / "frontend" / "data" / "mediapipe_flame_embedding.npz"

# MediaPipe points per side (+1 the subject's left, -1 the right), from MediaPipe's eye/brow/lip/nose sets.
_SIDE = {
    "lid_up": {-1: 159, 1: 386}, "lid_low": {-1: 145, 1: 374},
    "lid_up_in": {-1: 158, 1: 385}, "lid_up_out": {-1: 160, 1: 387},
    "eye_out": {-1: 33, 1: 263}, "eye_in": {-1: 133, 1: 362},
    "brow_in": {-1: 107, 1: 336}, "brow_mid": {-1: 105, 1: 334}, "brow_out": {-1: 70, 1: 300},
    "corner": {-1: 61, 1: 291}, "lip_up_side": {-1: 37, 1: 267}, "lip_low_side": {-1: 84, 1: 314},
    "lip_up_in_side": {-1: 82, 1: 312}, "lip_low_in_side": {-1: 87, 1: 317}, "nose_wing": {-1: 98, 1: 327},
}
_CENTRE = {"lip_up": 0, "lip_up_in": 13, "lip_low_in": 14, "lip_low": 17, "nose_tip": 1}


def _p(name: str, side: int = 0):
    """A point's key in the definitions: MediaPipe index, or a derived point's name."""
    if name in _CENTRE:
        return _CENTRE[name]
    if name in _SIDE:
        return _SIDE[name][side]
    return f"{name}_{'L' if side > 0 else 'R'}" if side else name


def _sided(side: int, moves: list[tuple[str, tuple[float, float, float]]]) -> dict:
    """Definition for one side; x components are written for the LEFT side (+x outward) and mirrored."""
    return {_p(n, side): (dx * side, dy, dz) for n, (dx, dy, dz) in moves}


def _both(moves) -> dict:
    out = _sided(1, moves)
    out.update(_sided(-1, moves))
    return out


def _lr(name: str, moves) -> dict:
    return {f"{name}Left": _sided(1, moves), f"{name}Right": _sided(-1, moves)}


# ARKit name -> {point: (dx, dy, dz) mm at value 1}. Points absent from a key's entry are free (if near the
# moving ones) or held still (if farther than STILL_RADIUS_MM).
DEFINITIONS: dict[str, dict] = {
    **_lr("eyeBlink", [("lid_up", (0, -8.0, 1.0)), ("lid_up_in", (0, -6.5, 1.0)), ("lid_up_out", (0, -6.5, 1.0)),
                       ("lid_low", (0, 1.0, 0))]),
    **_lr("eyeWide", [("lid_up", (0, 3.0, 0)), ("lid_up_in", (0, 2.5, 0)), ("lid_up_out", (0, 2.5, 0))]),
    **_lr("eyeSquint", [("lid_low", (0, 2.5, 0.5)), ("eye_out", (0, 1.0, 0)), ("cheek", (0, 1.5, 0))]),
    **_lr("browDown", [("brow_in", (-1.5, -4.0, 0)), ("brow_mid", (0, -4.0, 0)), ("brow_out", (0, -3.0, 0))]),
    "browInnerUp": _both([("brow_in", (0, 5.0, 0)), ("brow_mid", (0, 2.0, 0))]),
    **_lr("browOuterUp", [("brow_out", (0, 5.0, 0)), ("brow_mid", (0, 2.0, 0))]),
    "jawForward": {**_both([("chin", (0, 0, 5.0))]), _p("lip_low"): (0, 0, 5.0), _p("lip_low_in"): (0, 0, 4.0)},
    "mouthClose": {_p("lip_up"): (0, -2.0, 0), _p("lip_up_in"): (0, -3.0, 0), _p("lip_low"): (0, 2.0, 0),
                   _p("lip_low_in"): (0, 3.0, 0)},
    **_lr("mouthSmile", [("corner", (3.0, 3.5, -1.5)), ("cheek", (0, 2.0, 0.5))]),
    **_lr("mouthFrown", [("corner", (0, -3.5, 0))]),
    "mouthPucker": {**_both([("corner", (-5.0, 0, 2.0))]), _p("lip_up"): (0, 0, 4.0), _p("lip_low"): (0, 0, 4.0)},
    "mouthFunnel": {**_both([("corner", (-3.0, 0, 1.0))]), _p("lip_up"): (0, 2.0, 4.0), _p("lip_low"): (0, -2.0, 4.0),
                    _p("lip_up_in"): (0, 2.0, 3.0), _p("lip_low_in"): (0, -2.0, 3.0)},
    **{f"mouth{n}": {**{_p(c): (s * 5.0, 0, 0) for c in ("lip_up", "lip_low", "lip_up_in", "lip_low_in")},
                     **{_p("corner", k): (s * 5.0, 0, 0) for k in (-1, 1)}} for n, s in (("Left", 1), ("Right", -1))},
    **_lr("mouthStretch", [("corner", (4.0, -2.0, -1.0)), ("lip_low_side", (0, -1.5, 0))]),
    "mouthRollLower": {_p("lip_low"): (0, 2.0, -3.0), _p("lip_low_in"): (0, 1.0, -2.0)},
    "mouthRollUpper": {_p("lip_up"): (0, -2.0, -3.0), _p("lip_up_in"): (0, -1.0, -2.0)},
    "mouthShrugLower": {_p("lip_low"): (0, 3.0, 1.0), _p("lip_low_in"): (0, 2.0, 0), **_both([("chin", (0, 2.0, 1.0))])},
    "mouthShrugUpper": {_p("lip_up"): (0, 2.0, 1.0), _p("lip_up_in"): (0, 1.5, 0)},
    **_lr("mouthPress", [("lip_up_side", (0, -1.0, -1.0)), ("lip_low_side", (0, 1.0, -1.0)),
                         ("lip_up_in_side", (0, -1.0, 0)), ("lip_low_in_side", (0, 1.0, 0))]),
    **_lr("mouthLowerDown", [("lip_low_side", (0, -4.0, 0)), ("lip_low_in_side", (0, -3.0, 0))]),
    **_lr("mouthUpperUp", [("lip_up_side", (0, 4.0, 0)), ("lip_up_in_side", (0, 3.0, 0))]),
    **_lr("mouthDimple", [("corner", (2.0, 0, -2.0))]),
    "cheekPuff": _both([("cheek", (5.0, 0, 3.0))]),
    **_lr("cheekSquint", [("cheek", (0, 3.0, 0)), ("lid_low", (0, 1.0, 0))]),
    **_lr("noseSneer", [("nose_wing", (0, 3.0, 0)), ("lip_up_side", (0, 1.0, 0))]),
}

# Keys FLAME makes with a joint: (joint name, axis-angle in radians at value 1). Sides of the eyes are
# found from the joints' x (the subject's left eye has x > 0), not from the joint order.
_EYE_UP, _EYE_SIDE = 0.30, 0.40
JOINT_KEYS: dict[str, tuple[str, tuple[float, float, float]]] = {
    "jawOpen": ("jaw", (0.30, 0.0, 0.0)),  # +x opens (the chin goes down)
    "jawLeft": ("jaw", (0.0, 0.12, 0.0)),  # +y turns the chin to +x, the subject's left
    "jawRight": ("jaw", (0.0, -0.12, 0.0)),
    "eyeLookUpLeft": ("eye_left", (-_EYE_UP, 0, 0)), "eyeLookUpRight": ("eye_right", (-_EYE_UP, 0, 0)),
    "eyeLookDownLeft": ("eye_left", (_EYE_UP, 0, 0)), "eyeLookDownRight": ("eye_right", (_EYE_UP, 0, 0)),
    "eyeLookOutLeft": ("eye_left", (0, _EYE_SIDE, 0)), "eyeLookInLeft": ("eye_left", (0, -_EYE_SIDE, 0)),
    "eyeLookOutRight": ("eye_right", (0, -_EYE_SIDE, 0)), "eyeLookInRight": ("eye_right", (0, _EYE_SIDE, 0)),
}
EMPTY_KEYS = ("tongueOut",)

# Apple's order (ARFaceAnchor.BlendShapeLocation, as Live Link Face writes its CSV columns).
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
assert len(ARKIT_NAMES) == 52 and set(ARKIT_NAMES) == set(DEFINITIONS) | set(JOINT_KEYS) | set(EMPTY_KEYS)


@dataclass
class ArkitKey:
    """One solved key. kind: 'expression' (displacement = expr_basis @ code), 'joint' (a baked rotation) or
    'empty'. target_mm / achieved_mm: (P, 3) the definition and the key's displacement at `points`."""

    name: str
    kind: str
    displacement: np.ndarray  # (V, 3) metres, added to the template at value 1
    code: np.ndarray | None = None  # (E,) the expression vector (expression keys)
    points: tuple = ()  # the measured points (MediaPipe index or derived name), moving ones first
    target_mm: np.ndarray | None = None
    achieved_mm: np.ndarray | None = None

    @property
    def rms_error_mm(self) -> float:
        if self.target_mm is None or not len(self.target_mm):
            return 0.0
        return float(np.sqrt(((self.achieved_mm - self.target_mm) ** 2).sum(1).mean()))


def _embedding():
    with np.load(EMBEDDING_FILE, allow_pickle=False) as z:
        return np.asarray(z["mediapipe_index"]), np.asarray(z["face_index"]), np.asarray(z["bary"], np.float64)


def measurement_points(template: np.ndarray, faces: np.ndarray) -> dict:
    """{point: (vertex indices (3,), weights (3,))} for every MediaPipe point of the embedding and the derived
    cheek_L/R and chin_L/R; a point's position on any mesh is weights @ vertices[indices]."""
    template = np.asarray(template, np.float64)
    mp, face_index, bary = _embedding()
    faces = np.asarray(faces, np.int64)
    out = {int(i): (faces[f], b) for i, f, b in zip(mp, face_index, bary)}
    at = lambda k: out[k][1] @ template[out[k][0]]

    def snapped(position):
        v = int(np.argmin(((template - position) ** 2).sum(1)))
        return np.array([v, v, v]), np.array([1.0, 0.0, 0.0])

    for s, tag in ((1, "L"), (-1, "R")):
        # cheek: between the outer eye corner and the mouth corner, 15 mm further out, 5 mm back
        out[f"cheek_{tag}"] = snapped((at(_SIDE["eye_out"][s]) + at(_SIDE["corner"][s])) / 2
                                      + np.array([15.0 * s, 0.0, -5.0]) * MM)
        # chin: 25 mm below the lower lip's side points, on the surface
        out[f"chin_{tag}"] = snapped(at(_SIDE["lip_low_side"][s]) + np.array([0.0, -25.0, -3.0]) * MM)
    return out


def joint_displacement(template, posedirs, weights, joints, joint: int, axis_angle) -> np.ndarray:
    """(V, 3) FLAME's change when one joint turns by `axis_angle` (every other joint at rest): its pose
    correctives, then linear blend skinning (only that joint's transform differs from identity)."""
    template = np.asarray(template, np.float64)
    R = axis_angle_matrix(axis_angle)
    pose_feature = np.zeros((4, 3, 3))  # joints 1..4 (neck, jaw, eyes): vec(R_j - I), FLAME's order
    pose_feature[joint - 1] = R - np.eye(3)
    v = template + np.asarray(posedirs, np.float64)[:, :, :36] @ pose_feature.ravel()
    J = np.asarray(joints, np.float64)[joint]
    moved = (v - J) @ R.T + J
    w = np.asarray(weights, np.float64)[:, joint : joint + 1]
    return v + w * (moved - v) - template


def _joint_index(name: str, joints: np.ndarray) -> int:
    if name == "jaw":
        return 2
    eyes = (3, 4)  # FLAME's eye joints; which is the subject's left is read from x
    left = max(eyes, key=lambda j: joints[j][0])
    return left if name == "eye_left" else (4 if left == 3 else 3)


def solve_arkit_keys(template, faces, expr_basis, posedirs, weights, joints) -> list[ArkitKey]:
    """The 52 keys in ARKIT_NAMES order for one rig (shapes in the module docstring)."""
    template = np.asarray(template, np.float64)
    basis = np.asarray(expr_basis, np.float64)
    points = measurement_points(template, faces)
    names = list(points)
    idx = np.stack([points[n][0] for n in names])  # (P, 3)
    w = np.stack([points[n][1] for n in names])  # (P, 3)
    # (P, 3, E): the basis at every measurement point, in mm per unit code
    B = np.einsum("pk,pkce->pce", w, basis[idx]) / MM
    rest = np.einsum("pk,pkc->pc", w, template[idx]) / MM
    lam = RIDGE * float((B ** 2).sum()) / max(B.shape[2], 1)
    keys = []
    for name in ARKIT_NAMES:
        if name in EMPTY_KEYS:
            keys.append(ArkitKey(name, "empty", np.zeros_like(template)))
        elif name in JOINT_KEYS:
            joint, aa = JOINT_KEYS[name]
            j = _joint_index(joint, np.asarray(joints, np.float64))
            keys.append(ArkitKey(name, "joint", joint_displacement(template, posedirs, weights, joints, j, aa)))
        else:
            moving = DEFINITIONS[name]
            mov = [names.index(p) for p in moving]
            dist = np.sqrt(((rest[:, None] - rest[mov][None]) ** 2).sum(-1)).min(1)  # (P,) mm to the nearest mover
            still = [i for i in range(len(names)) if dist[i] > STILL_RADIUS_MM]
            rows = mov + still
            target = np.zeros((len(rows), 3))
            target[: len(mov)] = np.array(list(moving.values()), np.float64)
            A = B[rows].reshape(-1, B.shape[2])
            code = np.linalg.solve(A.T @ A + lam * np.eye(A.shape[1]), A.T @ target.ravel())
            keys.append(ArkitKey(name, "expression", basis @ code, code, tuple(names[i] for i in rows), target,
                                 (A @ code).reshape(-1, 3)))
    return keys
