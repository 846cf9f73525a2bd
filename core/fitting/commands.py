"""`deca-blender fit`: FLAME fitted to photos without DECA's regressor (analysis by synthesis).

The same result folders as `reconstruct`. Exit codes: 0 every photo worked; 1 some failed; 2 usage errors,
missing assets, no landmark detector or an unwritable output folder.
"""
from __future__ import annotations

import argparse
import json
import sys

from core.pipeline.commands import EXIT_OK, EXIT_SOME_FAILED, photos_and_output, usage_error


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """The fitting options (shared with `reconstruct --mode fit` when the pipeline adopts them)."""
    p.add_argument("--same-person", action="store_true",
                   help="the photos show one person: fit them together with one shared shape")
    p.add_argument("--no-photometric", action="store_true", help="landmark fitting only (skip stage 2)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="photometric iterations (default 60)")


def add_mode_options(p: argparse.ArgumentParser) -> None:
    """`reconstruct --mode fit|deca+fit` and the fitting options (`reconstruct` delegates those modes to
    `cmd_fit`; its --batch-size, --bf16 and --wrinkle-* options apply to the regressor only)."""
    p.add_argument("--mode", choices=("deca", "fit", "deca+fit"), default="deca",
                   help="deca: DECA's regressor (default); fit: fit FLAME to the photo without DECA's checkpoint; "
                        "deca+fit: the regressor, then the fit refines it")
    add_fit_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fit", help="fit FLAME to photos (no DECA checkpoint needed)",
                       description="Analysis by synthesis: landmarks (pose, camera, shape, expression with priors), "
                                   "then a photometric refinement with the project's renderer (albedo, SH light). "
                                   "Writes the same result folders as 'reconstruct'. Needs FLAME and DECA's data "
                                   "files; DECA's checkpoint only for --mode deca+fit.")
    f.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER")
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--mode", choices=("fit", "deca+fit"), default="fit",
                   help="fit: FLAME only; deca+fit: start from DECA's regressor and refine (needs its checkpoint)")
    add_fit_options(f)
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    f.add_argument("--landmarks", default="auto", choices=("auto", "mediapipe", "fan", "dlib"))
    f.add_argument("--commercial", action="store_true",
                   help="refuse to run with components licensed for non-commercial use only (assets status)")
    f.add_argument("--force", action="store_true",
                   help="fit faces below the landmark confidence threshold (e.g. strong profiles)")
    f.add_argument("--all-faces", action="store_true", help="fit every face (default: the largest)")
    f.add_argument("--overwrite", action="store_true", help="replace existing result folders")
    f.add_argument("--home", help="asset folder (default: $DECA_BLENDER_HOME or the user data folder)")
    f.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    f.set_defaults(func=cmd_fit)


def build_fitter(args: argparse.Namespace, mode: str = "fit"):
    """A `Fitter` from parsed options (or an exit code, the message printed)."""
    from core.assets import AssetError, AssetManager
    from core.fitting.fitter import Fitter
    from core.fitting.photometric_fit import PhotometricFitConfig
    from core.frontend import DetectorUnavailableError

    pcfg = PhotometricFitConfig()
    if getattr(args, "iterations", None) is not None:
        if args.iterations < 0:
            return usage_error("--iterations must be >= 0")
        pcfg.iterations = args.iterations
    try:
        manager = AssetManager(args.home) if getattr(args, "home", None) else AssetManager()
        if getattr(args, "commercial", False):
            from core.assets.licences import FIT_ASSETS, RECONSTRUCT_ASSETS, require_commercial
            from core.frontend import get_detector
            require_commercial(manager, RECONSTRUCT_ASSETS if mode == "deca+fit" else FIT_ASSETS,
                               get_detector(args.landmarks).name)
        fitter = Fitter(manager, device=args.device, landmarks=args.landmarks, mode=mode, photometric_config=pcfg,
                        photometric=not args.no_photometric, force=getattr(args, "force", False))
        fitter.detector  # fail now, not on the first photo
    except (AssetError, DetectorUnavailableError, ValueError) as exc:
        return usage_error(str(exc))
    except Exception as exc:  # e.g. a checkpoint error in deca+fit
        return usage_error(f"{type(exc).__name__}: {exc}")
    return fitter


def cmd_fit(args: argparse.Namespace) -> int:
    from core.pipeline.writing import OutputDirError

    photos = photos_and_output(args.photos, args.out)
    if isinstance(photos, int):
        return photos
    fitter = build_fitter(args, args.mode)
    if isinstance(fitter, int):
        return fitter
    try:
        summary = fitter.fit_photos(photos, args.out, same_person=args.same_person, all_faces=args.all_faces,
                                    overwrite=args.overwrite)
    except OutputDirError as exc:
        return usage_error(str(exc))
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for photo, i, folder in summary.succeeded:
            print(f"ok      {photo} (face {i}) -> {folder}")
        for f in summary.failed:
            print(f"failed  {f.photo}: {f.message}", file=sys.stderr)
        note = "  [TEST model: results are for testing only]" if fitter.face_assets.flame.is_test_model else ""
        print(f"{len(summary.succeeded)} result folder(s) in {summary.seconds:.1f} s; "
              f"{len(summary.failed)} failure(s){note}")
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED
