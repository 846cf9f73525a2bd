"""Reading FLAME files: the official pickle form, old and new library names, the compact npz, and
every way a file can be wrong, each with its own message. Nothing a pickle names may run."""
from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from core.flame import FlameModelError, load_flame_model, save_flame_npz
from core.flame.landmarks import LandmarkEmbeddingError, read_official_embedding
from core.safe_pickle import load_restricted
from core.testmodels.procedural_head import build_procedural_head
from core.testmodels.synthetic_flame import official_pickle_dict, write_official_pickle, _fake_chumpy_modules, _registered


def test_generated_model_round_trips_through_official_pickle(test_flame_pkl, test_flame, deca_data_dir, joint_regressor_path):
    from core.testmodels.synthetic_flame import build_test_flame

    built = build_test_flame(deca_data_dir / "head_template.obj", joint_regressor_path, deca_data_dir / "landmark_embedding.npy")
    for name in ("v_template", "shape_basis", "expr_basis", "posedirs", "J_regressor", "weights", "faces", "parents"):
        np.testing.assert_array_equal(getattr(test_flame, name), getattr(built, name), err_msg=name)
    assert test_flame.is_test_model and test_flame.variant == "test"
    assert test_flame.shape_basis.shape == (5023, 3, 300) and test_flame.expr_basis.shape == (5023, 3, 100)
    assert test_flame.parents.tolist() == [-1, 0, 1, 1, 1]
    # The file really has the official structure: chumpy classes and a sparse regressor by name.
    raw = test_flame_pkl.read_bytes()
    for name in (b"chumpy.ch\nCh", b"chumpy.reordering\nSelect", b"csc_matrix", b"__builtin__"):
        assert name in raw
    assert raw[:2] == b"\x80\x02"  # protocol 2, as Python 2 wrote it


def test_faces_match_the_template_obj(test_flame, deca_data_dir):
    from core.flame.template import read_template_obj

    mesh = read_template_obj(deca_data_dir / "head_template.obj")
    assert mesh.uv_coords.shape == (5118, 2) and mesh.uv_faces.shape == (9976, 3)
    np.testing.assert_array_equal(mesh.faces, test_flame.faces)


def test_old_and_new_library_names_both_load(tmp_path, test_flame_pkl, test_flame):
    raw = test_flame_pkl.read_bytes()
    # Protocol-2 GLOBAL opcodes are newline-separated text, so names can be respelt in place.
    variants = {
        "numpy2": raw.replace(b"numpy.core.multiarray\n", b"numpy._core.multiarray\n"),
        "old_scipy": raw.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n"),
    }
    assert variants["numpy2"] != raw and variants["old_scipy"] != raw
    for name, data in variants.items():
        p = tmp_path / f"{name}.pkl"
        p.write_bytes(data)
        m = load_flame_model(p)
        np.testing.assert_array_equal(m.J_regressor, test_flame.J_regressor)
        np.testing.assert_array_equal(m.shape_basis, test_flame.shape_basis)


def test_protocol0_pickle_with_python2_copy_reg_names(tmp_path):
    data = build_procedural_head()
    modules = _fake_chumpy_modules()
    with _registered(modules):
        payload = pickle.dumps(official_pickle_dict(data, modules), protocol=0, fix_imports=True)
    assert b"copy_reg\n_reconstructor" in payload and b"__builtin__\nobject" in payload
    p = tmp_path / "p0.pkl"
    p.write_bytes(payload)
    m = load_flame_model(p, require_flame_topology=False)
    np.testing.assert_allclose(m.weights, data.weights)
    np.testing.assert_allclose(m.v_template, data.v_template)


