"""Shared fixtures: where the test data beside the repo lives.

Licensed data never enters the repo. Tests find `../shared` (or `$DECA_SHARED`) and skip with a
clear reason where it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# On a shared 2-core machine, OpenMP threads that spin while waiting slow a busy torch process down
# 10-20x; passive waiting costs ~6% when the machine is idle. Set before any test imports torch, and
# inherited by the worker and bpy subprocesses the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]


def _shared_dir() -> Path:
    return Path(os.environ.get("DECA_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    d = _shared_dir()
    if not (d / "assets").is_dir():
        pytest.skip(f"shared test data not found at {d} (set DECA_SHARED)")
    return d


@pytest.fixture(scope="session")
def deca_data_dir(shared_dir: Path) -> Path:
    return shared_dir / "assets" / "deca"


@pytest.fixture(scope="session")
def photos_dir(shared_dir: Path) -> Path:
    return shared_dir / "photos"


@pytest.fixture(scope="session")
def manifest_path(shared_dir: Path) -> Path:
    return shared_dir / "assets" / "deca" / "state_dict_manifest.json"


@pytest.fixture(scope="session")
def joint_regressor_path(shared_dir: Path) -> Path:
    return shared_dir / "assets" / "flame" / "flame2020_joint_regressor.npz"


@pytest.fixture(scope="session")
def test_flame_pkl(tmp_path_factory, deca_data_dir: Path, joint_regressor_path: Path) -> Path:
    """The generated FLAME-format **test model** (official pickle form), written once per session."""
    from core.testmodels.synthetic_flame import write_test_flame

    return write_test_flame(tmp_path_factory.mktemp("flame") / "test_flame.pkl", deca_data_dir, joint_regressor_path)


@pytest.fixture(scope="session")
def test_flame(test_flame_pkl: Path):
    from core.flame import load_flame_model

    return load_flame_model(test_flame_pkl)


@pytest.fixture(scope="session")
def embedding(deca_data_dir: Path):
    from core.flame import read_official_embedding

    return read_official_embedding(deca_data_dir / "landmark_embedding.npy")


@pytest.fixture(scope="session")
def random_deca_checkpoint(tmp_path_factory) -> Path:
    """DECA's checkpoint layout with random weights: the licensed file is absent here, and the same
    code path (asset install, weights_only load) runs with it. Faces reconstructed with it are meaningless."""
    import torch

    from core.networks import build_deca_networks, save_deca_checkpoint

    torch.manual_seed(0)
    return save_deca_checkpoint(build_deca_networks(), tmp_path_factory.mktemp("deca") / "deca_model.tar")


@pytest.fixture(scope="session", autouse=True)
def wrinkle_cache_dir(tmp_path_factory) -> Path:
    """Every test (and the CLI/worker subprocesses it starts) caches shared wrinkle bases in one session
    folder, never in the user's ~/.cache (core.pipeline.wrinkle_cache)."""
    d = tmp_path_factory.mktemp("wrinkle_cache")
    old = os.environ.get("DECA_BLENDER_CACHE")
    os.environ["DECA_BLENDER_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("DECA_BLENDER_CACHE", None)
    else:
        os.environ["DECA_BLENDER_CACHE"] = old
