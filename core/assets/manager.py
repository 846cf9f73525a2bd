"""The asset manager: installs the user's downloads into one data folder, checks them, records sha256.

Layout under the home (`DECA_BLENDER_HOME`, else the platform's user data folder):

    assets.json                      what was installed, from where, with sha256 and size
    flame/flame_model.npz            FLAME, converted from the official pickle (no pickles at run time)
    flame/texture_space.npz          optional albedo space
    deca/deca_model.tar              DECA's checkpoint, as downloaded
    data/...                         DECA's release data files (embedding converted to plain arrays)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core import sizes
from core.assets import catalog
from core.assets.catalog import AssetSpec
from core.atomic import atomic_write_bytes
from core.errors import DecaError
from core.flame.model_file import file_sha256

REGISTRY_NAME = "assets.json"


class AssetError(DecaError, ValueError):
    """An asset is missing or fails its checks; the message says which file, why, and what to do."""


class MissingAssetError(AssetError):
    pass


def default_home() -> Path:
    env = os.environ.get("DECA_BLENDER_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("deca-blender", appauthor=False))


@dataclass
class AssetStatus:
    name: str
    file: str
    description: str
    required: bool
    present: bool
    path: str
    download_page: str
    install_command: str
    sha256: str | None = None
    source: str | None = None
    problem: str | None = None
    note: str | None = None


Progress = Callable[[str], None]


def _copy_atomic(src: Path, dst: Path) -> None:
    def write(f) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, length=1 << 22)

    atomic_write_bytes(dst, write)


class AssetManager:
    def __init__(self, home: str | Path | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()

    # ------------------------------------------------------------------ registry

    @property
    def registry_path(self) -> Path:
        return self.home / REGISTRY_NAME

    def registry(self) -> dict:
        try:
            return json.loads(self.registry_path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, OSError) as exc:
            raise AssetError(f"{self.registry_path}: is damaged ({exc}); delete it and install the assets again") from exc

    def _record(self, spec: AssetSpec, source: Path, extra: dict | None = None) -> None:
        reg = self.registry()
        dst = self.path(spec.name)
        reg[spec.name] = {
            "file": spec.installed_as,
            "sha256": file_sha256(dst),
            "size": dst.stat().st_size,
            "source": str(source),
            "source_sha256": file_sha256(source) if source.is_file() else None,
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        payload = json.dumps(reg, indent=2, sort_keys=True).encode()
        atomic_write_bytes(self.registry_path, lambda f: f.write(payload))

    def path(self, name: str) -> Path:
        return self.home / catalog.BY_NAME[name].installed_as

    # ------------------------------------------------------------------ status

    def status(self) -> list[AssetStatus]:
        reg = self.registry()
        out = []
        for spec in catalog.ALL_ASSETS:
            p = self.path(spec.name)
            rec = reg.get(spec.name, {})
            st = AssetStatus(
                name=spec.name, file=spec.download_name, description=spec.description, required=spec.required,
                present=p.is_file(), path=str(p), download_page=spec.page, install_command=spec.install_command(),
                sha256=rec.get("sha256"), source=rec.get("source"), note=rec.get("note"),
            )
            if st.present and not rec:
                st.problem = "present but not recorded by `assets install`; run `deca-blender assets verify`"
            out.append(st)
        return out

    def missing(self, names: list[str] | None = None) -> list[AssetStatus]:
        wanted = set(names) if names else {a.name for a in catalog.ALL_ASSETS if a.required}
        return [s for s in self.status() if s.name in wanted and not s.present]

    def require(self, *names: str) -> dict[str, Path]:
        """Paths of the named assets, or one error listing every missing one and how to get it."""
        names = names or tuple(a.name for a in catalog.ALL_ASSETS if a.required)
        missing = self.missing(list(names))
        if missing:
            raise MissingAssetError(describe_missing(missing, self.home))
        return {n: self.path(n) for n in names}

    # ------------------------------------------------------------------ install

    def install(self, flame: str | Path | None = None, deca: str | Path | None = None, data: str | Path | None = None,
                texture: str | Path | None = None, force: bool = False, progress: Progress = print) -> list[str]:
        """Check and install what is given. Returns notes (e.g. warnings) for the user."""
        notes: list[str] = []
        if flame is not None:
            notes += self._install_flame(Path(flame), force, progress)
        if deca is not None:
            notes += self._install_deca(Path(deca), force, progress)
        if data is not None:
            notes += self._install_data(Path(data), force, progress)
        if texture is not None:
            notes += self._install_texture(Path(texture), force, progress)
        return notes

    def _guard_overwrite(self, spec: AssetSpec, source: Path, force: bool) -> bool:
        """False when the same file is already installed; raises when a different one would be replaced."""
        rec = self.registry().get(spec.name)
        dst = self.path(spec.name)
        if not dst.exists() or rec is None:
            return True
        if rec.get("source_sha256") and source.is_file() and rec["source_sha256"] == file_sha256(source):
            return False
        if not force:
            raise AssetError(
                f"{spec.name} is already installed at {dst} (from {rec.get('source')}). "
                "Pass --force to replace it with " + str(source)
            )
        return True

    def _install_flame(self, src: Path, force: bool, progress: Progress) -> list[str]:
        from core.flame.model_file import FLAME_DOWNLOAD_PAGE, load_flame_model, save_flame_npz

        spec = catalog.FLAME_MODEL
        progress(f"checking FLAME model {src} ...")
        data = load_flame_model(src)  # raises FlameModelError with the file's name and the problem
        if data.n_shape < sizes.N_SHAPE or data.n_expression < sizes.N_EXP:
            # DECA's codes need these many; accepting fewer only moves the failure to every photo
            raise AssetError(
                f"{src}: has {data.n_shape} shape and {data.n_expression} expression components; deca-blender "
                f"needs at least {sizes.N_SHAPE} shape and {sizes.N_EXP} expression components (FLAME 2020's "
                f"generic_model.pkl has 300 and 100). Download it from {FLAME_DOWNLOAD_PAGE}")
        if not self._guard_overwrite(spec, src, force):
            progress(f"{spec.name}: already installed from this file")
            return []
        save_flame_npz(data, self.path(spec.name))
        notes = []
        if data.is_test_model:
            notes.append(f"{src} is the deca-blender TEST model (synthetic), not FLAME; results are for testing only")
        if data.variant.startswith("flame2023"):
            notes.append("FLAME 2023 has a different basis; DECA's trained weights are valid only with FLAME 2020 "
                         "(use --mode fit with FLAME 2023)")
        self._record(spec, src, {"variant": data.variant, "is_test_model": data.is_test_model,
                                 "n_shape": data.n_shape, "n_expression": data.n_expression,
                                 "note": notes[0] if notes else None})
        progress(f"installed {spec.name} ({data.variant}, {data.n_shape} shape, {data.n_expression} expression)")
        return notes

    def _install_deca(self, src: Path, force: bool, progress: Progress) -> list[str]:
        from core.networks.checkpoint import CheckpointError, verify_checkpoint

        spec = catalog.DECA_MODEL
        progress(f"checking DECA checkpoint {src} (loads every tensor) ...")
        try:
            problems = verify_checkpoint(src)
        except CheckpointError as exc:
            raise AssetError(str(exc)) from exc
        if problems:
            raise AssetError(f"{src}: is not DECA's checkpoint: " + "; ".join(problems[:8]))
        if not self._guard_overwrite(spec, src, force):
            progress(f"{spec.name}: already installed from this file")
            return []
        _copy_atomic(src, self.path(spec.name))
        self._record(spec, src)
        progress(f"installed {spec.name}")
        return []

    def _install_data(self, folder: Path, force: bool, progress: Progress) -> list[str]:
        if not folder.is_dir():
            raise AssetError(f"--data expects DECA's data folder, but {folder} is not a folder")
        missing = [s.download_name for s in catalog.DATA_FILES if not (folder / s.download_name).is_file()]
        if missing:
            raise MissingAssetError(
                f"{folder}: lacks {', '.join(missing)}. These come with DECA's release data ({catalog.DECA_DATA_PAGE})"
            )
        # Check everything before writing anything, so a bad folder leaves the home untouched.
        checked = {spec.name: check_data_file(spec, folder / spec.download_name) for spec in catalog.DATA_FILES}
        for spec in catalog.DATA_FILES:
            src = folder / spec.download_name
            if not self._guard_overwrite(spec, src, force):
                continue
            dst = self.path(spec.name)
            if spec is catalog.LANDMARK_EMBEDDING:
                arrays = checked[spec.name].to_arrays()
                atomic_write_bytes(dst, lambda f: np.savez(f, **arrays))
            else:
                _copy_atomic(src, dst)
            self._record(spec, src)
            progress(f"installed {spec.name}")
        return []

    def _install_texture(self, src: Path, force: bool, progress: Progress) -> list[str]:
        spec = catalog.TEXTURE_SPACE
        mean, basis = read_texture_space(src)
        if not self._guard_overwrite(spec, src, force):
            return []
        atomic_write_bytes(self.path(spec.name), lambda f: np.savez(f, mean=mean, basis=basis))
        self._record(spec, src, {"n_components": int(basis.shape[-1])})
        progress(f"installed {spec.name} ({basis.shape[-1]} components)")
        return []

    # ------------------------------------------------------------------ verify

    def verify(self, progress: Progress = print) -> list[str]:
        """Re-check every installed file: sha256 against the record, then its content. Returns problems."""
        reg = self.registry()
        problems = []
        for st in self.status():
            if not st.present:
                if st.required:
                    problems.append(f"{st.name}: missing ({st.path}); get {st.file} from {st.download_page}, "
                                    f"then `{st.install_command}`")
                continue
            p = Path(st.path)
            rec = reg.get(st.name)
            if rec is None:
                problems.append(f"{st.name}: {p} was not installed by `assets install`; install it again")
                continue
            digest = file_sha256(p)
            if digest != rec.get("sha256"):
                problems.append(f"{st.name}: {p} changed since it was installed (sha256 {digest[:12]} != "
                                f"{str(rec.get('sha256'))[:12]}); install it again")
                continue
            try:
                check_installed(st.name, p)
            except Exception as exc:  # each checker raises its own specific error
                problems.append(f"{st.name}: {exc}")
                continue
            progress(f"ok  {st.name}  sha256 {digest[:16]}")
        return problems


def describe_missing(missing: list[AssetStatus], home: Path) -> str:
    lines = [f"Missing assets in {home}:"]
    for st in missing:
        lines.append(f"  - {st.file} ({st.description}): download from {st.download_page}, then run "
                     f"`{st.install_command}`")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- checks


def check_data_file(spec: AssetSpec, path: Path):
    """Check one release data file; returns its parsed content. Raises AssetError naming the file."""
    from PIL import Image

    try:
        if spec is catalog.HEAD_TEMPLATE:
            from core.flame.template import read_template_obj

            mesh = read_template_obj(path)
            if mesh.vertices.shape != (5023, 3) or mesh.faces.shape != (9976, 3):
                raise AssetError(f"{path}: has {len(mesh.vertices)} vertices and {len(mesh.faces)} faces; "
                                 "FLAME's template has 5023 and 9976")
            return mesh
        if spec is catalog.LANDMARK_EMBEDDING:
            from core.flame.landmarks import load_embedding

            emb = load_embedding(path)
            emb.check_faces(9976, path)
            return emb
        if spec in (catalog.UV_FACE_EYE_MASK, catalog.UV_FACE_MASK):
            with Image.open(path) as im:
                arr = np.asarray(im)
            if arr.shape[:2] != (256, 256):
                raise AssetError(f"{path}: is {arr.shape[1]}x{arr.shape[0]}, expected a 256x256 UV mask")
            if not (arr[..., 0] if arr.ndim == 3 else arr).any():
                raise AssetError(f"{path}: is empty (no texel marked)")
            return arr
        if spec is catalog.FIXED_DISPLACEMENT:
            arr = np.load(path, allow_pickle=False)
            if arr.shape != (256, 256) or not np.issubdtype(arr.dtype, np.floating):
                raise AssetError(f"{path}: holds {arr.dtype} {arr.shape}, expected float (256, 256)")
            return arr
        if spec is catalog.MEAN_TEXTURE:
            with Image.open(path) as im:
                im.load()
                size = im.size
            if size[0] != size[1]:
                raise AssetError(f"{path}: is {size[0]}x{size[1]}, expected a square UV texture")
            return size
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"{path}: cannot be read as {spec.download_name} ({type(exc).__name__}: {exc})") from exc
    raise AssetError(f"no check for {spec.name}")


def read_texture_space(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """FLAME's albedo space in either published layout -> RGB mean (S, S, 3) in [0, 1], basis (S, S, 3, K).

    `FLAME_texture.npz` ('mean', 'tex_dir') is in 0..255, `FLAME_albedo_from_BFM.npz` ('MU', 'PC') in 0..1;
    both store BGR texels, which DECA flips to RGB after reshaping to (S, S, 3).
    """
    if not path.is_file():
        raise AssetError(f"texture space not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if {"mean", "tex_dir"} <= files:
                mean, basis, scale = z["mean"], z["tex_dir"], 1.0 / 255.0
            elif {"MU", "PC"} <= files:
                mean, basis, scale = z["MU"], z["PC"], 1.0
            else:
                raise AssetError(f"{path}: has keys {sorted(files)}; expected 'mean'/'tex_dir' or 'MU'/'PC'")
    except AssetError:
        raise
    except Exception as exc:
        raise AssetError(f"{path}: is not a readable .npz ({exc})") from exc
    K = basis.shape[-1]
    side = int(round((mean.size / 3) ** 0.5))
    if side * side * 3 != mean.size or basis.size != mean.size * K:
        raise AssetError(f"{path}: mean {mean.shape} and basis {basis.shape} are not a square RGB texture space")
    mean = mean.reshape(side, side, 3)[..., ::-1] * scale
    basis = basis.reshape(side, side, 3, K)[:, :, ::-1] * scale
    return mean.astype(np.float32), basis.astype(np.float32)


def check_installed(name: str, path: Path) -> None:
    if name == "flame_model":
        from core.flame.model_file import load_flame_model

        load_flame_model(path)
    elif name == "deca_model":
        from core.networks.checkpoint import verify_checkpoint

        problems = verify_checkpoint(path)
        if problems:
            raise AssetError("; ".join(problems[:8]))
    elif name == "texture_space":
        with np.load(path, allow_pickle=False) as z:
            if not {"mean", "basis"} <= set(z.files):
                raise AssetError(f"{path}: lacks 'mean'/'basis'")
    else:
        check_data_file(catalog.BY_NAME[name], path)


def status_as_json(manager: AssetManager) -> dict:
    sts = manager.status()
    return {
        "home": str(manager.home),
        "ready": all(s.present for s in sts if s.required),
        "assets": [asdict(s) for s in sts],
        "missing": [s.file for s in sts if s.required and not s.present],
    }
