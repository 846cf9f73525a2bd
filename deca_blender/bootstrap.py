"""Where the `core` package is, in an installed extension and in a source checkout. Touches no sys.path.

In the extension zip the project's `core` package lives in the private folder `_vendor/core`, with its
imports made relative while packaging (packaging.py), so Blender's process imports it as
`bl_ext.<repo>.deca_blender._vendor.core`: no top-level `core` (or any other generic name) appears for
other add-ons. The worker process gets `_vendor` on its PYTHONPATH and runs `python -m core.worker`.
The UI process imports only numpy-only parts of the core; torch is imported only in the worker.

In a source checkout (tests, the CLI) `core` sits beside `deca_blender/` and is imported absolutely.
"""
from __future__ import annotations

from pathlib import Path

ADDON_DIR = Path(__file__).resolve().parent
VENDOR_DIR = ADDON_DIR / "_vendor"


def core_root() -> Path:
    """The folder that holds the `core` package (the worker's PYTHONPATH entry): `_vendor` in an
    installed extension, the repository root in a checkout."""
    for candidate in (VENDOR_DIR, ADDON_DIR.parent):
        if (candidate / "core" / "__init__.py").is_file():
            return candidate
    raise ImportError(f"deca_blender: the bundled 'core' package is missing in {VENDOR_DIR}; reinstall the extension")


def ensure_core_importable() -> Path:
    """Check that the core is there (a clear error at enable time instead of a failed import later)."""
    return core_root()
