"""Does training learn? The learning experiment on synthetic data with ground truth.

``python -m training.experiments --out DIR [--blocks 1 1 1 1 --input-size 64] [--steps N] [key=value ...]``

Renders a training set (``--ids`` identities x ``--per-id`` images) and a held-out set of NEW identities
(``--held-ids`` x ``--held-per-id``) from the face model (the FLAME-format test model unless ``--flame`` and
``--data-dir`` name real assets), trains the pretrain stage (landmark + eye losses) and prints a
:class:`~training.evaluate.LearningReport` for both sets: landmark error against the mean-code baseline and
R^2 of shape, expression, head rotation, jaw and camera. ``--blocks 3 4 6 3 --input-size 224`` (the default)
is DECA's ResNet-50: on the CPU that takes hours, on a GPU minutes (see docs/training.md, "Does it learn?").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["make_learning_sets", "run_learning", "main"]


def make_learning_sets(face, root: Path, ids: int, per_id: int, held_ids: int, held_per_id: int,
                       seed: int = 0, **spec) -> tuple[Path, Path]:
    """Training and held-out synthetic sets (the held-out identities are new people); cached in ``root``."""
    from .synthetic import SyntheticSpec, make_synthetic_dataset

    train, held = root / "train", root / "held_out"
    if not (train / "dataset.json").is_file():
        make_synthetic_dataset(train, face, SyntheticSpec(n_identities=ids, images_per_identity=per_id, seed=seed,
                                                          detail_amplitude=0.0, **spec))
    if not (held / "dataset.json").is_file():
        make_synthetic_dataset(held, face, SyntheticSpec(n_identities=held_ids, images_per_identity=held_per_id,
                                                         seed=seed + 1000, identity_seed=seed + 1000,
                                                         detail_amplitude=0.0, prefix="held", **spec))
    return train, held


def run_learning(face, train: Path, held: Path, out: Path, overrides: dict) -> dict:
    """Train the pretrain stage with ``overrides`` (nested config dict) and report on both sets."""
    from .config import config_from_dict
    from .evaluate import learning_report
    from .networks import load_training_networks
    from .trainer import train as run

    cfg = {"stage": "pretrain", "output_dir": str(out),
           "data": {"root": str(train), "identities_per_batch": 4, "images_per_identity": 2},
           "train": {"max_steps": 100, "log_every": 25, "tensorboard": False, "resume": "never",
                     "checkpoint_every": 10 ** 9}}
    for sec, vals in overrides.items():
        if isinstance(vals, dict):
            cfg.setdefault(sec, {}).update(vals)
        else:
            cfg[sec] = vals
    cfg = config_from_dict(cfg)
    t0 = time.perf_counter()
    res = run(cfg, face=face)
    seconds = time.perf_counter() - t0
    face = face.to("cpu")  # the trainer moved it to its device; the report runs on the CPU
    nets = load_training_networks(res.checkpoint, cfg.model)
    return {"seconds": seconds, "steps": res.step,
            "train": learning_report(nets, face, train, train).as_dict(),
            "held_out": learning_report(nets, face, train, held).as_dict()}


def _parse_overrides(items: list[str]) -> dict:
    import yaml

    out: dict = {}
    for it in items:
        key, _, value = it.partition("=")
        sec, _, name = key.partition(".")
        out.setdefault(sec, {})[name] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.experiments", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--flame", default="", help="FLAME model file (default: the FLAME-format test model)")
    ap.add_argument("--data-dir", default="", help="DECA data folder (default: ../shared/assets/deca)")
    ap.add_argument("--ids", type=int, default=200)
    ap.add_argument("--per-id", type=int, default=2)
    ap.add_argument("--held-ids", type=int, default=25)
    ap.add_argument("--held-per-id", type=int, default=4)
    ap.add_argument("--blocks", type=int, nargs=4, default=[3, 4, 6, 3])
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--spec", default="{}", help="SyntheticSpec fields of both sets as JSON, e.g. '{\"yaw_deg\": 30}'")
    ap.add_argument("overrides", nargs="*", help="config overrides section.key=value (YAML values)")
    a = ap.parse_args(argv)

    from core.model.face_model import FaceAssets, FaceModel

    repo = Path(__file__).resolve().parents[1]
    data_dir = Path(a.data_dir or repo.parent / "shared" / "assets" / "deca")
    flame = a.flame
    if not flame:
        from core.testmodels.synthetic_flame import write_test_flame

        flame = a.out / "test_flame.pkl"
        if not flame.is_file():
            a.out.mkdir(parents=True, exist_ok=True)
            write_test_flame(flame, data_dir, data_dir.parent / "flame" / "flame2020_joint_regressor.npz")
    face = FaceModel(FaceAssets.from_paths(flame, data_dir))
    train, held = make_learning_sets(face, a.out / "data", a.ids, a.per_id, a.held_ids, a.held_per_id,
                                     **json.loads(a.spec))
    over = _parse_overrides(a.overrides)
    over.setdefault("model", {}).update(encoder_blocks=a.blocks, encoder_input_size=a.input_size)
    over.setdefault("train", {}).setdefault("max_steps", a.steps)
    tag = "_".join(f"{k}" for k in a.overrides) or "default"
    tag = tag.replace("/", "_")
    report = run_learning(face, train, held, a.out / "runs" / tag, over)  # train.device auto: a GPU when present
    report["overrides"] = a.overrides
    print(json.dumps(report, indent=1))
    with open(a.out / "results.jsonl", "a") as f:
        f.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
