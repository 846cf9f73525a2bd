"""Expression-only decoding for animation and video: detect, crop, ``E_flame``; FLAME codes, nothing else.

A frame of an animation only needs the expression and the jaw (and, to follow the head, its pose and
camera): the person's shape, detail code, textures and wrinkle model come from the identity photo, once.
So per frame this path runs the landmark detector, DECA's crop and ``E_flame`` only -- no ``E_detail``, no
``D_detail``, no textures, no wrinkle fit, no result folder -- batched across frames, with ``E_flame``'s
batch norms folded into its convolutions (`core.networks.runtime`; equal to the eager encoder within float
rounding). The codes are those of the full path (`Reconstructor`): tests/test_pipeline_expressions.py.

    frames = decode_expressions(rec, ["f000.png", "f001.png", ...], batch_size=8)
    frames.exp          # (F, 50)  per frame that worked, in order
    summary = animate_fast(rec, "me.jpg", ["frames/"], "anim/")

``animate_fast`` writes the identity's full result folder once and ``expressions.npz`` beside it
(docs/CONVENTIONS.md, "Expression track"): ``exp (F, 50)``, ``jaw (F, 3)``, ``global_pose (F, 3)``,
``cam (F, 3)`` float32, ``frame_index (F,)`` int64 (position in the input list), ``sources (F,)`` str,
``identity_folder`` str, plus ``animation.json`` listing the same with ``"mode": "fast"``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from core.atomic import atomic_write_bytes
from core.results import writing
from core.frontend.images import collect_photos
from core.pipeline.reconstruct import PhotoFailure, Reconstructor

__all__ = ["ExpressionFrames", "FastAnimationSummary", "decode_expressions", "animate_fast",
           "EXPRESSIONS_FILE"]

EXPRESSIONS_FILE = "expressions.npz"
Progress = Callable[[float, str], None]


@dataclass
class ExpressionFrames:
    """FLAME codes of the frames that worked, in input order (F frames)."""

    sources: list[str]
    frame_index: np.ndarray  # (F,) int64, position in the input list
    exp: np.ndarray  # (F, 50)
    jaw: np.ndarray  # (F, 3) axis-angle
    global_pose: np.ndarray  # (F, 3) axis-angle
    cam: np.ndarray  # (F, 3) (s, tx, ty)
    failed: list[PhotoFailure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return len(self.sources) / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class FastAnimationSummary:
    identity: str
    identity_folder: str
    expressions: str  # path of expressions.npz
    n_frames: int
    failed: list[PhotoFailure] = field(default_factory=list)
    manifest: str | None = None

    def to_dict(self) -> dict:
        return {"mode": "fast", "identity": self.identity, "identity_folder": self.identity_folder,
                "expressions": self.expressions, "n_frames": self.n_frames,
                "failed": [asdict(f) for f in self.failed], "manifest": self.manifest}


def decode_expressions(rec: Reconstructor, photos: Sequence[str | Path], batch_size: int = 8,
                       progress: Progress | None = None) -> ExpressionFrames:
    """FLAME codes of the largest face of each photo (folders expanded, name order). A photo that fails
    (unreadable, no face) is recorded in ``failed`` and skipped."""
    t0 = time.perf_counter()
    sources = collect_photos(photos)
    enc = rec.networks.E_flame  # batch norms folded (Reconstructor runs `inference_networks`)
    batch_size = max(1, int(batch_size))
    rows: list[tuple[int, str, torch.Tensor]] = []
    failed: list[PhotoFailure] = []
    pending: list = []

    def flush() -> None:
        if not pending:
            return
        x = rec._network_inputs([p for _, p in pending]).to(rec.device, torch.float32)
        if rec.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            codes = enc.encode(x)
        vec = torch.cat([codes.exp, codes.pose, codes.cam], 1).float().cpu()
        for row, (k, p) in enumerate(pending):
            rows.append((k, str(p.path), vec[row]))
        pending.clear()

    for k, src in enumerate(sources):
        try:
            pending.append((k, rec._prepare(src, all_faces=False)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # unreadable, no face: recorded, the track goes on
            failed.append(PhotoFailure(str(src), type(exc).__name__, str(exc) or type(exc).__name__))
        if len(pending) >= batch_size:
            flush()
        if progress:
            progress((k + 1) / max(1, len(sources)), f"{Path(src).name}")
    flush()
    vec = torch.stack([r[2] for r in rows]).numpy() if rows else np.zeros((0, 59), np.float32)
    return ExpressionFrames(
        sources=[r[1] for r in rows], frame_index=np.array([r[0] for r in rows], np.int64),
        exp=vec[:, :50].copy(), jaw=vec[:, 53:56].copy(), global_pose=vec[:, 50:53].copy(), cam=vec[:, 56:59].copy(),
        failed=failed, seconds=time.perf_counter() - t0)


def animate_fast(rec: Reconstructor, identity_photo: str | Path, expression_photos: Sequence[str | Path],
                 out_dir: str | Path, overwrite: bool = False, progress: Progress | None = None,
                 batch_size: int = 8) -> FastAnimationSummary:
    """The identity's result folder (full path, once) and every frame's codes in ``expressions.npz``.

    Raises for the identity photo (`ImageReadError`, `NoFaceError`) and `OutputDirError`; frames that fail
    are recorded. An existing ``expressions.npz`` or ``animation.json`` is only replaced with ``overwrite``."""
    out = writing.check_output_dir(out_dir)
    npz_path, manifest = out / EXPRESSIONS_FILE, out / "animation.json"
    for p in (npz_path, manifest):
        if p.exists() and not overwrite:
            raise writing.OutputDirError(f"{p} exists; pass overwrite=True (--overwrite) to replace it")
    identity_folder = rec.reconstruct_photo(identity_photo, out, overwrite=overwrite)[0]
    frames = decode_expressions(rec, expression_photos, batch_size=batch_size, progress=progress)
    arrays = {"exp": frames.exp, "jaw": frames.jaw, "global_pose": frames.global_pose, "cam": frames.cam,
              "frame_index": frames.frame_index, "sources": np.array(frames.sources, dtype=np.str_),
              "identity_folder": np.str_(str(identity_folder))}

    def write_npz(f) -> None:
        np.savez(f, **arrays)

    atomic_write_bytes(npz_path, write_npz)
    summary = FastAnimationSummary(identity=str(identity_photo), identity_folder=str(identity_folder),
                                   expressions=str(npz_path), n_frames=len(frames.sources), failed=frames.failed,
                                   manifest=str(manifest))
    payload = json.dumps({**summary.to_dict(), "frames": [
        {"index": int(k), "expression_source": s} for k, s in zip(frames.frame_index, frames.sources)]},
        indent=2).encode()
    atomic_write_bytes(manifest, lambda f: f.write(payload))
    return summary
