"""`deca-blender eval now` (NoW-protocol accuracy) and `deca-blender eval synth` (synthetic ground truth).

Exit codes: 0 done; 2 usage errors (missing folders, nothing to match). Heavy imports inside the commands.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_USAGE = 0, 2


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="accuracy evaluation (NoW protocol) and synthetic ground truth",
                       description="Measure reconstructions against ground truth.")
    esub = e.add_subparsers(dest="eval_command", required=True)

    n = esub.add_parser("now", help="NoW-protocol error of predictions against ground-truth scans",
                        description="Rigid (similarity) alignment from the 7 NoW landmarks, refined on the "
                                    "scan-to-mesh distance, then the distance from every ground-truth scan point "
                                    "in NoW's face crop to the predicted surface. Reports median, mean and std in "
                                    "mm over all points of all scans, as the NoW benchmark does.")
    n.add_argument("--pred", required=True, metavar="DIR",
                   help="result folders (<name>/result.npz) or <name>.obj/.ply + <name>.npy/.txt (7 landmarks); for "
                        "NoW's layout <subject>/<experiment>/<image stem>.obj/.ply + .npy/.txt")
    n.add_argument("--gt", required=True, metavar="DIR",
                   help="NoW's dataset folder as shipped (scans/, scans_lmks_onlypp/, imagepaths*.txt), or a folder "
                        "of <name>.npz from 'eval synth' or <name>.obj/.ply + <name>.pp/.txt/.npy (7 landmarks)")
    n.add_argument("--scan-unit", choices=("auto", "mm", "cm", "m"), default="auto",
                   help="length unit of the ground-truth scans (default auto: read from the landmarks' size; "
                        "NoW's scans are in mm)")
    n.add_argument("--image-set", choices=("val", "test"), default="val",
                   help="NoW layout: which image list (imagepathsvalidation.txt or imagepathstest.txt)")
    n.add_argument("--imgs-list", metavar="FILE", help="NoW layout: another image list")
    n.add_argument("--challenge", default="",
                   choices=("", "multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie"),
                   help="NoW layout: only this experiment (default: all)")
    n.add_argument("--geometry", choices=("neutral", "posed"), default="neutral",
                   help="neutral identity mesh (NoW's convention, default) or the posed mesh at the photo's expression")
    n.add_argument("--no-refine", action="store_true", help="landmark alignment only (no scan-to-mesh refinement)")
    n.add_argument("--embedding", metavar="PATH",
                   help="FLAME landmark embedding for predictions that do not store their NoW landmarks")
    n.add_argument("--json", action="store_true", help="print the full report as JSON")
    n.set_defaults(func=cmd_now)

    s = esub.add_parser("synth", help="render synthetic faces with known ground truth",
                        description="Render faces of the installed FLAME model (or --test-model) with known shape, "
                                    "expression, pose, light and albedo over varied backgrounds at several "
                                    "resolutions; saves <name>.png and the ground truth <name>.npz.")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("-n", type=int, default=50, help="number of faces (default 50)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-yaw", type=float, default=60.0, help="largest |yaw| in degrees (default 60)")
    s.add_argument("--sizes", default="224,448,640x480", help="resolutions, e.g. 224,448,640x480 (WxH)")
    s.add_argument("--backgrounds", metavar="DIR", help="folder of photos whose corners serve as backgrounds")
    s.add_argument("--obj", action="store_true", help="also write the posed ground-truth mesh as <name>.obj")
    s.add_argument("--test-model", action="store_true",
                   help="use the generated FLAME-format TEST model (needs DECA's data and FLAME's joint regressor "
                        "under $DECA_SHARED or ../shared/assets) instead of the installed FLAME")
    s.add_argument("--home", help="asset folder (default: $DECA_BLENDER_HOME or the user data folder)")
    s.set_defaults(func=cmd_synth)


def _error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def cmd_now(args: argparse.Namespace) -> int:
    from core.evaluation import now_layout
    from core.evaluation.dataset import EvaluationError, evaluate_folders

    embedding = None
    try:
        if args.embedding:
            from core.flame import load_embedding

            embedding = load_embedding(args.embedding)
        if now_layout.is_now_layout(args.gt):
            report = now_layout.evaluate_now_layout(args.gt, args.pred, image_set=args.image_set,
                                                    imgs_list=args.imgs_list, challenge=args.challenge,
                                                    geometry=args.geometry, refine=not args.no_refine,
                                                    embedding=embedding, scan_unit=args.scan_unit)
        else:
            report = evaluate_folders(args.pred, args.gt, geometry=args.geometry, refine=not args.no_refine,
                                      embedding=embedding, scan_unit=args.scan_unit)
    except (EvaluationError, ValueError, OSError) as exc:
        return _error(str(exc))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for it in report["items"]:
        note = "  (reflected)" if it.get("reflected") else ""
        print(f"{it['name']:40s} median {it['median_mm']:.3f}  mean {it['mean_mm']:.3f}  "
              f"std {it['std_mm']:.3f} mm{note}")
    o = report["overall"]
    print(f"{len(report['items'])} item(s), {o['n_points']} points ({report['geometry']} geometry, {report['protocol']}): "
          f"median {o['median_mm']:.3f} mm, mean {o['mean_mm']:.3f} mm, std {o['std_mm']:.3f} mm")
    if report["missing"]:
        print(f"{len(report['missing'])} ground-truth item(s) without a prediction: {', '.join(report['missing'][:5])}"
              + (" ..." if len(report["missing"]) > 5 else ""), file=sys.stderr)
    return EXIT_OK


def _int(token: str, text: str) -> int:
    from core.evaluation.dataset import EvaluationError

    try:
        return int(token)
    except ValueError:
        raise EvaluationError(f"invalid --sizes {text!r}: {token!r} is not a whole number") from None


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'224,448,640x480' -> ((224, 224), (448, 448), (480, 640)) as (H, W)."""
    from core.evaluation.dataset import EvaluationError  # numpy: not at import time (--help)

    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if "x" in part:
            w, h = part.split("x")
            out.append((_int(h, text), _int(w, text)))
        else:
            out.append((_int(part, text), _int(part, text)))
    if not out or any(h < 32 or w < 32 for h, w in out):
        raise EvaluationError(f"invalid --sizes {text!r}: give sizes of at least 32, e.g. 224,640x480")
    return tuple(out)