def test_npz_form_round_trip(tmp_path, test_flame):
    p = tmp_path / "flame.npz"
    save_flame_npz(test_flame, p)
    m = load_flame_model(p)
    assert m.is_test_model and m.variant == "test"
    for name in ("v_template", "shape_basis", "expr_basis", "posedirs", "J_regressor", "weights"):
        np.testing.assert_allclose(getattr(m, name), getattr(test_flame, name), rtol=1e-6, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(m.faces, test_flame.faces)
    assert p.stat().st_size < 40e6
    import zipfile
    with zipfile.ZipFile(p) as z:  # stored, not deflated: inflating cost 0.2-0.4 s of each cold start
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    # files written deflated (by older versions) still load, with the same numbers
    np.savez_compressed(tmp_path / "old.npz", **dict(np.load(p)))
    old = load_flame_model(tmp_path / "old.npz")
    for name in ("v_template", "shape_basis", "expr_basis", "posedirs", "J_regressor", "weights", "faces"):
        np.testing.assert_array_equal(getattr(old, name), getattr(m, name), err_msg=name)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "generic_model.pkl"
    p.write_bytes(pickle.dumps({"v_template": _Exploit(marker)}, protocol=2))
    with pytest.raises(FlameModelError) as err:
        load_flame_model(p)
    msg = str(err.value)
    assert str(p) in msg and "system" in msg and "not imported or run" in msg
    assert not marker.exists()
    # The same through eval-like builtins: refused too.
    p.write_bytes(pickle.dumps({"x": type("E", (), {"__reduce__": lambda s: (eval, ("1+1",))})()}, protocol=2))
    with pytest.raises(FlameModelError, match="eval"):
        load_flame_model(p)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found"),
        ("empty", "is empty"),
        ("truncated", "truncated or not a pickle"),
        ("text", "truncated or not a pickle"),
        ("list", "holds a list"),
        ("missing_keys", "lacks FLAME's keys ['posedirs', 'weights']"),
        ("wrong_shape", "'posedirs' has shape (5023, 3, 35)"),
        ("other_topology", "has 6890 vertices but FLAME has 5023"),
        ("bad_npz", "truncated or not a valid .npz"),
    ],
)
def test_each_bad_file_gets_its_own_message(tmp_path, test_flame_pkl, test_flame, case, expected):
    p = tmp_path / "model.pkl"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "truncated":
        p.write_bytes(test_flame_pkl.read_bytes()[:100000])
    elif case == "text":
        p.write_text("<html>Please log in to download FLAME</html>")
    elif case == "list":
        p.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    elif case in ("missing_keys", "wrong_shape", "other_topology"):
        modules = _fake_chumpy_modules()
        data = test_flame
        if case == "other_topology":
            from dataclasses import replace

            V = 6890  # SMPL's vertex count
            data = replace(test_flame, v_template=np.zeros((V, 3)), shape_basis=np.zeros((V, 3, 10)),
                           expr_basis=np.zeros((V, 3, 0)), posedirs=np.zeros((V, 3, 36)),
                           J_regressor=np.zeros((5, V)), weights=np.full((V, 5), 0.2))
        with _registered(modules):
            d = official_pickle_dict(data, modules)
            if case == "missing_keys":
                del d["posedirs"], d["weights"]
            if case == "wrong_shape":
                d["posedirs"] = d["posedirs"][:, :, :35]
            p.write_bytes(pickle.dumps(d, protocol=2))
    elif case == "bad_npz":
        p = tmp_path / "model.npz"
        p.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(FlameModelError) as err:
        load_flame_model(p)
    assert str(p) in str(err.value)
    assert expected in str(err.value)


def test_official_embedding_read_safely_equals_numpy_reading(deca_data_dir, embedding):
    # Independent reading: numpy's own (unsafe) unpickling, acceptable here on the known release file.
    ref = np.load(deca_data_dir / "landmark_embedding.npy", allow_pickle=True, encoding="latin1").item()
    for key, arr in embedding.to_arrays().items():
        r = ref[key]
        r = r.numpy() if hasattr(r, "numpy") else np.asarray(r)
        np.testing.assert_allclose(arr, r.reshape(arr.shape), err_msg=key)


def test_malicious_embedding_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "landmark_embedding.npy"
    np.save(p, np.array({"static_lmk_faces_idx": _Exploit(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(LandmarkEmbeddingError, match="posix.system|os.system|system"):
        read_official_embedding(p)
    assert not marker.exists()


def test_restricted_unpickler_allows_chumpy_names_without_chumpy_installed():
    assert "chumpy" not in sys.modules
    modules = _fake_chumpy_modules()
    with _registered(modules):
        payload = pickle.dumps({"a": modules["chumpy.ch"].Ch(np.arange(6.0).reshape(2, 3))}, protocol=2)
    obj = load_restricted(payload, "mem")
    assert isinstance(obj["a"], types.SimpleNamespace) is False
    np.testing.assert_array_equal(obj["a"].value(), np.arange(6.0).reshape(2, 3))
    assert "chumpy" not in sys.modules


def test_npz_read_from_the_mapping_equals_numpys_reading(tmp_path, test_flame):
    """`load_flame_npz` reads a stored `.npz` through a memory map instead of `np.load`: the same arrays,
    bit for bit, as numpy's own reading converted the same way (bound 0: the same bytes are converted)."""
    p = tmp_path / "flame.npz"
    save_flame_npz(test_flame, p)
    m = load_flame_model(p)
    with np.load(p, allow_pickle=False) as z:
        for name in ("v_template", "shape_basis", "expr_basis", "posedirs", "J_regressor", "weights"):
            want = z[name].astype(np.float64)
            got = getattr(m, name)
            assert got.dtype == np.float64 and got.flags.writeable and got.flags.owndata, name
            assert got.strides == want.strides, name  # the same memory order (J_regressor is stored F-order)
            np.testing.assert_array_equal(got, want, err_msg=name)
        for name in ("parents", "faces"):
            assert getattr(m, name).dtype == np.int64
            np.testing.assert_array_equal(getattr(m, name), z[name], err_msg=name)


def test_damaged_npz_member_is_refused(tmp_path, test_flame):
    """One flipped byte inside a stored member: the CRC check refuses the file (as zipfile's reading did)."""
    p = tmp_path / "flame.npz"
    save_flame_npz(test_flame, p)
    raw = bytearray(p.read_bytes())
    import zipfile
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("shape_basis.npy")
    raw[info.header_offset + 30 + len(info.filename) + 4096] ^= 0xFF  # past the npy header, inside the data
    p.write_bytes(bytes(raw))
    with pytest.raises(FlameModelError, match="truncated or not a valid .npz"):
        load_flame_model(p)
    p.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated: zipfile finds no central directory
    with pytest.raises(FlameModelError, match="truncated or not a valid .npz"):
        load_flame_model(p)
