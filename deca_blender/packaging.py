"""Building the installable extension zip (no Blender needed).

Blender extensions need `blender_manifest.toml` and `__init__.py` at the zip's root. The zip holds:

    blender_manifest.toml      from the repository root
    __init__.py, ...           the contents of deca_blender/ (the add-on)
    _vendor/core/...           the project's core package (Python sources only)

`core` is bundled so the add-on reads result folders with the same code as the command line, and so the
worker (`python -m core.worker`, started with `_vendor` on its PYTHONPATH) runs the same pipeline.

Only `deca_blender` is importable in Blender's process: nothing is put on sys.path, so no generic
top-level name (`core`, `packaging`, `ui`, ...) is visible to other add-ons. For that, the absolute
`from core... import` lines are rewritten while packaging, to relative imports (`from ..atomic import`
inside core, `from .._vendor.core.results.result import` in the add-on's modules): in Blender the core
is then `bl_ext.<repo>.deca_blender._vendor.core`. Relative imports work just as well when the worker
runs `core` as a top-level package in its own process. The sources in the repository stay absolute.
"""
from __future__ import annotations

import os
import re
import tempfile
import zipfile
from pathlib import Path

from core.errors import DecaError

MANIFEST = "blender_manifest.toml"
VENDOR = "_vendor"  # the private folder holding the bundled core inside the extension
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
FIXED_TIME = (2024, 1, 1, 0, 0, 0)  # reproducible zips


class PackagingError(DecaError, RuntimeError):
    pass


def _layout() -> tuple[Path, Path, Path]:
    """(manifest, add-on folder, core folder) in a source checkout or an installed extension."""
    here = Path(__file__).resolve().parent
    for manifest, core in ((here.parent / MANIFEST, here.parent / "core"), (here / MANIFEST, here / VENDOR / "core")):
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


_FROM_CORE = re.compile(r"^(\s*)from core((?:\.\w+)*) import ", re.M)
_IMPORT_CORE = re.compile(r"^\s*import core\b", re.M)


def relative_core_imports(source: str, dots: str, prefix: str, where: str) -> str:
    """`source` with `from core[.x] import` turned into `from <dots><prefix>[.x] import` (prefix '' inside
    core, '_vendor.core' in the add-on). `import core...` cannot be made relative: refuse it."""
    if _IMPORT_CORE.search(source):
        raise PackagingError(f"{where}: uses 'import core...'; write 'from core... import ...' so it can be vendored")

    def sub(m: re.Match) -> str:
        module = (prefix + m.group(2)).lstrip(".")
        return f"{m.group(1)}from {dots}{module} import "

    return _FROM_CORE.sub(sub, source)


def _payload(path: Path, arc: str) -> bytes:
    """The bytes stored for `arc`: Python sources with their core imports made relative."""
    data = path.read_bytes()
    if not arc.endswith(".py"):
        return data
    parts = arc.split("/")
    if parts[0] == VENDOR:  # _vendor/core/<pkg...>/<mod>.py: one dot per package level below core, plus one
        depth = len(parts) - 3
        text = relative_core_imports(data.decode("utf-8"), "." * (depth + 1), "", arc)
    else:  # the add-on: <pkg...>/<mod>.py
        depth = len(parts) - 1
        text = relative_core_imports(data.decode("utf-8"), "." * (depth + 1), f"{VENDOR}.core", arc)
    return text.encode("utf-8")


def build_extension(out_dir: str | Path) -> Path:
    """Write `deca_blender-<version>.zip` into out_dir and return its path."""
    manifest, addon_dir, core_dir = _layout()
    text = manifest.read_text(encoding="utf-8")
    ext_id, version = manifest_field(text, "id"), manifest_field(text, "version")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ext_id}-{version}.zip"

    entries: list[tuple[Path, str]] = [(manifest, MANIFEST)]
    # (In an installed extension the add-on folder also holds the manifest and _vendor/: both come separately.)
    entries += [(p, a) for p, a in _files(addon_dir, python_only=False, skip={MANIFEST})
                if not a.startswith((f"{VENDOR}/", "core/"))]
    entries += [(p, f"{VENDOR}/core/{rel}") for p, rel in _files(core_dir, python_only=True, skip=set())]
    names = [a for _, a in entries]
    if len(set(names)) != len(names):
        raise PackagingError("duplicate paths in the extension zip: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path, arc in entries + [(None, f"{VENDOR}/__init__.py")]:
                info = zipfile.ZipInfo(arc, FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, b"" if path is None else _payload(path, arc))
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
