"""ARKit's 52 keys (core/results/arkit.py) without Blender: the documented table matches the code, and the
solve reproduces a definition FLAME's basis can make exactly. (On a Blender head: test_blender_addon.py.)"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.results.arkit import (ARKIT_NAMES, DEFINITIONS, EMPTY_KEYS, JOINT_KEYS, MM, measurement_points,
                                solve_arkit_keys)

DOC = Path(__file__).resolve().parents[1] / "docs" / "arkit.md"


def test_every_key_is_documented_as_defined():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| (.+) \|$", DOC.read_text(), re.M)}
    assert [n for n in rows if n in ARKIT_NAMES] == list(ARKIT_NAMES)
    for name in ARKIT_NAMES:
        row = rows[name]
        if name in EMPTY_KEYS:
            assert "empty" in row
        elif name in JOINT_KEYS:
            joint, aa = JOINT_KEYS[name]
            assert f"`{joint}`" in row and f"({', '.join(f'{a:g}' for a in aa)})" in row, name
        else:
            for point, d in DEFINITIONS[name].items():
                label = f"({point})" if isinstance(point, int) else point.replace("_", " ")
                assert f"{label}: ({', '.join(f'{x:g}' for x in d)})" in row, (name, point)


def test_an_achievable_definition_is_met(test_flame):
    """A basis whose first component is exactly mouthSmileLeft's definition at its points (and 0 at the other
    points) gives the key that component, up to the ridge's shrinkage lam / (|b|^2 + lam)."""
    model = test_flame
    template = model.v_template
    points = measurement_points(template, model.faces)
    basis = np.array(model.expr_basis[:, :, :10], np.float64)
    basis[:, :, 0] = 0.0
    for p, d in DEFINITIONS["mouthSmileLeft"].items():
        idx, w = points[p]
        np.add.at(basis[:, :, 0], idx, np.outer(w / (w @ w), np.asarray(d) * MM))  # weights @ vertices = d
    key = next(k for k in solve_arkit_keys(template, model.faces, basis, model.posedirs, model.weights,
                                           model.J_regressor @ template) if k.name == "mouthSmileLeft")
    n = len(DEFINITIONS["mouthSmileLeft"])
    np.testing.assert_allclose(key.achieved_mm[:n], key.target_mm[:n], atol=0.04)  # measured 0.027 mm: the ridge's shrinkage
    assert key.rms_error_mm < 0.01  # measured 0.0046 mm
