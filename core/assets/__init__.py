"""The asset manager: the licensed files users download, installed, checked and found in one place.

The names load on first use (PEP 562) so `deca-blender --help` does not pay for numpy.
"""
from __future__ import annotations

__all__ = ["AssetError", "AssetManager", "AssetStatus", "MissingAssetError", "default_home"]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module 'core.assets' has no attribute {name!r}")
    from core.assets import manager

    value = getattr(manager, name)
    globals()[name] = value
    return value
