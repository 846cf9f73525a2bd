"""Making the bundled `core` package importable inside Blender, without torch.

Why sys.path is touched: the extension zip ships the project's `core` package beside the add-on's own
modules (`<extension>/core`). `core`'s modules import each other absolutely (`from core.atomic import
...`), the same way the command line and the worker use them, so `core` has to be a top-level package.
Its folder's parent (the extension folder) is therefore appended to sys.path (appended, not prepended,
so nothing of Blender's or another add-on's is shadowed). The UI process only imports numpy-only parts
of it (`core.results.result`, `core.assets.catalog`); torch is imported only in the worker process.

When the add-on runs from a source checkout (tests, the CLI), `core` sits beside `deca_blender/`.
"""
from __future__ import annotations

import sys
from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent


def core_root() -> Path:
    """The folder that holds the `core` package: the extension folder, or the repo root in a checkout."""
    for candidate in (ADDON_DIR, ADDON_DIR.parent):
        if (candidate / "core" / "__init__.py").is_file():
            return candidate
    raise ImportError(f"deca_blender: the bundled 'core' package is missing next to {ADDON_DIR}; reinstall the extension")


def ensure_core_importable() -> Path:
    root = core_root()
    existing = sys.modules.get("core")
    if existing is not None:
        where = Path(getattr(existing, "__file__", "") or "").resolve().parent.parent
        if where != root:
            raise ImportError(
                f"deca_blender: another add-on already loaded a top-level 'core' package from {where}; "
                f"DECA Heads needs its own from {root}. Disable the other add-on or restart Blender."
            )
        return root
    if str(root) not in sys.path:
        sys.path.append(str(root))
    return root
