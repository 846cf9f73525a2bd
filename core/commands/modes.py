"""The one place a reconstruction mode becomes a reconstructor: deca (DECA's regressor), fit (FLAME fitted to
the photo) or deca+fit (the regressor, refined by the fit).

The CLI (`reconstruct`, `fit`) and the Blender worker both call `make_reconstructor` and drive the result
through the `Reconstructor` protocol, so neither needs to know which mode it got. torch is imported inside
`make_reconstructor`, so importing this module stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Protocol, runtime_checkable

from core.errors import DecaError

if TYPE_CHECKING:
    from core.frontend.landmarks import LandmarkDetector
    from core.model.face_model import FaceAssets
    from core.pipeline.reconstruct import ReconstructionSummary

MODES = ("deca", "fit", "deca+fit")
Progress = Callable[[float, str], None]


class ModeError(DecaError, ValueError):
    """An unknown mode or options the mode cannot take."""


@dataclass(frozen=True)
class ModeOptions:
    """Everything a mode may need; each mode reads its own fields and ignores the rest."""

    device: str = "auto"
    landmarks: "str | LandmarkDetector" = "auto"  # a name for `get_detector`, or a detector to use as is
    home: str | None = None  # asset folder (None: $DECA_BLENDER_HOME or the user data folder)
    force: bool = False  # reconstruct faces below the landmark confidence threshold (with a warning)
    commercial: bool = False  # refuse components licensed for non-commercial use only
    # deca
    bf16: bool = False
    conventions: str = "deca"  # DECA's crop (deca) or ours (continuous): docs/CONVENTIONS.md
    wrinkle_samples: int | None = None
    wrinkle_components: int = 16
    # fit, deca+fit
    same_person: bool = False
    photometric: bool = True
    iterations: int | None = None


@runtime_checkable
class Reconstructor(Protocol):
    """Photos in, result folders out. `core.pipeline.reconstruct.Reconstructor` (deca) is one; `FitReconstructor`
    (fit, deca+fit) is the other."""

    mode: str
    face_assets: "FaceAssets"
    timings: dict  # stage name -> seconds since the last `reset_timings`

    @property
    def detector(self): ...  # the landmark detector, loaded on first use

    def reset_timings(self) -> None: ...

    def warm_up(self) -> None: ...  # load the detector and whatever else the first photo would wait for

    def reconstruct_photo(self, path: str | Path, out_dir: str | Path, all_faces: bool = False,
                          progress: Progress | None = None, overwrite: bool = False) -> list[Path]: ...

    def reconstruct_many(self, paths: Iterable[str | Path], out_dir: str | Path, batch_size: int = 8,
                         all_faces: bool = False, progress: Progress | None = None,
                         overwrite: bool = False) -> "ReconstructionSummary": ...


class FitReconstructor:
    """The `Fitter` (core.fitting) behind the `Reconstructor` protocol; failures become the same summary rows."""

    def __init__(self, fitter, same_person: bool = False) -> None:
        self.fitter = fitter
        self.mode = fitter.mode
        self.face_assets = fitter.face_assets
        self.same_person = same_person
        self.timings: dict = {}  # the fit's stage times are per face, in each result's extras

    @property
    def detector(self):
        return self.fitter.detector

    def reset_timings(self) -> None:
        self.timings = {}

    def warm_up(self) -> None:
        self.detector  # noqa: B018 - created on first use
        if self.fitter.reconstructor is not None:  # deca+fit fits DECA's wrinkle model too
            self.fitter.reconstructor.warm_up()

    def reconstruct_photo(self, path, out_dir, all_faces=False, progress=None, overwrite=False) -> list[Path]:
        return self.fitter.fit_photo(path, out_dir, all_faces=all_faces, overwrite=overwrite)

    def reconstruct_many(self, paths, out_dir, batch_size=8, all_faces=False, progress=None, overwrite=False):
        """`batch_size` is the regressor's; the fit runs face by face (or all together with `same_person`)."""
        from core.frontend.images import collect_photos
        from core.pipeline.reconstruct import FaceOutcome, PhotoFailure, ReconstructionSummary

        photos = collect_photos(paths)
        fs = self.fitter.fit_photos(photos, out_dir, same_person=self.same_person, all_faces=all_faces,
                                    overwrite=overwrite, progress=progress)
        return ReconstructionSummary(
            succeeded=[FaceOutcome(p, i, f) for p, i, f in fs.succeeded],
            failed=[PhotoFailure(f.photo, f.error, f.message) for f in fs.failed],
            n_photos=len(photos), seconds=fs.seconds)


def make_reconstructor(mode: str, options: ModeOptions = ModeOptions(), face_assets=None,
                       load_detector: bool = True) -> Reconstructor:
    """The reconstructor for `mode`. With ``load_detector`` its landmark detector is loaded now, so a missing
    detector fails here and not on the first photo (the worker skips it: decoding details needs none).

    Raises `ModeError` for an unknown mode or bad options, and the assets' own `DecaError`s (missing or
    damaged files, no CUDA)."""
    if mode not in MODES:
        raise ModeError(f"unknown reconstruction mode {mode!r}: use one of {', '.join(MODES)}")
    from core.assets import AssetManager

    manager = None if face_assets is not None else (AssetManager(options.home) if options.home else AssetManager())
    landmarks = options.landmarks
    if options.commercial and manager is not None:
        from core.assets.licences import FIT_ASSETS, RECONSTRUCT_ASSETS, require_commercial
        from core.frontend import get_detector
        from core.pipeline.reconstruct import resolve_device

        # The detector is built once, here, and handed on: its licence is checked before any model loads.
        if isinstance(landmarks, str):
            landmarks = get_detector(options.landmarks, device=str(resolve_device(options.device)))
        require_commercial(manager, FIT_ASSETS if mode == "fit" else RECONSTRUCT_ASSETS, landmarks.name)
    if mode == "deca":
        from core.pipeline.reconstruct import Reconstructor as DecaReconstructor

        rec = DecaReconstructor(manager, face_assets=face_assets, device=options.device, landmarks=landmarks,
                                wrinkle_components=options.wrinkle_components,
                                wrinkle_samples=options.wrinkle_samples,
                                bf16=options.bf16, conventions=options.conventions, force=options.force)
    else:
        from core.fitting.fitter import Fitter
        from core.fitting.photometric_fit import PhotometricFitConfig

        pcfg = PhotometricFitConfig()
        if options.iterations is not None:
            if options.iterations < 0:
                raise ModeError("--iterations must be >= 0")
            pcfg.iterations = options.iterations
        rec = FitReconstructor(Fitter(manager, face_assets=face_assets, device=options.device,
                                      landmarks=landmarks, mode=mode, photometric_config=pcfg,
                                      photometric=options.photometric, force=options.force), same_person=options.same_person)
    if load_detector:
        rec.detector  # noqa: B018 - a missing detector is not a per-photo failure
    return rec
