"""`deca-blender reconstruct` and `deca-blender animate`.

Exit codes: 0 every photo worked; 1 some photos (or faces) failed, the others were written; 2 usage
errors, missing assets, an unusable checkpoint, no landmark detector or an unwritable output folder
(nothing was done). torch is imported inside the commands so `deca-blender --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the result folders (created if needed)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true",
                   help="reconstruct faces below the landmark confidence threshold (e.g. strong profiles)")
    p.add_argument("--commercial", action="store_true",
                   help="refuse to run with components licensed for non-commercial use only (assets status)")
    p.add_argument("--landmarks", default="auto", choices=("auto", "mediapipe", "fan", "dlib"),
                   help="landmark detector (default: MediaPipe when installed, else FAN when its weights are on disk, else dlib)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="faces per network forward (default 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing result folders (default: pick a new name, never overwrite)")
    p.add_argument("--home", help="asset folder (default: $DECA_BLENDER_HOME or the user data folder)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast for the two encoders (faster on recent CPUs/GPUs; not yet validated on "
                        "DECA's released weights)")
    p.add_argument("--wrinkle-samples", type=int, default=None, metavar="N",
                   help="decoder samples for the wrinkle model fit (default 56)")
    p.add_argument("--wrinkle-components", type=int, default=16, metavar="K", help="wrinkle maps (default 16)")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reconstruct", help="photos of faces to result folders (mesh, textures, details, rig)",
                       description="Reconstruct every face photo (files or folders of photos) into a result "
                                   "folder per face: result.npz, mesh.obj/.mtl, albedo, texture, 16-bit "
                                   "displacement, detail normals and an overlay to check the fit.")
    r.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER")
    _common(r)
    r.add_argument("--all-faces", action="store_true", help="reconstruct every face (default: the largest)")
    from core.fitting.commands import add_mode_options  # --mode fit|deca+fit, --same-person (core.fitting)
    add_mode_options(r)
    r.set_defaults(func=cmd_reconstruct)

    a = sub.add_parser("animate", help="transfer expressions: one person's head with other photos' expressions",
                       description="DECA's animation: the identity photo's shape, detail code and texture with "
                                   "each expression photo's expression and jaw; detail maps re-decoded per frame.")
    a.add_argument("--identity", required=True, metavar="PHOTO", help="the person")
    a.add_argument("--expressions", required=True, nargs="+", metavar="PHOTO_OR_FOLDER",
                   help="photos whose expression and jaw are transferred (one frame each)")
    _common(a)
    a.set_defaults(func=cmd_animate)


def usage_error(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def photos_and_output(inputs: list[str], out_dir: str, what: str = "photos"):
    """The photos named by files/folders and a checked output folder, or the usage exit code after
    printing why. Shared by reconstruct, animate and fit, so each fails the same way before any work."""
    from core.pipeline.reconstruct import collect_photos
    from core.pipeline.writing import OutputDirError, check_output_dir

    photos = collect_photos(inputs)
    if not photos:
        return usage_error(f"no {what} found in " + ", ".join(inputs))
    try:
        check_output_dir(out_dir)
    except OutputDirError as exc:
        return usage_error(str(exc))
    return photos


def _build(args: argparse.Namespace):
    """The Reconstructor, or an exit code with the message printed."""
    from core.assets import AssetError, AssetManager
    from core.frontend import DetectorUnavailableError
    from core.networks import CheckpointError
    from core.pipeline import wrinkles
    from core.pipeline.reconstruct import Reconstructor, resolve_device

    if args.batch_size < 1:
        return usage_error("--batch-size must be at least 1")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as exc:
        return usage_error(str(exc))
    try:
        manager = AssetManager(args.home) if args.home else AssetManager()
        if args.commercial:
            from core.assets.licences import RECONSTRUCT_ASSETS, require_commercial
            from core.frontend import get_detector
            require_commercial(manager, RECONSTRUCT_ASSETS, get_detector(args.landmarks).name)
        rec = Reconstructor(manager, device=device, landmarks=args.landmarks,
                            wrinkle_components=args.wrinkle_components,
                            wrinkle_samples=args.wrinkle_samples or wrinkles.DEFAULT_SAMPLES, bf16=args.bf16,
                            force=args.force)
        rec.detector  # fail now, not on the first photo
    except (AssetError, CheckpointError, DetectorUnavailableError) as exc:
        return usage_error(str(exc))
    except RuntimeError as exc:  # CommercialUseError
        return usage_error(str(exc))
    except ValueError as exc:  # FlameModelError, TemplateError, ...: a damaged asset
        return usage_error(str(exc))
    return rec


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="photo", file=sys.stderr, dynamic_ncols=True)

    def update(fraction: float, message: str = "") -> None:
        n = int(round(fraction * total))
        if n > bar.n:
            bar.update(n - bar.n)
        if message:
            bar.set_postfix_str(message[:40])

    return bar, update


def cmd_reconstruct(args: argparse.Namespace) -> int:
    if getattr(args, "mode", "deca") != "deca":  # the fitting modes live in core.fitting
        from core.fitting.commands import cmd_fit
        return cmd_fit(args)
    from core.pipeline.reconstruct import OutputDirError

    photos = photos_and_output(args.photos, args.out)
    if isinstance(photos, int):
        return photos
    rec = _build(args)
    if isinstance(rec, int):
        return rec
    bar, update = _progress_bar(len(photos), enabled=len(photos) > 1 and not args.json)
    try:
        summary = rec.reconstruct_many(photos, args.out, batch_size=args.batch_size, all_faces=args.all_faces,
                                       progress=update, overwrite=args.overwrite)
    except OutputDirError as exc:
        return usage_error(str(exc))
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for s in summary.succeeded:
            print(f"ok      {s.photo} (face {s.face_index}) -> {s.folder}")
        for f in summary.failed:
            face = f" (face {f.face_index})" if f.face_index is not None else ""
            print(f"failed  {f.photo}{face}: {f.message}", file=sys.stderr)
        note = "  [TEST model: results are for testing only]" if rec.face_assets.flame.is_test_model else ""
        print(f"{len(summary.succeeded)} result folder(s) from {summary.n_photos} photo(s) in "
              f"{summary.seconds:.1f} s; {len(summary.failed)} failure(s){note}")
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED


def cmd_animate(args: argparse.Namespace) -> int:
    from core.frontend import ImageReadError, NoFaceError
    from core.pipeline.reconstruct import OutputDirError

    expressions = photos_and_output(args.expressions, args.out, "expression photos")
    if isinstance(expressions, int):
        return expressions
    rec = _build(args)
    if isinstance(rec, int):
        return rec
    bar, update = _progress_bar(len(expressions), enabled=len(expressions) > 1 and not args.json)
    try:
        summary = rec.animate(args.identity, expressions, args.out, overwrite=args.overwrite, progress=update,
                              batch_size=args.batch_size)
    except (ImageReadError, NoFaceError) as exc:
        print(f"error: the identity photo: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
    except OutputDirError as exc:
        return usage_error(str(exc))
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        for f in summary.frames:
            print(f"frame {f['index']:3d}  {f['expression_source']} -> {f['folder']}")
        for f in summary.failed:
            print(f"failed  {f.photo}: {f.message}", file=sys.stderr)
        print(f"{len(summary.frames)} frame(s), {len(summary.failed)} failure(s); list in {summary.manifest}")
    return EXIT_OK if not summary.failed else EXIT_SOME_FAILED