def test_model_assets():
    """FaceAssets of the generated test model, from ../shared (or $DECA_SHARED)."""
    import os
    import tempfile
    from pathlib import Path

    from core.evaluation.dataset import EvaluationError
    from core.model.face_model import FaceAssets
    from core.testmodels.synthetic_flame import write_test_flame

    shared = Path(os.environ.get("DECA_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    data, jr = shared / "assets" / "deca", shared / "assets" / "flame" / "flame2020_joint_regressor.npz"
    if not (data / "head_template.obj").is_file() or not jr.is_file():
        raise EvaluationError(f"the test model needs DECA's data and FLAME's joint regressor under {shared / 'assets'} "
                         "(set DECA_SHARED)")
    with tempfile.TemporaryDirectory(prefix="deca-test-flame-") as tmp:  # read into memory, then removed
        pkl = Path(tmp) / "test_flame.pkl"
        write_test_flame(pkl, data, jr)
        return FaceAssets.from_paths(pkl, data)


def cmd_synth(args: argparse.Namespace) -> int:
    from core.evaluation.dataset import EvaluationError
    from core.evaluation.synthetic import SyntheticConfig, SyntheticGenerator
    from core.model.face_model import FaceAssets, FaceModel

    # bad sizes, missing assets: DecaErrors, printed in one line by the CLI
    sizes = parse_sizes(args.sizes)
    if args.n < 1:
        raise EvaluationError("-n must be at least 1")
    if args.test_model:
        assets = test_model_assets()
    else:
        from core.assets import AssetManager

        assets = FaceAssets.from_manager(AssetManager(args.home) if args.home else AssetManager())
    model = FaceModel(assets).eval()
    cfg = SyntheticConfig(n=args.n, sizes=sizes, max_yaw_deg=args.max_yaw, seed=args.seed, write_obj=args.obj)
    gen = SyntheticGenerator(model, cfg, photos_dir=args.backgrounds)
    paths = gen.write(args.out, progress=lambda i, n, name: print(f"{i}/{n} {name}", file=sys.stderr))
    note = "  [TEST model: not FLAME]" if assets.flame.is_test_model else ""
    print(f"{len(paths)} synthetic face(s) in {args.out}{note}")
    return EXIT_OK
