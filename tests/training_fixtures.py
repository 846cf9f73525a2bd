"""Fixtures shared by the training tests (import them into a test module: pytest then uses them there)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The machine is shared; one thread avoids OpenMP oversubscription (see docs/training.md).
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def face(test_flame_pkl, deca_data_dir):
    """The face model on the FLAME-format TEST model (synthetic, licence-free)."""
    from core.model.face_model import FaceAssets, FaceModel

    return FaceModel(FaceAssets.from_paths(test_flame_pkl, deca_data_dir))
