"""Where deca-blender keeps what it can rebuild: ``$DECA_BLENDER_CACHE`` or the platform's user cache folder
(``~/.cache/deca-blender`` on Linux). Each cache has its own subfolder (`core.networks.cache`: folded
networks; `core.pipeline.wrinkle_cache`: wrinkle bases); deleting any of it is always safe.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "DECA_BLENDER_CACHE"


def cache_root() -> Path:
    """``$DECA_BLENDER_CACHE`` if set, else the user cache folder's ``deca-blender``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("deca-blender", appauthor=False))
