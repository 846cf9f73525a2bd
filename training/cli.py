"""``deca-train``: train DECA's stages, build datasets, export checkpoints.

    deca-train train --config FILE.yaml [--set section.key=value ...]
    deca-train prepare --photos DIR --out DIR [--detector auto|mediapipe|dlib|fan] [--skin-mask auto|mesh|landmarks]
                       [--face-parser module:function]
    deca-train index ROOT [--overwrite]
    deca-train synth --out DIR [--flame FILE --data-dir DIR] [--identities N --images K --seed S]
    deca-train export --checkpoint CKPT --out deca_model.tar
    deca-train eval --weights CKPT --data DIR [--flame FILE --data-dir DIR]

Multi-GPU / multi-node: ``torchrun --nproc_per_node N [--nnodes ...] -m training.cli train --config FILE``.
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deca-train", description="Train DECA (pretrain / coarse / detail stages).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="run one training stage from a YAML config (docs/training.md)")
    t.add_argument("--config", required=True, help="YAML file; every option has a default")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.max_steps=100 (repeatable)")

    pr = sub.add_parser("prepare", help="build a training dataset from folders of photos (one folder per person)")
    pr.add_argument("--photos", required=True, help="folder with one sub-folder of photos per identity")
    pr.add_argument("--out", required=True, help="dataset folder to write")
    pr.add_argument("--detector", default="auto", choices=["auto", "mediapipe", "dlib", "fan"])
    pr.add_argument("--skin-mask", default="auto", choices=["auto", "mesh", "landmarks"],
                    help="skin mask: MediaPipe's dense mesh (face oval minus eyes, brows, lips), the 68 landmarks + "
                         "colour statistics, or auto (the mesh when the detector gives one); --face-parser overrides")
    pr.add_argument("--face-parser", default=None, metavar="MODULE:FUNCTION",
                    help="skin segmentation callable (crop -> mask); overrides --skin-mask")
    pr.add_argument("--min-images", type=int, default=1, help="skip identities with fewer photos")
    pr.add_argument("--skin-threshold", type=float, default=3.0, help="chroma Mahalanobis threshold (sigmas)")
    pr.add_argument("--overwrite", action="store_true", help="redo samples that already exist")
    pr.add_argument("--workers", type=int, default=1, help="processes (each loads its own detector)")
    pr.add_argument("--shard", default=None, metavar="I/N",
                    help="process only the I-th of N shares of the photos (N independent jobs cover all once)")

    sy = sub.add_parser("synth", help="render a synthetic dataset with ground-truth codes from a face model")
    sy.add_argument("--out", required=True)
    sy.add_argument("--flame", default="", help="FLAME (or test-model) file; default: installed assets")
    sy.add_argument("--data-dir", default="", help="DECA data folder; default: installed assets")
    sy.add_argument("--identities", type=int, default=8)
    sy.add_argument("--images", type=int, default=4, help="images per identity")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--detail-amplitude", type=float, default=None, help="metres (0: no details)")

    ix = sub.add_parser("index", help="write the manifest of a prepared or synthetic dataset folder that has none")
    ix.add_argument("root", help="dataset folder (<root>/<identity>/<name>.png + .npz)")
    ix.add_argument("--overwrite", action="store_true", help="replace existing manifest*.json with a fresh listing")

    ex = sub.add_parser("export", help="write the official deca_model.tar layout from a training checkpoint")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)

    ev = sub.add_parser("eval", help="errors of E_flame on a dataset (parameter errors need ground truth)")
    ev.add_argument("--weights", required=True, help="training checkpoint or deca_model.tar")
    ev.add_argument("--data", required=True)
    ev.add_argument("--flame", default="")
    ev.add_argument("--data-dir", default="")
    ev.add_argument("--batch-size", type=int, default=8)
    return p


def _face_model(flame: str, data_dir: str):
    from core.model.face_model import FaceAssets, FaceModel

    if flame or data_dir:
        if not (flame and data_dir):
            raise ValueError("--flame and --data-dir go together (or give neither to use the installed assets)")
        return FaceModel(FaceAssets.from_paths(flame, data_dir))
    return FaceModel(FaceAssets.from_manager())


def _cmd_train(args) -> int:
    from .config import load_config
    from .trainer import train

    cfg = load_config(args.config, args.set)
    res = train(cfg)
    print(json.dumps({"step": res.step, "output_dir": str(res.output_dir),
                      "checkpoint": str(res.checkpoint) if res.checkpoint else None,
                      "exported": str(res.exported) if res.exported else None}))
    return 0


def _cmd_prepare(args) -> int:
    import logging

    from .prepare import prepare_dataset

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    rep = prepare_dataset(args.photos, args.out, detector=args.detector, face_parser=args.face_parser,
                          skin_mask=args.skin_mask, min_images=args.min_images, skin_threshold=args.skin_threshold,
                          overwrite=args.overwrite, workers=args.workers, shard=args.shard)
    print(f"wrote {rep.written} image(s) of {rep.identities} identit{'y' if rep.identities == 1 else 'ies'} to "
          f"{rep.out}; skipped {len(rep.skipped)}")
    for f, why in rep.skipped:
        print(f"  skipped {f}: {why}")
    return 0 if rep.identities else 1


def _cmd_synth(args) -> int:
    from .synthetic import SyntheticSpec, make_synthetic_dataset

    face = _face_model(args.flame, args.data_dir)
    spec = SyntheticSpec(n_identities=args.identities, images_per_identity=args.images, seed=args.seed)
    if args.detail_amplitude is not None:
        spec.detail_amplitude = args.detail_amplitude
    out = make_synthetic_dataset(args.out, face, spec)
    print(f"wrote {args.identities * args.images} images of {args.identities} identities to {out}"
          + (" (TEST model, not FLAME)" if face.is_test_model else ""))
    return 0


def _cmd_index(args) -> int:
    from .data import index_dataset, read_manifests

    path = index_dataset(args.root, overwrite=args.overwrite)
    idx = read_manifests(args.root) or {}
    n = sum(len(v) for v in idx.values())
    print(f"wrote {path}: {n} image(s) of {len(idx)} identit{'y' if len(idx) == 1 else 'ies'}")
    return 0


def _cmd_export(args) -> int:
    from .export import export_checkpoint

    print(export_checkpoint(args.checkpoint, args.out))
    return 0


def _cmd_eval(args) -> int:
    from core.networks import load_deca_checkpoint

    from .evaluate import evaluate

    nets = load_deca_checkpoint(args.weights)
    face = _face_model(args.flame, args.data_dir)
    print(json.dumps(evaluate(nets, face, args.data, batch_size=args.batch_size), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core.networks import CheckpointError

    from .config import ConfigError
    from .data import DatasetError

    try:
        return {"train": _cmd_train, "prepare": _cmd_prepare, "synth": _cmd_synth, "index": _cmd_index,
                "export": _cmd_export, "eval": _cmd_eval}[args.command](args)
    except (ConfigError, DatasetError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"deca-train: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
