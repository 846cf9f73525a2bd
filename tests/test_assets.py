"""The asset manager through its command line: status on an empty home, install, verify, refusals."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.assets import AssetManager, MissingAssetError, catalog
from core.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_status_json_on_empty_home_lists_every_missing_file(tmp_path, capsys):
    home = tmp_path / "home"
    rc, out, _ = run_cli(capsys, "assets", "--home", str(home), "status", "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["ready"] is False
    by_name = {a["name"]: a for a in info["assets"]}
    required = [a for a in catalog.ALL_ASSETS if a.required]
    assert sorted(info["missing"]) == sorted(a.download_name for a in required)
    for spec in required:
        entry = by_name[spec.name]
        assert entry["present"] is False
        assert entry["download_page"].startswith("https://")
        assert entry["install_command"].startswith("deca-blender assets install")
    assert "flame.is.tue.mpg.de" in by_name["flame_model"]["download_page"]
    assert by_name["texture_space"]["required"] is False
    assert not home.exists() or not any(home.iterdir())  # status writes nothing


def test_console_script_entry_point(tmp_path):
    exe = Path(sys.executable).with_name("deca-blender")
    if not exe.exists():
        pytest.skip("package not installed with its console script (run ./setup.sh)")
    r = subprocess.run([str(exe), "assets", "--home", str(tmp_path), "status", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ready"] is False


def test_install_data_and_test_flame_then_status_reports_present(tmp_path, capsys, deca_data_dir, test_flame_pkl, embedding):
    home = tmp_path / "home"
    rc, out, err = run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(deca_data_dir),
                           "--flame", str(test_flame_pkl))
    assert rc == 0, err
    assert "TEST model" in out
    rc, out, _ = run_cli(capsys, "assets", "--home", str(home), "status", "--json")
    info = json.loads(out)
    present = {a["name"] for a in info["assets"] if a["present"]}
    assert present == {"flame_model"} | {s.name for s in catalog.DATA_FILES}
    assert info["missing"] == ["deca_model.tar"]
    reg = json.loads((home / "assets.json").read_text())
    for name in present:
        assert len(reg[name]["sha256"]) == 64
    assert reg["flame_model"]["is_test_model"] is True
    # The embedding is stored as plain arrays (no pickles) equal to the official file's content.
    with np.load(home / catalog.LANDMARK_EMBEDDING.installed_as, allow_pickle=False) as z:
        for key, arr in embedding.to_arrays().items():
            np.testing.assert_array_equal(z[key], arr)
    # Now the DECA checkpoint (random weights in the official layout) makes the home ready.
    from core.networks import build_deca_networks, save_deca_checkpoint

    ckpt = save_deca_checkpoint(build_deca_networks(), tmp_path / "deca_model.tar")
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--deca", str(ckpt))
    assert rc == 0, err
    assert AssetManager(home).require()["deca_model"].is_file()
    rc, out, err = run_cli(capsys, "assets", "--home", str(home), "verify")
    assert rc == 0, err
    assert out.count("ok ") == 8


def test_verify_detects_a_changed_file_and_reinstall_needs_force(tmp_path, capsys, deca_data_dir):
    home = tmp_path / "home"
    data = tmp_path / "data"
    shutil.copytree(deca_data_dir, data)
    assert run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(data))[0] == 0
    installed = home / catalog.MEAN_TEXTURE.installed_as
    installed.write_bytes(installed.read_bytes()[:-10] + b"0123456789")
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "verify")
    assert rc == 1 and "mean_texture" in err and "changed since it was installed" in err
    # Same source again: a no-op. A different source: refused without --force, replaced with it.
    assert run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(data))[0] == 0
    from PIL import Image

    Image.fromarray(np.zeros((512, 512, 3), np.uint8)).save(data / "mean_texture.jpg")
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(data))
    assert rc == 2 and "already installed" in err and "--force" in err
    assert run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(data), "--force")[0] == 0
    problems = run_cli(capsys, "assets", "--home", str(home), "verify")[2].splitlines()
    assert [p.split(":")[1].strip() for p in problems] == ["flame_model", "deca_model"]  # only the missing ones


def test_bad_inputs_leave_the_home_untouched(tmp_path, capsys, deca_data_dir):
    home = tmp_path / "home"
    bad = tmp_path / "generic_model.pkl"
    bad.write_text("not a pickle")
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--flame", str(bad))
    assert rc == 2 and str(bad) in err and "truncated or not a pickle" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(deca_data_dir / "head_template.obj", partial)
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(partial))
    assert rc == 2 and "landmark_embedding.npy" in err and "github.com/yfeng95/DECA" in err
    broken = tmp_path / "broken"
    shutil.copytree(deca_data_dir, broken)
    (broken / "uv_face_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(broken))
    assert rc == 2 and "uv_face_mask.png" in err
    wrong_ckpt = tmp_path / "deca_model.tar"
    import torch

    torch.save({"E_flame": {"encoder.conv1.weight": torch.zeros(3)}}, wrong_ckpt)
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--deca", str(wrong_ckpt))
    assert rc == 2 and str(wrong_ckpt) in err
    assert not home.exists() or not any(p.is_file() for p in home.rglob("*"))


def test_require_names_every_missing_file(tmp_path):
    with pytest.raises(MissingAssetError) as err:
        AssetManager(tmp_path).require("flame_model", "deca_model")
    msg = str(err.value)
    assert "generic_model.pkl" in msg and "deca_model.tar" in msg
    assert "deca-blender assets install --flame PATH" in msg and "deca-blender assets install --deca PATH" in msg


def test_licence_table_and_commercial_refusal(tmp_path, capsys, deca_data_dir, test_flame_pkl):
    """`assets status` says which installed components are non-commercial; `--commercial` refuses them
    (exit 1 naming each) and accepts a home without them."""
    home = tmp_path / "home"
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--flame", str(test_flame_pkl))
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "assets", "--home", str(home), "status", "--commercial", "--json")
    info = json.loads(out)
    assert rc == 0 and info["commercial_refusal"] is None
    lic = {c["component"]: c for c in info["licences"]}
    assert lic["flame_model"]["commercial"] is True and "TEST" in lic["flame_model"]["what"]

    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--data", str(deca_data_dir))
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "assets", "--home", str(home), "status")
    assert rc == 0
    for spec in catalog.DATA_FILES:
        line = next(ln for ln in out.splitlines() if f" {spec.name} " in ln and "--" in ln)
        assert "NON-COMMERCIAL" in line and "DECA licence" in line
    rc, out, err = run_cli(capsys, "assets", "--home", str(home), "status", "--commercial")
    assert rc == 1
    for spec in catalog.DATA_FILES:
        assert f"  {spec.name}: " in err
    assert "flame_model:" not in err  # the test model is not the problem

    from core.assets.licences import CommercialUseError, component_licences, require_commercial
    m = AssetManager(home)
    names = {c.component: c.commercial for c in component_licences(m, detectors=("mediapipe", "dlib"))}
    assert names["mediapipe"] is True and names["dlib"] is False
    with pytest.raises(CommercialUseError, match="dlib"):
        require_commercial(m, ("flame_model",), "dlib")
    require_commercial(m, ("flame_model",), "mediapipe")  # FLAME (here the test model) + MediaPipe: allowed


def test_reconstruct_and_fit_refuse_non_commercial_components(tmp_path, capsys, deca_data_dir, test_flame_pkl,
                                                               photos_dir):
    home = tmp_path / "home"
    rc, _, err = run_cli(capsys, "assets", "--home", str(home), "install", "--flame", str(test_flame_pkl),
                         "--data", str(deca_data_dir))
    assert rc == 0, err
    photo = str(next(photos_dir.iterdir()))
    for argv in (["reconstruct", photo], ["fit", photo]):
        rc, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "out"), "--home", str(home), "--device", "cpu",
                               "--commercial")
        assert rc != 0 and "--commercial" in err and "head_template" in err, (argv, err)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
