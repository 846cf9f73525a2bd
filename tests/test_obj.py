"""core.obj, the one OBJ reader/writer: the corner forms OBJ allows, triangulation, and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import DecaError
from core.obj import ObjError, read_obj, write_obj


def test_corner_forms_negative_indices_and_fan_triangulation(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text("# a quad and a triangle\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                 "vn 0 0 1\nf 1/1/1 2/2/1 3/3/1 4/4/1\nf -4/-4 -2/-2 -1/-1\n")
    m = read_obj(p)
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(m.uv_faces, m.faces)
    assert m.vertices.shape == (4, 3) and m.uv_coords.shape == (4, 2)
    q = tmp_path / "n.obj"
    q.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1//1 2//1 3//1\n")
    m = read_obj(q)
    assert m.faces.tolist() == [[0, 1, 2]] and m.uv_faces.shape == (0, 3)
    with pytest.raises(ObjError, match="texture indices"):
        read_obj(q, need_uvs=True)
    with pytest.raises(ObjError, match="4 corners"):
        read_obj(p, triangles_only=True)


def test_write_then_read_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    v, vt = rng.normal(size=(10, 3)), rng.uniform(size=(12, 2))
    f, ft = rng.integers(0, 10, size=(7, 3)), rng.integers(0, 12, size=(7, 3))
    m = read_obj(write_obj(tmp_path / "a.obj", v, f, vt, ft, header="test", mtllib="a.mtl", material="m"))
    np.testing.assert_allclose(m.vertices, v, rtol=1e-6, atol=1e-7)  # written with 7 significant digits
    np.testing.assert_allclose(m.uv_coords, vt, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(m.faces, f)
    np.testing.assert_array_equal(m.uv_faces, ft)
    m = read_obj(write_obj(tmp_path / "b.obj", v, f))
    np.testing.assert_array_equal(m.faces, f) and m.uv_faces.shape == (0, 3)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(ObjError, match="not found"):
        read_obj(tmp_path / "missing.obj")
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    with pytest.raises(ObjError, match="beyond the listed vertices") as exc:
        read_obj(bad)
    assert isinstance(exc.value, DecaError)
    bad.write_text("v 0 zero 0\n")
    with pytest.raises(ObjError, match="not a readable OBJ"):
        read_obj(bad)


def test_face_lines_cached_per_topology_are_those_of_the_faces_given():
    """The ``f`` lines are cached by topology (every result of one FLAME model shares them): alternating two
    topologies, with and without UVs, must give each one's own lines, written out here by hand."""
    from core.obj import obj_text

    rng = np.random.default_rng(1)
    v = rng.random((6, 3))
    f1, f2 = np.array([[0, 1, 2], [2, 3, 4]]), np.array([[5, 4, 3], [1, 0, 5]])
    ft = np.array([[0, 1, 2], [3, 4, 5]])
    uv = rng.random((6, 2))
    for _ in range(2):
        for f in (f1, f2):
            text = obj_text(v, f, uv, ft)
            faces = [ln for ln in text.splitlines() if ln.startswith("f ")]
            assert faces == [f"f {a + 1}/{d + 1} {b + 1}/{e + 1} {c + 1}/{g + 1}"
                             for (a, b, c), (d, e, g) in zip(f.tolist(), ft.tolist())]
            plain = [ln for ln in obj_text(v, f).splitlines() if ln.startswith("f ")]
            assert plain == [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f.tolist()]
