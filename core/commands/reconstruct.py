"""`deca-blender reconstruct` and `deca-blender animate` (and the shared options of `fit`).

Exit codes: 0 every photo worked; 1 some photos (or faces) failed, the others were written; 2 usage
errors, missing assets, an unusable checkpoint, no landmark detector or an unwritable output folder
(nothing was done, no output folder created); 130 interrupted (Ctrl-C: the photo in progress is discarded,
the finished ones are kept; rerun with --skip-existing to continue). torch is imported inside the commands
so `deca-blender --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.commands.modes import MODES, ModeOptions, make_reconstructor
from core.errors import DecaError

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(DecaError, ValueError):
    """Options or inputs that cannot work (no photos, a bad number)."""


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
                   help="decoder samples per photo for the wrinkle model fit (default 12 on the shared per-checkpoint "
                        "basis, 56 when it runs per person)")
    p.add_argument("--wrinkle-components", type=int, default=16, metavar="K", help="wrinkle maps (default 16)")
    p.add_argument("--conventions", default="deca", choices=("deca", "continuous"),
                   help="crop convention for the DECA network (docs/CONVENTIONS.md): deca (default) is DECA's "
                        "released crop, continuous maps the face square onto [0, 224] with a box prefilter")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("reconstruct", help="photos of faces to result folders (mesh, textures, details, rig)",
                       description="Reconstruct every face photo (files or folders of photos) into a result "
                                   "folder per face: result.npz, mesh.obj/.mtl, albedo, texture, 16-bit "
                                   "displacement, detail normals and an overlay to check the fit.")
    r.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER")
    _common(r)
    r.add_argument("--all-faces", action="store_true", help="reconstruct every face (default: the largest)")
    add_skip_existing(r)
    r.add_argument("--mode", choices=MODES, default="deca",
                   help="deca: DECA's regressor (default); fit: fit FLAME to the photo without DECA's checkpoint; "
                        "deca+fit: the regressor, then the fit refines it")
    add_fit_options(r)
    r.set_defaults(func=cmd_reconstruct)

    a = sub.add_parser("animate", help="transfer expressions: one person's head with other photos' expressions",
                       description="DECA's animation: the identity photo's shape, detail code and texture with "
                                   "each expression photo's expression and jaw; detail maps re-decoded per frame.")
    a.add_argument("--identity", required=True, metavar="PHOTO", help="the person")
    a.add_argument("--expressions", required=True, nargs="+", metavar="PHOTO_OR_FOLDER",
                   help="photos whose expression and jaw are transferred (one frame each)")
    a.add_argument("--fast", action="store_true",
                   help="codes only: the identity's result folder once and every frame's FLAME codes in "
                        "expressions.npz (no per-frame folders, textures or wrinkle fits)")
    _common(a)
    a.set_defaults(func=cmd_animate, **FIT_DEFAULTS)  # animate is DECA only


def add_skip_existing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--skip-existing", action="store_true",
                   help="resume an interrupted batch: skip the photos whose result folders are already in --out")


FIT_DEFAULTS = {"same_person": False, "no_photometric": False, "iterations": None}
DECA_DEFAULTS = {"batch_size": 8, "bf16": False, "wrinkle_samples": None, "wrinkle_components": 16,
                 "conventions": "deca"}


def add_fit_options(p: argparse.ArgumentParser) -> None:
    """The fitting options (modes fit and deca+fit; `reconstruct --mode deca` ignores them)."""
    p.add_argument("--same-person", action="store_true",
                   help="the photos show one person: fit them together with one shared shape")
    p.add_argument("--no-photometric", action="store_true", help="landmark fitting only (skip stage 2)")
    p.add_argument("--iterations", type=int, default=None, metavar="N",
                   help="photometric iterations (default 60)")


def mode_options(args: argparse.Namespace) -> ModeOptions:
    """The `ModeOptions` of parsed `reconstruct`/`fit`/`animate` arguments (each parser sets every field:
    the options it does not offer take `FIT_DEFAULTS` / `DECA_DEFAULTS`)."""
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    return ModeOptions(device=args.device, landmarks=args.landmarks, home=args.home, bf16=args.bf16,
                       force=args.force, commercial=args.commercial,
                       conventions=args.conventions, wrinkle_samples=args.wrinkle_samples, wrinkle_components=args.wrinkle_components,
                       same_person=args.same_person, photometric=not args.no_photometric,
                       iterations=args.iterations)


def photos_and_output(inputs: list[str], out_dir: str, what: str = "photos") -> list[Path]:
    """The photos named by files/folders, after checking that ``out_dir`` can be used (it is created only
    once the models have loaded, so a run that fails before any work leaves no empty folder)."""
    from core.frontend.images import collect_photos
    from core.results.writing import probe_output_dir

    photos = collect_photos(inputs)
    if not photos:
        raise UsageError(f"no {what} found in " + ", ".join(inputs))
    probe_output_dir(out_dir)
    return photos


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


def _with_detector_process(options: ModeOptions, photos: list[Path]) -> ModeOptions:
    """``options`` with its detector in a child process that detects ``photos`` ahead while this process
    imports torch and loads the models (`core.frontend.detector_process`), when one helps."""
    from dataclasses import replace

    from core.frontend.detector_process import start_detector_process

    child = start_detector_process(options.landmarks, photos) if isinstance(options.landmarks, str) else None
    return options if child is None else replace(options, landmarks=child)


def _detector_ready(options: ModeOptions) -> None:
    """A detector the child process could not load fails here, after the models and before any work (as the
    in-process detector does in `make_reconstructor`)."""
    if not isinstance(options.landmarks, str):
        options.landmarks.warm_up()


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """`reconstruct` in any mode, and `fit` (which is `reconstruct` with the fit modes only)."""
    from core.results.writing import check_output_dir, finished_photos

    photos = photos_and_output(args.photos, args.out)
    skipped = 0
    if args.skip_existing:  # read before any model loads, so the detector process reads only the rest ahead
        done = finished_photos(args.out)
        todo = [p for p in photos if Path(p).resolve() not in done]
        skipped, photos = len(photos) - len(todo), todo
    options = mode_options(args)
    if args.mode == "deca":  # before torch is imported: the child detects while this process imports it
        options = _with_detector_process(options, photos)
    rec = make_reconstructor(args.mode, options)
    _detector_ready(options)
    out = check_output_dir(args.out)
    bar, update = _progress_bar(len(photos), enabled=len(photos) > 1 and not args.json)
    try:
        summary = rec.reconstruct_many(photos, out, batch_size=args.batch_size,
                                       all_faces=args.all_faces, progress=update, overwrite=args.overwrite)
    except KeyboardInterrupt:
        # the photo in progress was discarded (results are written to a temporary folder, then renamed)
        if bar is not None:
            bar.close()  # before the summary, so the summary is the last line
            bar = None
        n_done = len(finished_photos(out) & {Path(p).resolve() for p in photos})
        print(f"interrupted: {n_done} of {len(photos)} photo(s) finished in {out}; rerun with --skip-existing "
              "to do the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps({**summary.to_dict(), "skipped": skipped}, indent=2))
    else:
        for s in summary.succeeded:
            print(f"ok      {s.photo} (face {s.face_index}) -> {s.folder}")
        for f in summary.failed:
            face = f" (face {f.face_index})" if f.face_index is not None else ""
            print(f"failed  {f.photo}{face}: {f.message}", file=sys.stderr)
        note = "  [TEST model: results are for testing only]" if rec.face_assets.flame.is_test_model else ""
        skip = f"; {skipped} photo(s) skipped (already done)" if skipped else ""
        print(f"{len(summary.succeeded)} result folder(s) from {summary.n_photos} photo(s) in "
              f"{summary.seconds:.1f} s; {len(summary.failed)} failure(s){skip}{note}")
    return EXIT_OK if summary.ok else EXIT_SOME_FAILED


def cmd_animate(args: argparse.Namespace) -> int:
    from core.frontend import ImageReadError, NoFaceError

    expressions = photos_and_output(args.expressions, args.out, "expression photos")
    # the identity, then the frames: the order in which both animate paths detect them
    options = _with_detector_process(mode_options(args), [Path(args.identity), *expressions])
    rec = make_reconstructor("deca", options)
    _detector_ready(options)
    bar, update = _progress_bar(len(expressions), enabled=len(expressions) > 1 and not args.json)
    try:
        if getattr(args, "fast", False):
            from core.pipeline.expressions import animate_fast
            fast = animate_fast(rec, args.identity, expressions, args.out, overwrite=args.overwrite,
                                progress=update, batch_size=args.batch_size)
            print(json.dumps(fast.to_dict(), indent=2) if args.json else
                  f"{fast.n_frames} frame(s) in {fast.expressions}, identity {fast.identity_folder}; "
                  f"{len(fast.failed)} failure(s)")
            return EXIT_OK if not fast.failed else EXIT_SOME_FAILED
        summary = rec.animate(args.identity, expressions, args.out, overwrite=args.overwrite, progress=update,
                              batch_size=args.batch_size)
    except (ImageReadError, NoFaceError) as exc:
        print(f"error: the identity photo: {exc}", file=sys.stderr)
        return EXIT_SOME_FAILED
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
