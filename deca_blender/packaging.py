"""Building the installable extension zip (no Blender needed).

Blender extensions need `blender_manifest.toml` and `__init__.py` at the zip's root. The zip holds:

    blender_manifest.toml      from the repository root
    __init__.py, ...           the contents of deca_blender/ (the add-on)
    core/...                   the project's core package (Python sources only)

`core` is bundled so the add-on reads result folders with the same code as the command line, and so the
worker (`python -m core.worker`, started from the extension folder) runs the same pipeline. Blender's
UI process imports only numpy-based parts of it (see bootstrap.py).
"""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

MANIFEST = "blender_manifest.toml"
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # reproducible zips


class PackagingError(RuntimeError):
    pass


def _layout() -> tuple[Path, Path, Path]:
    """(manifest, add-on folder, core folder) in a source checkout or an installed extension."""
    here = Path(__file__).resolve().parent
    for manifest, core in ((here.parent / MANIFEST, here.parent / "core"), (here / MANIFEST, here / "core")):
        if manifest.is_file() and (core / "__init__.py").is_file():
            return manifest, here, core
    raise PackagingError(f"cannot find {MANIFEST} and the core package next to {here}; build from a source checkout")


def manifest_field(text: str, key: str) -> str:
    m = re.search(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)
    if not m:
        raise PackagingError(f"{MANIFEST} lacks '{key}'")
    return m.group(1)


def _files(folder: Path, python_only: bool, skip: set[str]) -> list[tuple[Path, str]]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS and not d.startswith(".") and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skip or name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            # (package data of core, e.g. core/frontend/data/, travels with the code)
            if python_only and path.suffix != ".py" and "data" not in Path(rel).parts[:-1]:
                continue
            out.append((path, rel))
    return out


def build_extension(out_dir: str | Path) -> Path:
    """Write `deca_blender-<version>.zip` into out_dir and return its path."""
    manifest, addon_dir, core_dir = _layout()
    text = manifest.read_text(encoding="utf-8")
    ext_id, version = manifest_field(text, "id"), manifest_field(text, "version")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ext_id}-{version}.zip"

    entries: list[tuple[Path, str]] = [(manifest, MANIFEST)]
    # (In an installed extension the add-on folder also holds the manifest and core/: both come separately.)
    entries += [(p, a) for p, a in _files(addon_dir, python_only=False, skip={MANIFEST}) if not a.startswith("core/")]
    entries += [(p, f"core/{rel}") for p, rel in _files(core_dir, python_only=True, skip=set())]
    names = [a for _, a in entries]
    if len(set(names)) != len(names):
        raise PackagingError("duplicate paths in the extension zip: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, arc in entries:
                info = zipfile.ZipInfo(arc, FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, path.read_bytes())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
