"""Drivers: FLAME's pose correctives from the bones, wrinkle-map factors from the expression sliders.

Every expression here is a Blender *simple expression* (arithmetic, comparisons, the ternary and a few
math functions), evaluated natively without Python, so the drivers work in files opened with Auto Run
Python Scripts off. `is_simple_expression` is checked by the tests.

Pose correctives. FLAME adds `posedirs @ vec(R_j - I)` for the joints neck, jaw, eye_L, eye_R (row-major).
Each entry of R - I is a quadratic form in the bone's rotation quaternion (w, x, y, z); dividing by
w^2 + x^2 + y^2 + z^2 keeps it exact for quaternions that are not normalised. The quaternion comes from
transform-channel variables in the bone's local space (its pose relative to its rest, which is FLAME's
local joint rotation because rest rotations are the identity; see armature.py).

Wrinkles. The wrinkle model gives factor_k = sum_j M[k, j] x_j with x = [exp_000..exp_049 key values,
jaw axis-angle (3)]. A driver expression holds at most 255 characters, too few for 53 weighted terms,
so each factor is a sum of *partials*: hidden custom properties `_deca_w<k>_<c>` on the mesh object,
each driven by a chunk of the expression terms (or by the jaw's three terms, converted exactly from the
jaw bone's quaternion: angle 2*atan2(|v|, |w|) along v, sign-canonicalised), and the node group's Value
node `factor_<k>` is driven by (sum of partials) * the head's wrinkle strength.
"""
from __future__ import annotations

import numpy as np

from .mesh import exp_key_name, pc_key_name

CORRECTIVE_JOINTS = ("neck", "jaw", "eye_L", "eye_R")
MAX_EXPRESSION = 250  # Blender stores 255 characters; keep a margin

_NORM = "(w*w+x*x+y*y+z*z)"
# (R - I)[r, c] of the rotation of quaternion (w, x, y, z), row-major.
R_MINUS_I = (
    f"-2*(y*y+z*z)/{_NORM}", f"2*(x*y-w*z)/{_NORM}", f"2*(x*z+w*y)/{_NORM}",
    f"2*(x*y+w*z)/{_NORM}", f"-2*(x*x+z*z)/{_NORM}", f"2*(y*z-w*x)/{_NORM}",
    f"2*(x*z-w*y)/{_NORM}", f"2*(y*z+w*x)/{_NORM}", f"-2*(x*x+y*y)/{_NORM}",
)
# Exact axis-angle scale for the vector part (x, y, z): angle / |v|, canonical sign (w >= 0).
_S2 = "(x*x+y*y+z*z)"
AXIS_ANGLE_SCALE = f"(2*atan2(sqrt({_S2}),abs(w))/sqrt({_S2}) if {_S2}>1e-14 else 2/abs(w))*(1 if w>=0 else -1)"


def _coef(c: float) -> str:
    return f"{float(c):.8g}"


def _quaternion_variables(driver, arm_obj, bone: str) -> None:
    for name, channel in (("w", "ROT_W"), ("x", "ROT_X"), ("y", "ROT_Y"), ("z", "ROT_Z")):
        var = driver.variables.new()
        var.name = name
        var.type = "TRANSFORMS"
        t = var.targets[0]
        t.id = arm_obj
        t.bone_target = bone
        t.transform_type = channel
        t.rotation_mode = "QUATERNION"
        t.transform_space = "LOCAL_SPACE"


def _prop_variable(driver, name: str, id_type: str, id_block, data_path: str) -> None:
    var = driver.variables.new()
    var.name = name
    var.type = "SINGLE_PROP"
    t = var.targets[0]
    t.id_type = id_type
    t.id = id_block
    t.data_path = data_path


