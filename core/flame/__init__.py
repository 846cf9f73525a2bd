"""FLAME: reading the model files safely, linear blend skinning, the torch layer, landmarks."""
from core.flame.landmarks import LandmarkEmbedding, LandmarkEmbeddingError, load_embedding, read_official_embedding
from core.flame.layer import FlameLayer, FlameOutput, expand_pose
from core.flame.model_file import (
    FLAME_DOWNLOAD_PAGE,
    JOINT_NAMES,
    FlameModelData,
    FlameModelError,
    load_flame_model,
    load_flame_npz,
    load_flame_pickle,
    save_flame_npz,
)

__all__ = [
    "FLAME_DOWNLOAD_PAGE", "JOINT_NAMES", "FlameLayer", "FlameModelData", "FlameModelError", "FlameOutput",
    "LandmarkEmbedding", "LandmarkEmbeddingError", "expand_pose", "load_embedding", "load_flame_model",
    "load_flame_npz", "load_flame_pickle", "read_official_embedding", "save_flame_npz",
]
