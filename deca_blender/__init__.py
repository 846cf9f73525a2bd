"""DECA Heads: the Blender extension of deca-blender (one photo of a face -> a rigged, detailed FLAME head).

This module must stay importable WITHOUT bpy: the `deca-blender build-extension` command (packaging.py,
commands.py) runs in a plain Python. Everything that needs Blender is imported inside `register()`.

Blender's UI process never imports torch. Reconstruction runs in a worker process (`core/worker.py`,
spoken to by `worker_client.py`); the UI side reads result folders with numpy alone.
"""
from __future__ import annotations

_registered_modules: list = []


def _modules():
    # Imported here, not at module level, so `import deca_blender` works without bpy.
    from . import preferences, properties, ui, warmup
    from .operators import animate, assets, export as export_ops, identity, import_ops
    from . import exact

    return (preferences, properties, import_ops, animate, identity, export_ops, assets, ui, exact, warmup)


def register() -> None:
    from .bootstrap import ensure_core_importable

    ensure_core_importable()
    for module in _modules():
        module.register()
        _registered_modules.append(module)


def unregister() -> None:
    while _registered_modules:
        _registered_modules.pop().unregister()
    try:
        from .worker_client import shutdown_all

        shutdown_all()
    except Exception:  # never block disabling the add-on
        pass
