"""The TEST model's first expression components are expressions (smile, lips apart, ...), not bumps."""
from __future__ import annotations

import numpy as np
import pytest

from core.frontend.flame_embedding import load_mediapipe_embedding
from core.testmodels.expressions import EXPRESSION_NAMES
from core.testmodels.painted_head import EYEBALLS


@pytest.fixture(scope="module")
def parts(test_flame):
    emb = load_mediapipe_embedding()
    v, f = np.asarray(test_flame.v_template), np.asarray(test_flame.faces)
    pts = dict(zip(emb.mediapipe_index.tolist(), range(len(emb.mediapipe_index))))

    def moved(k: int, mp_index: int) -> np.ndarray:
        """Displacement (mm, per unit coefficient) of a MediaPipe point's surface spot under component k."""
        d = emb.points(v + test_flame.expr_basis[:, :, k], f) - emb.points(v, f)
        return d[pts[mp_index]] * 1000.0

    return test_flame, moved


def test_components_do_what_their_names_say(parts):
    model, moved = parts
    k = {n: i for i, n in enumerate(EXPRESSION_NAMES)}
    assert model.is_test_model
    # smile: both mouth corners up and outward (+x is the subject's left)
    assert moved(k["smile"], 61)[1] > 1.5 and moved(k["smile"], 291)[1] > 1.5
    assert moved(k["smile"], 61)[0] < -1.0 and moved(k["smile"], 291)[0] > 1.0
    # lips apart: upper lip up, lower lip down
    assert moved(k["lips apart"], 0)[1] > 1.0 and moved(k["lips apart"], 17)[1] < -1.5
    # pucker: corners towards the middle, lips forward
    assert moved(k["pucker"], 61)[0] > 1.5 and moved(k["pucker"], 291)[0] < -1.5 and moved(k["pucker"], 0)[2] > 1.0
    assert moved(k["brow raise"], 105)[1] > 2.0 and moved(k["brow raise"], 334)[1] > 2.0
    # eye closure: the skin of the upper lid (within 4 mm of MediaPipe's lid point 159, which lies on the
    # eyeball's edge) comes down; the lower lid (145) stays
    emb = load_mediapipe_embedding()
    v, f = np.asarray(model.v_template), np.asarray(model.faces)
    lid = emb.points(v, f)[list(emb.mediapipe_index).index(159)]
    eyeball = np.zeros(len(v), bool)
    for eye in EYEBALLS:
        eyeball[eye] = True
    near = (np.linalg.norm(v - lid, axis=1) < 0.004) & ~eyeball & (v[:, 1] > lid[1])
    assert near.sum() >= 3 and model.expr_basis[near, 1, k["eye closure"]].min() * 1000.0 < -2.0
    assert abs(moved(k["eye closure"], 145)[1]) < 0.5
    assert moved(k["frown"], 61)[1] < -2.0 and moved(k["frown"], 291)[1] < -2.0
    left = moved(k["left smile"], 291)[1], moved(k["left smile"], 61)[1]
    assert left[0] > 1.5 and abs(left[1]) < 0.2
    # nothing moves the nose tip much, and the eyeballs never move
    for i in range(len(EXPRESSION_NAMES)):
        assert np.linalg.norm(moved(i, 4)) < 1.0
        for eye in EYEBALLS:
            assert np.abs(model.expr_basis[eye, :, i]).max() == 0.0


def test_magnitudes_are_centimetres_at_three_sigma(parts):
    model, _ = parts
    peak = np.linalg.norm(model.expr_basis[:, :, : len(EXPRESSION_NAMES)], axis=1).max(0) * 1000.0  # mm per unit
    assert (peak > 1.5).all() and (peak < 5.0).all(), peak
    assert 7.0 < 3 * np.median(peak) < 13.0
