"""FLAME: reading the model files safely, linear blend skinning, the torch layer, landmarks.

The names below load on first use (PEP 562), so `core.flame.model_file` and `core.flame.template`
(numpy only) can be imported by `core.results` inside Blender without pulling in torch.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "LandmarkEmbedding": "landmarks", "LandmarkEmbeddingError": "landmarks", "load_embedding": "landmarks",
    "read_official_embedding": "landmarks",
    "FlameLayer": "layer", "FlameOutput": "layer", "expand_pose": "layer",
    "FLAME_DOWNLOAD_PAGE": "model_file", "JOINT_NAMES": "model_file", "FlameModelData": "model_file",
    "FlameModelError": "model_file", "load_flame_model": "model_file", "load_flame_npz": "model_file",
    "load_flame_pickle": "model_file", "save_flame_npz": "model_file",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'core.flame' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)  # relative: works vendored too
    globals()[name] = value  # later lookups skip this function
    return value
