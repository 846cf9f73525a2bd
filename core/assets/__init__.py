"""The asset manager: the licensed files users download, installed, checked and found in one place."""
from core.assets.manager import AssetError, AssetManager, AssetStatus, MissingAssetError, default_home

__all__ = ["AssetError", "AssetManager", "AssetStatus", "MissingAssetError", "default_home"]
