"""DECA's networks: the ResNet-50 trunk, ``E_flame``, ``E_detail``, ``D_detail`` and the checkpoint."""
from .checkpoint import (
    NETWORK_NAMES,
    CheckpointError,
    DecaNetworkOutput,
    DecaNetworks,
    TensorSpec,
    build_deca_networks,
    compare_layout,
    expected_layout_manifest,
    expected_state_dict_layout,
    load_deca_checkpoint,
    save_deca_checkpoint,
    verify_checkpoint,
)
from .detail_decoder import DETAIL_DECODER_INPUT, DETAIL_MAP_SIZE, DETAIL_OUT_SCALE, DetailDecoder
from .encoders import (
    DETAIL_CODE_DIM,
    FLAME_CODE_DIM,
    FLAME_CODE_SIZES,
    INPUT_SIZE,
    DetailEncoder,
    FlameCodes,
    FlameEncoder,
    ResnetEncoder,
    split_flame_codes,
)
from .resnet import RESNET50_BLOCKS, Bottleneck, ResNetTrunk, resnet50_trunk

__all__ = [
    "NETWORK_NAMES", "CheckpointError", "DecaNetworkOutput", "DecaNetworks", "TensorSpec",
    "build_deca_networks", "compare_layout", "expected_layout_manifest", "expected_state_dict_layout",
    "load_deca_checkpoint", "save_deca_checkpoint", "verify_checkpoint",
    "DETAIL_DECODER_INPUT", "DETAIL_MAP_SIZE", "DETAIL_OUT_SCALE", "DetailDecoder",
    "DETAIL_CODE_DIM", "FLAME_CODE_DIM", "FLAME_CODE_SIZES", "INPUT_SIZE", "DetailEncoder", "FlameCodes",
    "FlameEncoder", "ResnetEncoder", "split_flame_codes",
    "RESNET50_BLOCKS", "Bottleneck", "ResNetTrunk", "resnet50_trunk",
]
