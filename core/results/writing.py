"""Writing a result folder: the OBJ/MTL, folder names, and the all-or-nothing commit of a folder.

A result folder is assembled in a hidden temporary sibling (``.<name>.tmp-XXXX``) and renamed into place
at the end, so a crash never leaves half a result under a result's name. Existing folders are never
replaced silently: a new name is picked (``<stem>``, ``<stem>-2``, ``<stem>-3``, ...) unless the caller
asks to overwrite.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import obj
from core.atomic import atomic_write_bytes
from core.errors import DecaError
from core.results import encodings
from core.results.result import RESULT_FILE, ReconstructionResult

MESH_FILE, MTL_FILE = "mesh.obj", "mesh.mtl"
MATERIAL_NAME = "deca_face"


class OutputDirError(DecaError, OSError):
    """The output folder cannot be created or written; raised before any work is done."""


def probe_output_dir(out_dir: str | Path) -> Path:
    """Check that ``out_dir`` can be used without creating it (so a run that fails before any work leaves no
    empty folder behind): it is a folder, or the nearest existing parent is a writable folder. Raises
    OutputDirError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"the output path {out} is a file, not a folder: give --out a folder (it is created "
                             "if needed)")
    parent = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise OutputDirError(f"cannot create the output folder {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputDirError(f"the output folder {out} cannot be written ({parent} is not writable)")
    return out


def check_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and prove it is writable (a temporary file). Raises OutputDirError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # before mkdir, whose answer would be a bare "File exists"
        raise OutputDirError(f"the output path {out} is a file, not a folder: give --out a folder (it is created "
                             "if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    if not out.is_dir():
        raise OutputDirError(f"the output path {out} exists and is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=out)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputDirError(f"the output folder {out} is not writable: {exc.strerror or exc}") from exc
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_stem(name: str) -> str:
    """A folder name from a photo's stem: unusual characters become '_', never hidden or empty."""
    s = _UNSAFE.sub("_", name).strip("._") or "photo"
    return s[:120]


def folder_name(stem: str, face_index: int) -> str:
    return stem if face_index == 0 else f"{stem}_face{face_index}"


def pick_base_stem(out_dir: Path, stem: str, n_faces: int, overwrite: bool, reserved: set[str]) -> str:
    """The stem for one photo's folders: ``stem`` when all its face folders are free (or overwriting),
    else ``stem-2``, ``stem-3``, ... ``reserved`` holds stems already given out in this run."""
    def free(s: str) -> bool:
        if s in reserved:
            return False
        if overwrite:
            return True
        return not any((out_dir / folder_name(s, i)).exists() for i in range(max(1, n_faces)))

    candidate, k = stem, 1
    while not free(candidate):
        k += 1
        candidate = f"{stem}-{k}"
    reserved.add(candidate)
    return candidate


def new_temp_folder(out_dir: Path, name: str) -> Path:
    """A hidden temporary folder beside the final one, with the permissions a plain mkdir would give."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_dir))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
    return tmp


def commit_folder(tmp: Path, final: Path, overwrite: bool) -> Path:
    """Rename the finished temporary folder into place. Without ``overwrite`` an existing folder is kept
    and the next free name ``<name>-2``, ... is used; returns the final path."""
    if overwrite and final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rename(final, old / final.name)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final
    candidate, k = final, 1
    while True:
        if not candidate.exists():
            try:
                os.rename(tmp, candidate)
                return candidate
            except OSError as exc:  # someone created it meanwhile (ENOTEMPTY/EEXIST): next name
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        k += 1
        candidate = final.with_name(f"{final.name}-{k}")


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def write_obj(folder: Path, vertices: np.ndarray, faces: np.ndarray, uv_coords: np.ndarray, uv_faces: np.ndarray,
              texture_file: str = "texture.png") -> tuple[Path, Path]:
    """``mesh.obj`` (v, vt, f v/vt, 1-based; `core.obj`) referencing ``mesh.mtl`` whose diffuse map is
    ``texture_file``."""
    obj_path = obj.write_obj(folder / MESH_FILE, vertices, faces, uv_coords, uv_faces, mtllib=MTL_FILE,
                             material=MATERIAL_NAME,
                             header=f"deca-blender reconstruction: {len(vertices)} vertices, {len(faces)} faces "
                                    "(FLAME space, metres)")
    mtl = (f"# deca-blender material\nnewmtl {MATERIAL_NAME}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
           f"map_Kd {texture_file}\n").encode()
    mtl_path = folder / MTL_FILE
    atomic_write_bytes(mtl_path, lambda fh: fh.write(mtl))
    return obj_path, mtl_path


def encode_png(array: np.ndarray, bits: int = 8, compress_level: int = 1) -> bytes:
    """PNG bytes of a float image in [0, 1] ((H, W), (H, W, 3) or (H, W, 4)) or of integers (uint8, or uint16
    for a 16-bit grayscale image). Files inside a result folder are written with this (zlib level 1: measured
    on a texture and an overlay, 0.55x the time of level 3 for 7 % larger files; Pillow's default 6 takes
    3x; the folder as a whole is committed atomically)."""
    import io

    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image contains NaN or infinity")
        a = np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * (255 if bits == 8 else 65535))
    if bits == 16:
        if a.ndim != 2:
            raise ValueError(f"16-bit PNGs are grayscale only, got shape {a.shape}")
        q = np.ascontiguousarray(a, dtype="<u2")
        img = Image.frombuffer("I;16", (q.shape[1], q.shape[0]), q.tobytes(), "raw", "I;16", 0, 1)
    else:
        img = Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    """Plain write (inside a temporary result folder, which is committed as a whole)."""
    with open(path, "wb") as f:
        f.write(data)
    return path


@dataclass
class FaceImages:
    """The images of one result folder besides result.npz: float32 numpy in [0, 1], (H, W, 3)."""

    texture: np.ndarray  # (TEXTURE_SIZE, TEXTURE_SIZE, 3) the photo unwrapped into UV
    albedo: np.ndarray  # (TEXTURE_SIZE, TEXTURE_SIZE, 3); may be `texture` itself (then encoded once)
    detail_normals: np.ndarray  # (DISPLACEMENT_SIZE, DISPLACEMENT_SIZE, 3) unit normals in FLAME's object frame
    overlay: np.ndarray  # (h, w, 3) the texture crop with the fit drawn over it


RESULT_IMAGES = ("texture.png", "albedo.png", "displacement.png", "detail_normals.png", "overlay.png")


def write_result_folder(result: ReconstructionResult, images: FaceImages, out_dir: str | Path, name: str,
                        overwrite: bool = False) -> Path:
    """The one writer of a result folder (every mode): result.npz, mesh.obj/.mtl and the images, built in a
    hidden temporary folder and renamed into place, so a folder either exists complete or not at all.

    ``result`` is validated first (`ResultError` on a bad shape or NaN, nothing written). Without
    ``overwrite`` an existing folder is kept and ``<name>-2`` ... is used; returns the final path."""
    result.validate()
    out = Path(out_dir)
    tmp = new_temp_folder(out, name)
    # the PNG encodes (zlib and Pillow's filters release the GIL) run on a second thread while this one
    # writes result.npz and the OBJ text (the encodes are ~60 % of the writing CPU time)
    pngs = {"texture.png": (images.texture, 8), "displacement.png": (
                encodings.encode_displacement(result.displacement, result.displacement_scale), 16),
            "detail_normals.png": (encodings.encode_normals(images.detail_normals), 8),
            "overlay.png": (images.overlay, 8)}
    if images.albedo is not images.texture:
        pngs["albedo.png"] = (images.albedo, 8)
    pool = ThreadPoolExecutor(max_workers=1)
    encoded = {}
    try:
        encoded = {f: pool.submit(encode_png, a, bits) for f, (a, bits) in pngs.items()}
        result.save(tmp)
        write_obj(tmp, result.vertices, result.faces, result.uv_coords, result.uv_faces)
        for f, job in encoded.items():
            write_bytes(tmp / f, job.result())
        if "albedo.png" not in pngs:  # the same image: encoded once
            shutil.copyfile(tmp / "texture.png", tmp / "albedo.png")
        return commit_folder(tmp, out / name, overwrite)
    except BaseException:  # Ctrl-C included: no half-written folder is left behind
        for job in encoded.values():
            job.cancel()
        discard(tmp)  # the encoder thread writes nothing: only this thread touches the folder
        raise
    finally:
        pool.shutdown(wait=True)


def finished_photos(out_dir: str | Path) -> set[Path]:
    """The photos (resolved paths) that already have every face's result folder in ``out_dir``.

    A result folder only appears once complete (written in a temporary folder, then renamed), so a batch
    that was interrupted leaves the photo in progress out of this set. A photo counts as finished when its
    folders hold face indices 0..n-1, n being the face count its results record (``extra_faces_in_photo``;
    1 when absent). Expression-transfer frames (`animate`) are not photos of their own and are ignored."""
    seen: dict[Path, set[int]] = {}
    expected: dict[Path, int] = {}
    for npz in sorted(Path(out_dir).glob(f"*/{RESULT_FILE}")):
        if npz.parent.name.startswith("."):
            continue
        try:
            with np.load(npz, allow_pickle=False) as z:
                if "extra_expression_source" in z.files:
                    continue
                source = Path(str(z["source_image"])).resolve()
                index = int(z["face_index"])
                n = int(z["extra_faces_in_photo"]) if "extra_faces_in_photo" in z.files else 1
        except (OSError, ValueError, KeyError):  # unreadable: not finished, the photo is done again
            continue
        seen.setdefault(source, set()).add(index)
        expected[source] = max(expected.get(source, 1), n)
    return {p for p, idx in seen.items() if set(range(expected[p])) <= idx}
