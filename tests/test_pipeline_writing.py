"""Result-folder writing: names, the all-or-nothing commit, OBJ/MTL, the 16-bit displacement encoding."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from core.frontend import read_png16, write_png
from core.obj import read_obj
from core.results import encodings as enc
from core.results import writing


def test_folder_names_never_replace_existing_results(tmp_path):
    (tmp_path / "photo").mkdir()
    reserved: set[str] = set()
    assert writing.pick_base_stem(tmp_path, "photo", 1, False, reserved) == "photo-2"
    assert writing.pick_base_stem(tmp_path, "photo", 1, False, reserved) == "photo-3"  # reserved in this run
    assert writing.pick_base_stem(tmp_path, "other", 2, False, reserved) == "other"
    (tmp_path / "x_face1").mkdir()
    assert writing.pick_base_stem(tmp_path, "x", 2, False, set()) == "x-2"  # a face folder is taken
    assert writing.pick_base_stem(tmp_path, "photo", 1, True, set()) == "photo"  # overwrite
    assert writing.folder_name("a", 0) == "a" and writing.folder_name("a", 2) == "a_face2"
    assert writing.safe_stem("my photo (1)") == "my_photo_1" and writing.safe_stem("...") == "photo"


def test_commit_is_atomic_and_overwrite_replaces(tmp_path):
    tmp = writing.new_temp_folder(tmp_path, "face")
    assert tmp.name.startswith(".face.tmp-")
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    assert mode == 0o777 & ~_umask()  # not the 0700 of mkdtemp
    (tmp / "a.txt").write_text("new")
    (tmp_path / "face").mkdir()
    (tmp_path / "face" / "a.txt").write_text("old")
    final = writing.commit_folder(tmp, tmp_path / "face", overwrite=False)
    assert final.name == "face-2" and (tmp_path / "face" / "a.txt").read_text() == "old"
    tmp2 = writing.new_temp_folder(tmp_path, "face")
    (tmp2 / "a.txt").write_text("newer")
    final2 = writing.commit_folder(tmp2, tmp_path / "face", overwrite=True)
    assert final2 == tmp_path / "face" and (final2 / "a.txt").read_text() == "newer"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


def test_output_dir_checks(tmp_path):
    out = writing.check_output_dir(tmp_path / "a" / "b")
    assert out.is_dir()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(writing.OutputDirError, match="cannot create|not a folder"):
        writing.check_output_dir(f)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(writing.OutputDirError, match="not writable"):
                writing.check_output_dir(ro)
        finally:
            ro.chmod(0o700)


def test_obj_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(10, 3)) * 0.1
    vt = rng.uniform(size=(12, 2))
    f = rng.integers(0, 10, size=(7, 3))
    ft = rng.integers(0, 12, size=(7, 3))
    obj, mtl = writing.write_obj(tmp_path, v, f, vt, ft)
    m = read_obj(obj)
    v2, vt2, f2, ft2 = m.vertices, m.uv_coords, m.faces, m.uv_faces
    np.testing.assert_allclose(v2, v, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(vt2, vt, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(f2, f)
    np.testing.assert_array_equal(ft2, ft)
    text = obj.read_text()
    assert "mtllib mesh.mtl" in text and "usemtl" in text
    assert "map_Kd texture.png" in mtl.read_text()


def test_displacement_png_encoding_round_trip(tmp_path):
    d = np.random.default_rng(1).normal(size=(256, 256)) * 1e-3
    scale = enc.displacement_scale(d)
    assert scale >= np.abs(d).max()
    write_png(tmp_path / "d.png", enc.encode_displacement(d, scale), bits=16)
    q = read_png16(tmp_path / "d.png")
    assert q.dtype == np.uint16 and q.shape == (256, 256)
    back = enc.decode_displacement_png(q, scale)
    assert np.abs(back - d).max() <= scale / 65535 + 1e-12
    # the documented formula
    np.testing.assert_array_equal(q, np.rint((d / scale + 1) / 2 * 65535).astype(np.uint16))


def test_draw_points_and_normal_encoding():
    img = np.zeros((20, 20, 3), np.float32)
    enc.draw_points(img, np.array([[10.0, 5.0], [-3, 4], [np.nan, 1]]), (1, 0, 0), radius=1.5)
    assert img[4, 9, 0] == 1 and img[4, 9, 1] == 0 and img[15, 15].sum() == 0
    n = np.zeros((2, 2, 3))
    n[0, 0] = [0, 0, 1]
    encoded = enc.encode_normals(n)
    np.testing.assert_allclose(encoded[0, 0], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(encoded[1, 1], [0.5, 0.5, 0.5])
