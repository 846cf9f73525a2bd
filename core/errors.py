"""The root of every error that is the user's to fix (a bad photo, a missing asset, a damaged file, bad options).

Front ends (the CLI, the Blender worker) catch exactly `DecaError` and print its message; anything else is a
bug and surfaces with its traceback. Subclasses keep their historical second base (`ValueError`, `OSError`,
...) so callers that caught those still work. This module imports nothing, so every layer, Blender's
UI process included, can use it.
"""
from __future__ import annotations


class DecaError(Exception):
    """An error the user can act on; its message says what went wrong and what to do."""