def _new_driver(id_block, data_path: str):
    fcurve = id_block.driver_add(data_path)
    # driver_add gives the F-curve a default mapping: a Generator modifier (Blender 4.x) or two keyframes
    # (0, 0), (1, 1) (Blender 5.0). Keyframes snap driver values within 0.01 of a key to the key's value,
    # which would zero small pose correctives and wrinkle factors, so the F-curve is emptied: with neither
    # keyframes nor modifiers, the driver's value is used exactly.
    for mod in list(fcurve.modifiers):
        fcurve.modifiers.remove(mod)
    points = fcurve.keyframe_points
    if hasattr(points, "clear"):
        points.clear()
    else:
        for point in reversed(list(points)):
            points.remove(point)
    driver = fcurve.driver
    driver.type = "SCRIPTED"
    return driver


def add_pose_corrective_drivers(mesh_obj, arm_obj) -> list:
    """Drive pc_000..pc_035 from the neck, jaw and eye bones. Returns the drivers."""
    key = mesh_obj.data.shape_keys
    drivers = []
    for j, bone in enumerate(CORRECTIVE_JOINTS):
        for e, expression in enumerate(R_MINUS_I):
            name = pc_key_name(9 * j + e)
            driver = _new_driver(key, f'key_blocks["{name}"].value')
            _quaternion_variables(driver, arm_obj, bone)
            driver.expression = expression
            drivers.append(driver)
    return drivers


def _chunks(terms: list[tuple[str, str]], budget: int) -> list[list[tuple[str, str]]]:
    """Greedy packing of (variable, coefficient) terms into expressions of at most `budget` characters."""
    out, current, length = [], [], 0
    for var, coef in terms:
        piece = len(coef) + len(var) + 2  # "+c*v"
        if current and length + piece > budget:
            out.append(current)
            current, length = [], 0
        current.append((var, coef))
        length += piece
    if current:
        out.append(current)
    return out


def partial_property_name(k: int, c: int) -> str:
    return f"_deca_w{k:02d}_{c}"


def factor_node_name(k: int) -> str:
    return f"factor_{k:02d}"


def add_wrinkle_drivers(mesh_obj, arm_obj, node_group, matrix: np.ndarray, n_exp_inputs: int = 50,
                        strength_path: str = "deca.wrinkle_strength") -> list:
    """Drive node_group's Value nodes factor_<k> = strength * (M @ x)_k. Returns all drivers created."""
    matrix = np.asarray(matrix, np.float64)
    K, n_inputs = matrix.shape
    key = mesh_obj.data.shape_keys
    drivers = []
    for k in range(K):
        terms = [(f"e{j}", _coef(matrix[k, j])) for j in range(min(n_exp_inputs, n_inputs)) if matrix[k, j] != 0.0]
        partials = []
        for chunk in _chunks(terms, MAX_EXPRESSION):
            prop = partial_property_name(k, len(partials))
            mesh_obj[prop] = 0.0
            driver = _new_driver(mesh_obj, f'["{prop}"]')
            for var, _ in chunk:
                _prop_variable(driver, var, "KEY", key, f'key_blocks["{exp_key_name(int(var[1:]))}"].value')
            driver.expression = "+".join(f"{c}*{v}" for v, c in chunk).replace("+-", "-")
            drivers.append(driver)
            partials.append(prop)
        if n_inputs >= n_exp_inputs + 3 and np.any(matrix[k, n_exp_inputs:n_exp_inputs + 3] != 0):
            a, b, c = (_coef(v) for v in matrix[k, n_exp_inputs:n_exp_inputs + 3])
            prop = partial_property_name(k, len(partials))
            mesh_obj[prop] = 0.0
            driver = _new_driver(mesh_obj, f'["{prop}"]')
            _quaternion_variables(driver, arm_obj, "jaw")
            driver.expression = f"({a}*x+{b}*y+{c}*z)*{AXIS_ANGLE_SCALE}".replace("+-", "-")
            drivers.append(driver)
            partials.append(prop)
        driver = _new_driver(node_group, f'nodes["{factor_node_name(k)}"].outputs[0].default_value')
        for i, prop in enumerate(partials):
            _prop_variable(driver, f"p{i}", "OBJECT", mesh_obj, f'["{prop}"]')
        _prop_variable(driver, "s", "OBJECT", mesh_obj, strength_path)
        driver.expression = f"({'+'.join(f'p{i}' for i in range(len(partials))) or '0'})*s"
        drivers.append(driver)
    return drivers
