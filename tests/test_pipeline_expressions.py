"""The expression-only fast path (core.pipeline.expressions) against the full path's codes.

TEST FLAME model, dlib landmarks, input-dependent random weights (core.networks.responsive) so that every
photo gets its own codes: equal codes then mean the same crop, the same network input and the same encoder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cli_main
from core.networks.responsive import responsive_networks
from core.pipeline.expressions import EXPRESSIONS_FILE, animate_fast, decode_expressions
from core.model.face_model import FaceAssets
from core.pipeline.reconstruct import Reconstructor
from core.results.result import ReconstructionResult
from core.results.writing import OutputDirError

REL = 1e-4


@pytest.fixture(scope="module")
def eager():
    """The reference: the eager networks as defined (batch norms not folded)."""
    return responsive_networks(seed=5)


@pytest.fixture(scope="module")
def rec(test_flame_pkl, deca_data_dir, eager) -> Reconstructor:
    return Reconstructor(device="cpu", landmarks="dlib", face_assets=FaceAssets.from_paths(test_flame_pkl, deca_data_dir),
                         networks=eager, wrinkle_samples=16, wrinkle_holdout=4)


@pytest.fixture(scope="module")
def photos(photos_dir) -> list[Path]:
    found = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:4]
    if len(found) < 2:
        pytest.skip(f"needs photos in {photos_dir}")
    return found


def test_codes_equal_the_full_path(rec, eager, photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    frames = decode_expressions(rec, [photos[0], bad, *photos[1:]], batch_size=3)
    assert frames.sources == [str(p) for p in photos]
    np.testing.assert_array_equal(frames.frame_index, [0] + list(range(2, len(photos) + 1)))
    assert [f.photo for f in frames.failed] == [str(bad)]
    # the reference: the full path's detection and crop, one photo at a time, then the eager E_flame
    assert rec.networks is not eager
    for row, p in enumerate(photos):
        with torch.inference_mode():
            codes = eager.E_flame.encode(rec._network_inputs([rec._prepare(p, all_faces=False)]))
        for name, got, want in (("exp", frames.exp[row], codes.exp[0]), ("jaw", frames.jaw[row], codes.pose[0, 3:]),
                                ("global_pose", frames.global_pose[row], codes.pose[0, :3]),
                                ("cam", frames.cam[row], codes.cam[0])):
            want = want.numpy()
            assert np.abs(got - want).max() <= REL * np.abs(want).max(), (p.name, name)
    # frames differ from each other by far more than the bound (the check above is not vacuous)
    assert np.abs(frames.exp[0] - frames.exp[1]).max() > 100 * REL * np.abs(frames.exp).max()


def test_animate_fast_writes_the_identity_folder_and_the_track(rec, photos, tmp_path):
    out = tmp_path / "anim"
    summary = animate_fast(rec, photos[0], photos[1:], out)
    ident = ReconstructionResult.load(summary.identity_folder)
    assert Path(summary.identity_folder).parent == out
    with np.load(out / EXPRESSIONS_FILE) as z:
        assert z["exp"].shape == (len(photos) - 1, 50) and z["jaw"].shape == (len(photos) - 1, 3)
        assert str(z["identity_folder"]) == summary.identity_folder
        assert list(z["sources"]) == [str(p) for p in photos[1:]]
        frames = decode_expressions(rec, photos[1:])
        np.testing.assert_array_equal(z["exp"], frames.exp)
    # the identity folder is the full path's result for that photo
    full = ReconstructionResult.load(rec.reconstruct_photo(photos[0], tmp_path / "full")[0])
    np.testing.assert_array_equal(ident.exp, full.exp)
    np.testing.assert_array_equal(ident.wrinkles.matrix, full.wrinkles.matrix)
    manifest = json.loads((out / "animation.json").read_text())
    assert manifest["mode"] == "fast" and len(manifest["frames"]) == len(photos) - 1
    with pytest.raises(OutputDirError, match="exists"):
        animate_fast(rec, photos[0], photos[1:], out)


def test_cli_animate_fast(rec, photos, tmp_path, monkeypatch):
    import core.commands.reconstruct as commands

    monkeypatch.setattr(commands, "make_reconstructor", lambda mode, options: rec)
    out = tmp_path / "cli"
    code = cli_main(["animate", "--fast", "--identity", str(photos[0]), "--expressions", str(photos[1]),
                     "--out", str(out)])
    assert code == 0
    with np.load(out / EXPRESSIONS_FILE) as z:
        assert z["exp"].shape == (1, 50)
    torch.testing.assert_close(torch.as_tensor(np.load(out / EXPRESSIONS_FILE)["jaw"]),
                               torch.as_tensor(decode_expressions(rec, [photos[1]]).jaw))
