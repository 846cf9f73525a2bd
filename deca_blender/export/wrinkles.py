"""The wrinkle package written beside an export: the maps as 16-bit PNGs plus a JSON an engine can use.

Game engines get the expression shape keys as morph targets; the JSON says how those morph-target
weights (and the jaw bone) mix the wrinkle maps:

    displacement(uv) = base(uv) + sum_k w_k * map_k(uv),   w = strength * matrix @ x,
    x = [weights of exp_000..exp_049, jaw axis-angle x, y, z]

Texels decode as value = (texel * 2 - 1) * scale (texel in [0, 1]), in metres along the normal. Image
row 0 is v = 1 of the mesh's UVs, i.e. the usual orientation for glTF and engines (no flip).
Everything is read from the head in the .blend (packed images, the matrix kept on the object), so the
export does not need the original result folder.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from ..scene.drivers import CORRECTIVE_JOINTS
from ..scene.mesh import exp_key_name

FORMAT = "deca-blender-wrinkles"
VERSION = 1


def write_png16(path: Path, values01: np.ndarray) -> None:
    """A 16-bit grayscale PNG of an (H, W) array in [0, 1], row 0 at the top (zlib only, no Pillow)."""
    arr = np.clip(np.round(np.asarray(values01, np.float64) * 65535), 0, 65535).astype(">u2")
    h, w = arr.shape
    raw = b"".join(b"\x00" + arr[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def _image_channels(img) -> np.ndarray:
    """(4, S, S) float channels of a Blender image, top row first."""
    w, h = img.size
    px = np.empty(w * h * 4, np.float32)
    img.pixels.foreach_get(px)
    return px.reshape(h, w, 4)[::-1].transpose(2, 0, 1)


def wrinkle_data(mesh_obj) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base (S, S), maps (K, S, S), matrix (K, 53)) of a head, from its node group's images."""
    group = mesh_obj.deca.wrinkle_group
    if group is None:
        raise ValueError(f"{mesh_obj.name}: has no wrinkle node group; re-import the head")
    K, n_in = (int(v) for v in mesh_obj["_deca_wrinkle_shape"])
    matrix = np.asarray(mesh_obj["_deca_wrinkle_matrix"], np.float64).reshape(K, n_in)
    base = None
    maps: list = [None] * K
    for node in group.nodes:
        if node.type != "TEX_IMAGE" or node.image is None:
            continue
        name = node.image.name
        if "_wrinkle_base" in name:
            base = _image_channels(node.image)[0]
        elif "_wrinkle_maps_" in name:
            i = int(name.rsplit("_", 1)[1].split(".")[0])
            ch = _image_channels(node.image)
            for c in range(4):
                if 4 * i + c < K:
                    maps[4 * i + c] = ch[c]
    if base is None or any(m is None for m in maps):
        raise ValueError(f"{mesh_obj.name}: its wrinkle images are missing; re-import the head")
    return base, np.stack(maps), matrix


def write_wrinkle_package(mesh_obj, export_path: str | Path) -> Path:
    """Write `<stem>_wrinkles/*.png` and `<stem>_wrinkles.json` beside `export_path`. Returns the JSON path."""
    export_path = Path(export_path)
    stem = export_path.stem
    folder = export_path.parent / f"{stem}_wrinkles"
    folder.mkdir(parents=True, exist_ok=True)
    base, maps, matrix = wrinkle_data(mesh_obj)

    def save(name: str, arr: np.ndarray) -> dict:
        scale = float(np.abs(arr).max()) or 1e-12
        write_png16(folder / name, (arr / scale + 1.0) / 2.0)
        return {"file": f"{folder.name}/{name}", "scale": scale}

    n_exp = min(50, matrix.shape[1])
    inputs = [exp_key_name(i) for i in range(n_exp)] + ["jaw_x", "jaw_y", "jaw_z"][: matrix.shape[1] - n_exp]
    keys = mesh_obj.data.shape_keys.key_blocks
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "head": mesh_obj.name,
        "formula": "displacement = base + sum_k weight_k * map_k; weight = strength * matrix @ x; "
                   "x = [morph target weights exp_000..exp_049, jaw bone axis-angle x, y, z (radians)]",
        "material": ("per pixel, in UV space: d = decode(base) + sum_k weight_k * decode(map_k) (metres); "
                     "weight_k = strength * sum_j matrix[k][j] * x_j, evaluated per frame from the morph target "
                     "weights and the jaw bone's local rotation as axis-angle (radians; identity rest, FLAME axes); "
                     "use d as a height map: bump the normal by its UV gradient, or offset along the normal by d"),
        "encoding": "value = (texel * 2 - 1) * scale with texel in [0, 1]; metres along the surface normal",
        "uv": "the mesh's first UV map; image row 0 is v = 1 (glTF texture orientation)",
        "strength": float(mesh_obj.deca.wrinkle_strength),
        "base": save("wrinkle_base.png", base),
        "maps": [save(f"wrinkle_{k:02d}.png", maps[k]) for k in range(maps.shape[0])],
        "inputs": inputs,
        "matrix": matrix.tolist(),
        "morph_targets": {inputs[j]: matrix[:, j].tolist() for j in range(n_exp)},
        "jaw": {"bone": "jaw", "axis_angle_weights": {a: matrix[:, n_exp + i].tolist()
                                                       for i, a in enumerate("xyz") if n_exp + i < matrix.shape[1]}},
        "pose_correctives": {"morph_targets": "pc_000..pc_035", "joints": list(CORRECTIVE_JOINTS),
                             "weight": "(R - I) of the joint's local rotation, row-major, 9 per joint"},
        "morph_target_names": [kb.name for kb in keys[1:]],
    }
    json_path = export_path.parent / f"{stem}_wrinkles.json"
    json_path.write_text(json.dumps(doc, indent=1))
    return json_path
