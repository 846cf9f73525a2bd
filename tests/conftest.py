"""Shared fixtures: where the test data beside the repo lives.

Licensed data never enters the repo. Tests find `../shared` (or `$DECA_SHARED`) and skip with a
clear reason where it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

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
