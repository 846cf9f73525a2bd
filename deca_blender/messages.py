"""Error messages as a Blender user should read them.

The core's errors are written for the command line (they name `deca-blender assets install --flame PATH`,
the command that fixes them). Inside Blender the same fix is a button: the messages are rewritten to name
*Edit > Preferences > Add-ons > DECA Heads* and the field and button to use. Only the remedy is replaced;
the rest of the message (which file, where) is kept word for word. No bpy here.
"""
from __future__ import annotations

import re

PREFERENCES = "Edit > Preferences > Add-ons > DECA Heads"
INSTALL_BUTTON = "Install Model Files"

#: `assets install` option -> the preferences field that takes the same file
FIELDS = {"--flame": "FLAME Model", "--deca": "DECA Checkpoint", "--data": "DECA Data Folder"}

_INSTALL = re.compile(r"(?:then )?(?:run )?`?deca-blender assets install (--[a-z]+) (?:PATH|FOLDER)`?")
_VERIFY = re.compile(r"(?:run )?`?deca-blender assets verify`?")


def _install_remedy(match: re.Match) -> str:
    field = FIELDS.get(match.group(1))
    if field is None:  # e.g. --texture: no field in the preferences, the command line is the way
        return match.group(0)
    return f"then choose it as '{field}' in {PREFERENCES} and press {INSTALL_BUTTON}"


def for_blender(message: str) -> str:
    """`message` with command-line remedies replaced by the preferences' buttons."""
    message = _INSTALL.sub(_install_remedy, message)
    return _VERIFY.sub(f"press Refresh in {PREFERENCES}", message)
