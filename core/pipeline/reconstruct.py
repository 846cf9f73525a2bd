"""From photos to result folders: DECA's inference, decoding, textures, details, the wrinkle model.

    rec = Reconstructor()                       # assets from the asset manager, device 'auto'
    folders = rec.reconstruct_photo("me.jpg", "out/")
    summary = rec.reconstruct_many(["photos/"], "out/", batch_size=8)
    d = rec.decode_displacement(ReconstructionResult.load(folders[0]), exp, jaw)   # exact decoder
    rec.animate("me.jpg", ["smile.jpg", "surprise.jpg"], "anim/")

Per face (docs/CONVENTIONS.md has every key and convention):

1. the photo is read upright (EXIF), 68 landmarks are detected (FAN or dlib), DECA's crop maps the face
   square onto the 224x224 network input (``conventions="deca"``, default: exactly DECA's released crop;
   ``"continuous"``: ours, CONVENTIONS.md "Crop");
2. ``E_flame``/``E_detail`` run batched across photos (``torch.inference_mode``, eval, batch norms folded,
   channels_last on the CPU; bfloat16 autocast only when asked: it is off by default until checked on the
   real weights);
3. FLAME gives the posed mesh and the landmarks, projected by the orthographic camera into the crop's
   image NDC, then to crop pixels ``(p + 1) * 224 / 2`` (+ 0.5 for DECA's crop) and onto the photo by the
   crop's inverse (`network_ndc_to_photo_pixels`);
4. ``D_detail(jaw, exp, detail)`` gives ``uv_z``; the stored displacement is ``uv_z * uv_face_eye_mask +
   fixed`` and the detail normals come from it (FaceModel, DECA's ``displacement2normal``); DECA's own
   unmasked ``displacement_map = uv_z + fixed`` is stored too (``extra_displacement_map``);
5. ``texture.png`` is the photo unwrapped into UV (see `core.pipeline.textures`); ``albedo.png`` is FLAME's
   texture-space albedo when that optional asset is installed, else the same image as ``texture.png``
   (``extra_albedo_source`` says which);
6. the wrinkle model is fitted (`core.pipeline.wrinkles`);
7. the folder is written to a temporary sibling and renamed into place.

``detail_normals.png`` holds the detail normals in the head's object frame (the head's global rotation
removed, so they match the un-rotated rig Blender builds), encoded ``n * 0.5 + 0.5``. ``overlay.png`` is
drawn in the texture crop (the network crop's square enlarged 1.5x, 224 to 640 px): a grey render shaded with the
detail normals under a fixed light, blended over the photo, the projected landmarks in red and the
detected ones in green.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from core.assets import AssetManager
from core.atomic import atomic_write_bytes
from core.errors import DecaError
from core.flame.layer import FlameOutput
from core.frontend import (CropTransform, LandmarkDetector, crop_from_landmarks,
                           detect_faces, get_detector, read_image, warp_image, warp_images)
from core.frontend.crop import check_convention
from core.frontend.images import collect_photos
from core.frontend.confidence import check_detection
from core.frontend.landmarks import FaceDetection
from core.networks import DecaNetworks, FlameCodes
from core.networks.cache import load_inference_networks
from core.model.face_model import FaceAssets, FaceModel
from core.pipeline import overlay
from core.networks.runtime import PersonDecoder, inference_networks
from core.pipeline import textures as tx
from core.pipeline import wrinkle_cache as wc
from core.pipeline import wrinkles as wr
from core.results import encodings as enc
from core.results import writing
from core.results.result import ReconstructionResult, ResultError, WrinkleModel
from core.results.rig import build_rig
from core.results.writing import FaceImages
from core import sizes
from core.sizes import N_DETAIL, N_EXP, N_JAW, N_TEX

__all__ = [
    "Reconstructor", "ReconstructionSummary", "FaceOutcome", "PhotoFailure", "AnimationSummary",
    "network_ndc_to_photo_pixels", "resolve_device", "OUTPUT_FILES",
    "OutputDirError",
]

OUTPUT_FILES = ("result.npz", "mesh.obj", "mesh.mtl", "albedo.png", "texture.png", "displacement.png",
                "detail_normals.png", "overlay.png")
NETWORK_SIZE = 224
TEXTURE_SIZE = sizes.TEXTURE_SIZE
WRINKLE_DECODE_BATCH = 16
OutputDirError = writing.OutputDirError

Progress = Callable[[float, str], None]


# ---------------------------------------------------------------------------------------------- helpers

class DeviceError(DecaError, ValueError):
    """The device asked for is not there (e.g. CUDA on a machine without it)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' = CUDA when available, else the CPU. A CUDA request without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device here (use auto or cpu)")
    return dev


def network_ndc_to_photo_pixels(points_ndc, crop: CropTransform) -> np.ndarray:
    """Points in the network crop's image NDC (``(..., 2)``, x right, y down) -> photo pixels (float64).

    Crop pixels are ``(p + 1) * size / 2`` (+ 0.5 for DECA's crop, whose NDC pixels are indices;
    CONVENTIONS.md), then the crop's inverse similarity."""
    if isinstance(points_ndc, torch.Tensor):
        points_ndc = points_ndc.detach().cpu().double().numpy()
    p = np.asarray(points_ndc, np.float64)
    return crop.apply_inverse(crop.ndc_to_pixels(p))


@dataclass
class FaceOutcome:
    photo: str
    face_index: int
    folder: str


@dataclass
class PhotoFailure:
    photo: str
    error_type: str
    message: str
    face_index: int | None = None


@dataclass
class ReconstructionSummary:
    """What a batch produced: every result folder, every photo (or face) that failed and why."""

    succeeded: list[FaceOutcome] = field(default_factory=list)
    failed: list[PhotoFailure] = field(default_factory=list)
    n_photos: int = 0
    seconds: float = 0.0

    @property
    def folders(self) -> list[Path]:
        return [Path(s.folder) for s in self.succeeded]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict:
        return {"n_photos": self.n_photos, "n_faces": len(self.succeeded), "n_failed": len(self.failed),
                "seconds": round(self.seconds, 3), "succeeded": [asdict(s) for s in self.succeeded],
                "failed": [asdict(f) for f in self.failed]}


@dataclass
class AnimationSummary:
    """`Reconstructor.animate`: one result folder per expression photo that worked (in order)."""

    identity: str
    frames: list[dict] = field(default_factory=list)  # {"folder", "expression_source", "index"}
    failed: list[PhotoFailure] = field(default_factory=list)
    manifest: str | None = None

    @property
    def folders(self) -> list[Path]:
        return [Path(f["folder"]) for f in self.frames]

    def to_dict(self) -> dict:
        return {"identity": self.identity, "frames": self.frames, "failed": [asdict(f) for f in self.failed],
                "manifest": self.manifest}


@dataclass
class DecodedFace:
    """Everything `_decode_face` computes for one face besides its codes (tensors batch 1, on the device)."""

    geom: FlameOutput  # vertices (1, V, 3), landmarks2d/3d
    pose: torch.Tensor  # (1, 6) with the jaw used
    exp: torch.Tensor  # (1, N_EXP) the expression used
    landmarks2d: np.ndarray  # (68, 2) projected model landmarks, photo pixels
    displacement: np.ndarray  # (256, 256) metres along the normal, masked uv_z + fixed (what the rig uses)
    displacement_map: np.ndarray  # (256, 256) DECA's unmasked uv_z + fixed
    texture: torch.Tensor  # (1, 3, 512, 512) the photo unwrapped
    albedo: torch.Tensor  # (1, 3, 512, 512); `texture` itself when there is no texture space
    albedo_source: str  # texture_space | photo_texture
    images: FaceImages  # what the result folder stores besides result.npz
    texture_crop_size: int
    wrinkles: tuple[WrinkleModel, wr.WrinkleFitInfo]


@dataclass
class _Photo:
    path: Path
    image: np.ndarray  # (H, W, 3) uint8 (8-bit photos) or float32 in [0, 1]
    detections: list[FaceDetection]
    crops: list[CropTransform]
    stem: str | None = None


@dataclass
class _Face:
    photo: _Photo
    index: int
    codes: FlameCodes  # (1, ...) on the device
    detail: torch.Tensor  # (1, 128)
    uv_z: torch.Tensor  # (1, 1, 256, 256)

    @property
    def detection(self) -> FaceDetection:
        return self.photo.detections[self.index]

    @property
    def crop(self) -> CropTransform:
        return self.photo.crops[self.index]


def _error_message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _in_background(fn: Callable[[], object], name: str) -> Future:
    """``fn()`` on a daemon thread; the returned future holds its result or its exception (a daemon: a
    `Reconstructor` dropped before its detector was used does not hold up the interpreter's exit)."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


# ---------------------------------------------------------------------------------------------- main

class Reconstructor:
    """DECA's inference from photos to result folders.

    Args:
        assets: the asset manager to load FLAME, DECA's data and the checkpoint from (default: the
            user's). Missing assets raise `MissingAssetError` listing all of them; a checkpoint of another
            architecture raises `CheckpointError`.
        device: 'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'.
        landmarks: 'auto', 'mediapipe', 'fan', 'dlib', or a `LandmarkDetector` instance. The detector is created on first
            use (`detector`), so `decode_displacement` works without one.
        face_assets, networks: injected instead of loaded (tests, training).
        wrinkle_components: K maps of the wrinkle model.
        wrinkle_fit: "shared" (default): a basis shared per checkpoint, cached on disk
            (`core.pipeline.wrinkle_cache`), and only a base map fitted per person; when the cache folder
            cannot be written, the per-person fit runs instead (said in the result's ``wrinkle_fit_note``).
            "person": the per-person reduced-rank regression (`core.pipeline.wrinkles.fit_wrinkle_model`).
        wrinkle_samples, wrinkle_holdout: decoder samples to fit / to measure the held-out explained
            variance (None: 12 + 0 for the shared fit, whose 0 means leave-one-out over the 12, and
            56 + 16 for the per-person one; see
            `core.pipeline.wrinkles`).
        bf16: bfloat16 autocast for the two encoders (off by default: not yet checked on DECA's released
            weights). The detail decoder always runs in float32.
        profile: synchronise the device at stage boundaries so `timings` are exact on CUDA.
        force: reconstruct faces whose landmark confidence is below the threshold (with a warning)
            instead of failing them with `LowConfidenceError` (core/frontend/confidence.py).
        prefetch_detector: create the detector named by ``landmarks`` on a background thread while the
            checkpoint and the face model load (a cold start's first photo otherwise waits for it: the
            MediaPipe import and models, 0.2-0.4 s here); an error creating it is raised at first use, as
            without prefetching. False when no photo will be read (decoding only): no detector is made.
    """

    mode = "deca"  # core.commands.modes.Reconstructor: the fit modes are core.commands.modes.FitReconstructor

    def __init__(self, assets: AssetManager | None = None, device: str | torch.device = "auto",
                 landmarks: str | LandmarkDetector = "auto", face_assets: FaceAssets | None = None,
                 networks: DecaNetworks | None = None, wrinkle_components: int = wr.DEFAULT_COMPONENTS, *,
                 wrinkle_samples: int | None = None, wrinkle_holdout: int | None = None,
                 wrinkle_fit: str = "shared",
                 bf16: bool = False, profile: bool = False, conventions: str = "deca",
                 force: bool = False, prefetch_detector: bool = True) -> None:
        self.device = resolve_device(device)
        self.conventions = check_convention(conventions)  # "deca" (DECA's crop) or "continuous"
        self.force = bool(force)  # reconstruct faces below the landmark confidence threshold (a warning)
        self.manager = assets
        if face_assets is None or networks is None:
            self.manager = assets if assets is not None else AssetManager()
            needed = []
            if face_assets is None:
                from core.assets import catalog
                needed += ["flame_model"] + [s.name for s in catalog.DATA_FILES]
            if networks is None:
                needed.append("deca_model")
            self.manager.require(*needed)  # one MissingAssetError listing everything missing
        self._landmarks = landmarks
        self._detector: LandmarkDetector | None = landmarks if isinstance(landmarks, LandmarkDetector) else None
        self._detector_future: Future | None = None
        if self._detector is None and prefetch_detector:
            # while this thread reads the checkpoint and folds the networks (torch releases the GIL in its
            # kernels and file reads), the other imports, loads and warms up the detector
            def make_detector() -> LandmarkDetector:
                detector = get_detector(str(landmarks), device=str(self.device))
                detector.warm_up()
                return detector

            self._detector_future = _in_background(make_detector, "deca-detector-load")
        if face_assets is None:
            face_assets = FaceAssets.from_manager(self.manager)
        self.face_assets = face_assets
        # batch norms folded, channels_last on the CPU: equal to the eager networks within float rounding
        # (tests/test_networks_runtime.py); forward 1.3-1.6x faster (benchmarks/bench_targets.py). The
        # installed checkpoint's folded form is mapped from the cache after the first run (bit-identical,
        # tests/test_networks_cache.py; 0.16 s against 0.65 s for loading and folding).
        if networks is None:
            self.networks = load_inference_networks(self.manager.path("deca_model"), self.device)
        else:
            self.networks = inference_networks(networks, self.device)
        self.face_model = FaceModel(face_assets).to(self.device).eval()
        self.wrinkle_components = int(wrinkle_components)
        if wrinkle_fit not in ("shared", "person"):
            raise ValueError(f"wrinkle_fit must be 'shared' or 'person', got {wrinkle_fit!r}")
        self.wrinkle_fit = wrinkle_fit
        # None: the default of the fit that runs (the per-person fallback keeps its own defaults)
        self._wrinkle_samples = None if wrinkle_samples is None else int(wrinkle_samples)
        self._wrinkle_holdout = None if wrinkle_holdout is None else int(wrinkle_holdout)
        self._wrinkle_shared: tuple[wr.SharedWrinkleBasis | None, str] | None = None
        self.bf16 = bool(bf16)
        self.profile = bool(profile)
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}
        self._flame_description: str | None = None
        t = face_assets.template
        self._uv_coords = np.asarray(t.uv_coords, np.float64)
        self._uv_faces = np.asarray(t.uv_faces, np.int64)
        self._faces = np.asarray(face_assets.flame.faces, np.int64)
        self._detail_mask = self.face_model.uv_face_eye_mask[0, 0].detach().cpu().numpy() > 0

    # ------------------------------------------------------------------ properties

    @property
    def detector(self) -> LandmarkDetector:
        """The landmark detector (created on first use; raises `DetectorUnavailableError`)."""
        if self._detector is None:
            future, self._detector_future = self._detector_future, None
            if future is not None:  # prefetched: wait for it; its error (if any) is raised here, at first use
                self._detector = future.result()
            else:
                self._detector = get_detector(str(self._landmarks), device=str(self.device))
        return self._detector

    def warm_up(self) -> None:
        """Load what the first photo would otherwise wait for: the landmark detector and, with the shared
        wrinkle fit, the checkpoint's wrinkle basis (read from the cache, or built and cached once: several
        seconds). The Blender worker calls it while the user picks a photo."""
        self.detector  # noqa: B018 - created on first use
        if self.wrinkle_fit == "shared":
            self.shared_wrinkle_basis()

    @property
    def flame_description(self) -> str:
        """Which FLAME file produced the results: variant, file name and sha256."""
        if self._flame_description is None:
            fl = self.face_assets.flame
            digest = None
            if self.manager is not None:
                with contextlib.suppress(Exception):
                    rec = self.manager.registry().get("flame_model") or {}
                    if Path(fl.source) == self.manager.path("flame_model"):
                        digest = rec.get("sha256")
            if digest is None and fl.source and Path(fl.source).is_file():
                from core.flame.model_file import file_sha256
                digest = file_sha256(fl.source)
            name = Path(fl.source).name if fl.source else "in-memory"
            label = "deca-blender TEST model (synthetic, not FLAME)" if fl.is_test_model else fl.variant
            self._flame_description = f"{label}: {name} sha256:{digest or 'unknown'}"
        return self._flame_description

    # ------------------------------------------------------------------ timing

    @contextlib.contextmanager
    def _stage(self, name: str):
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            if self.profile and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
            self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + time.process_time() - c0

    def reset_timings(self) -> None:
        """Clear `timings` (wall seconds per stage) and `cpu_timings` (process CPU seconds, all threads)."""
        self.timings = {}
        self.cpu_timings = {}

    # ------------------------------------------------------------------ stages

    def _prepare(self, path: str | Path, all_faces: bool) -> _Photo:
        """Read, detect, crop. Raises ImageReadError / NoFaceError naming the photo."""
        with self._stage("decode photo"):
            image = read_image(path, keep_uint8=True)  # uint8 when exact: detectors and crops take it as is
        with self._stage("landmarks"):
            dets = detect_faces(image, self.detector, all_faces=all_faces, source=path)
            for d in dets:  # LowConfidenceError (a per-photo failure) or warnings kept in the result
                check_detection(d, force=self.force, source=str(path))
        with self._stage("crop"):
            crops = [crop_from_landmarks(d.landmarks, size=NETWORK_SIZE, convention=self.conventions) for d in dets]
        return _Photo(Path(path), image, dets, crops)

    def _network_inputs(self, photos: Sequence[_Photo]) -> torch.Tensor:
        with self._stage("crop"):
            batch = torch.cat([warp_images(p.image, p.crops) for p in photos])
        return batch

    def _forward(self, images: torch.Tensor) -> tuple[FlameCodes, torch.Tensor, torch.Tensor]:
        with self._stage("networks"):
            x = images.to(self.device, torch.float32)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.networks.infer(x, bf16=self.bf16)
            uv_z = out.displacement
            if self.bf16:  # bf16 for the encoders only: the detail decoder always runs in float32
                uv_z = self._decode_uv_z(out.codes.jaw_pose, out.codes.exp, out.detail)
        return out.codes, out.detail, uv_z

    def _decode_uv_z(self, jaw: torch.Tensor, exp: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        """D_detail in float32, always: in bfloat16 the expression-driven part of the map, which is small
        next to the person's static detail, drowns in rounding (measured with random weights: the wrinkle
        model's held-out explained variance fell from 0.72 to 0.56), and this is the "exact" decoder."""
        with torch.inference_mode():
            out = self.networks.D_detail.decode(jaw.float(), exp.float(), detail.float())
        return out.float()

    def _wrinkle_decoder(self, detail: torch.Tensor) -> Callable[[np.ndarray], np.ndarray]:
        # D_detail with the detail code's part of l1 computed once (tests/test_networks_runtime.py)
        person = PersonDecoder(self.networks.D_detail, detail.float())

        def decode(x: np.ndarray) -> np.ndarray:
            xt = torch.as_tensor(x, dtype=torch.float32, device=self.device)
            maps = []
            with torch.inference_mode():
                for i in range(0, len(xt), WRINKLE_DECODE_BATCH):
                    b = xt[i:i + WRINKLE_DECODE_BATCH]
                    maps.append(self.face_model.displacement(person(b[:, N_EXP:], b[:, :N_EXP]))[:, 0])
            return torch.cat(maps).cpu().numpy()
        return decode

    @property
    def wrinkle_samples(self) -> int:
        """Decoder samples of the per-person fit (the shared fit's default is `wr.SHARED_SAMPLES`)."""
        return wr.DEFAULT_SAMPLES if self._wrinkle_samples is None else self._wrinkle_samples

    @property
    def wrinkle_holdout(self) -> int:
        return wr.DEFAULT_HOLDOUT if self._wrinkle_holdout is None else self._wrinkle_holdout

    def fit_wrinkles(self, detail: torch.Tensor) -> tuple[WrinkleModel, wr.WrinkleFitInfo]:
        """The wrinkle model for a detail code (1, 128) on the device (`wrinkle_fit`)."""
        note = ""
        if self.wrinkle_fit == "shared":
            basis, note = self.shared_wrinkle_basis()
            if basis is not None:
                return wr.fit_on_shared(
                    self._wrinkle_decoder(detail), self._detail_mask, basis,
                    n_samples=wr.SHARED_SAMPLES if self._wrinkle_samples is None else self._wrinkle_samples,
                    n_holdout=wr.SHARED_HOLDOUT if self._wrinkle_holdout is None else self._wrinkle_holdout,
                    note=note)
        model, info = wr.fit_wrinkle_model(self._wrinkle_decoder(detail), self._detail_mask,
                                           n_samples=self.wrinkle_samples, n_holdout=self.wrinkle_holdout,
                                           n_components=self.wrinkle_components)
        info.note = note  # why the shared fit did not run (empty when "person" was asked for)
        return model, info

    def _wrinkle_cache_key(self) -> str:
        """Everything the shared basis depends on: D_detail, E_detail (sampled), the face model (its mask,
        fixed displacement and the renders of the synthetic codes), the crop convention, the settings."""
        nets = self.networks
        return wc.cache_key([
            wc.tensor_fingerprint(nets.D_detail.state_dict()),
            wc.tensor_fingerprint(nets.E_detail.state_dict(), stride=wc.ENCODER_STRIDE),
            wc.tensor_fingerprint(self.face_model.state_dict()),
            f"convention={self.conventions};K={self.wrinkle_components};codes={wr.SHARED_CODES};"
            f"per_code={wr.SHARED_CODE_SAMPLES};seed={wr.SHARED_SEED};synthetic_seed={wc.SYNTHETIC_SEED};"
            f"prior={wr.PRIOR_DESCRIPTION};ridge={wr.RIDGE};grid={wr.RIDGE_GRID.tolist()}",
        ])

    def _build_shared_wrinkle_basis(self) -> tuple[wr.SharedWrinkleBasis, np.ndarray]:
        """The shared basis from scratch: detail codes of synthetic renders, one orthogonal block each."""
        def infer_detail(images: torch.Tensor) -> np.ndarray:
            x = images.to(self.device, torch.float32)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            return self.networks.E_detail(x).float().cpu().numpy()

        codes = wc.synthetic_detail_codes(self.face_model, infer_detail, wr.SHARED_CODES, self.conventions)
        idx = np.flatnonzero(self._detail_mask.ravel())
        rng = np.random.default_rng(wr.SHARED_SEED)
        X_list, Y_list = [], []
        for code in codes:
            X = wr.sample_prior(wr.SHARED_CODE_SAMPLES, rng, "orthogonal")
            D = self._wrinkle_decoder(torch.as_tensor(code, device=self.device)[None])(X.astype(np.float32))
            X_list.append(X)
            Y_list.append(D.reshape(len(X), -1)[:, idx])
        return wr.fit_shared_basis(X_list, Y_list, self.wrinkle_components), codes

    def shared_wrinkle_basis(self) -> tuple[wr.SharedWrinkleBasis | None, str]:
        """The checkpoint's shared wrinkle basis and a note on how it was obtained: loaded from the cache,
        else built and cached; None (and why) when the cache folder cannot be written. Once per instance."""
        if self._wrinkle_shared is None:  # timed within the "wrinkle model" stage of the first photo
            self._wrinkle_shared = self._load_or_build_shared_basis()
        return self._wrinkle_shared

    def _load_or_build_shared_basis(self) -> tuple[wr.SharedWrinkleBasis | None, str]:
        key = self._wrinkle_cache_key()
        path = wc.cache_path(key)
        basis = wc.load_basis(path, key, self._detail_mask, self.wrinkle_components)
        if basis is not None:
            return basis, f"shared basis from the cache {path}"
        problem = wc.unwritable_reason(path.parent)
        if problem is not None:
            warnings.warn(f"{problem}: the wrinkle model is fitted per person (slower); set "
                          f"{wc.CACHE_ENV} to a writable folder", wc.WrinkleCacheWarning, stacklevel=3)
            return None, f"per-person fit: {problem}"
        basis, codes = self._build_shared_wrinkle_basis()
        try:
            wc.save_basis(path, key, basis, self._detail_mask, codes)
        except OSError as e:  # built already: use it in this process
            warnings.warn(f"could not write the wrinkle cache {path}: {e}", wc.WrinkleCacheWarning, stacklevel=3)
            return basis, f"shared basis built in this process (not cached: {e})"
        return basis, f"shared basis built and cached in {path}"

    def _texture_crop(self, photo: _Photo, crop: CropTransform) -> tuple[CropTransform, torch.Tensor, torch.Tensor]:
        tcrop = tx.texture_crop(crop.ndc_frame())  # the frame the camera's NDC maps into exactly
        img = warp_image(photo.image, tcrop)[None].to(self.device)
        inside = tx.inside_photo_mask(tcrop, photo.image.shape[:2])
        return tcrop, img, torch.as_tensor(inside, device=self.device)[None, None]

    def _decode_face(self, face: _Face, exp: torch.Tensor | None = None, jaw: torch.Tensor | None = None,
                     texture: tuple[torch.Tensor, torch.Tensor] | None = None,
                     wrinkles: tuple[WrinkleModel, wr.WrinkleFitInfo] | None = None) -> DecodedFace:
        """Everything a result folder holds, for one face (optionally with another expression and jaw)."""
        fm = self.face_model
        c = face.codes
        exp = c.exp if exp is None else exp
        pose = c.pose if jaw is None else torch.cat([c.pose[:, :3], jaw], 1)
        crop = face.crop
        with torch.inference_mode():
            with self._stage("FLAME"):
                geom = fm.geometry(c.shape, exp, pose, c.cam)
                lmk_photo = network_ndc_to_photo_pixels(geom.landmarks2d[0], crop)
            with self._stage("detail"):
                uv_z = face.uv_z if (exp is c.exp and jaw is None) else self._decode_uv_z(pose[:, 3:], exp, face.detail)
                disp = fm.displacement(uv_z)
                normals, _ = fm.detail_normals(geom.vertices, uv_z)
                normals_object = overlay.object_frame_normals(normals, pose[:, :3])
            with self._stage("texture"):
                tcrop, crop_img, inside = self._texture_crop(face.photo, crop)
                tcam = tx.texture_crop_camera(c.cam)
                if texture is None:
                    tex_img, _ = tx.photo_texture(fm, crop_img, inside, geom.vertices, tcam, size=TEXTURE_SIZE)
                    if fm.has_texture_space:
                        albedo_img, albedo_source = fm.albedo(c.tex), "texture_space"
                        if albedo_img.shape[-1] != TEXTURE_SIZE:
                            albedo_img = torch.nn.functional.interpolate(
                                albedo_img, size=(TEXTURE_SIZE, TEXTURE_SIZE), mode="bilinear", align_corners=False)
                    else:
                        albedo_img, albedo_source = tex_img, "photo_texture"
                    texture = (tex_img, albedo_img)
                else:
                    albedo_source = "texture_space" if fm.has_texture_space else "photo_texture"
                tex_img, albedo_img = texture
            with self._stage("render"):
                overlay_np = overlay.render_overlay(fm, geom.vertices, tcam, normals, crop_img, tcrop,
                                                    face.detection.landmarks, lmk_photo)
            tex_np = tx.to_hwc(tex_img)
            images = FaceImages(texture=tex_np, albedo=tex_np if albedo_img is tex_img else tx.to_hwc(albedo_img),
                                detail_normals=tx.to_hwc(normals_object), overlay=overlay_np)
        if wrinkles is None:
            with self._stage("wrinkle model"):
                wrinkles = self.fit_wrinkles(face.detail)
        return DecodedFace(geom=geom, pose=pose, exp=exp, landmarks2d=lmk_photo,
                           displacement=disp[0, 0].cpu().numpy(),
                           # DECA's output `displacement_map`: uv_z + fixed, unmasked (`displacement` drives the rig)
                           displacement_map=(uv_z + fm.fixed_displacement)[0, 0].float().cpu().numpy(),
                           texture=tex_img, albedo=albedo_img,
                           albedo_source=albedo_source, images=images, texture_crop_size=tcrop.size,
                           wrinkles=wrinkles)

    def _result(self, face: _Face, dec: DecodedFace, extra: dict | None = None, rig=None) -> ReconstructionResult:
        c = face.codes

        def np1(t: torch.Tensor) -> np.ndarray:
            return t[0].detach().float().cpu().numpy()

        geom = dec.geom
        shape = np1(c.shape)
        rig = build_rig(self.face_assets.flame, shape, n_expression=N_EXP) if rig is None else rig
        model, info = dec.wrinkles
        disp = dec.displacement
        tex_code = np1(c.tex) if self.face_model.has_texture_space else np.zeros(N_TEX, np.float32)
        h, w = face.photo.image.shape[:2]
        extra_all = {
            "albedo_source": np.str_(dec.albedo_source),
            "detector": np.str_(face.detection.detector),
            "texture_crop_size": np.int64(dec.texture_crop_size),
            "faces_in_photo": np.int64(len(face.photo.crops)),  # lets a rerun tell a finished photo
            "wrinkle_samples": np.int64(info.n_samples), "wrinkle_holdout": np.int64(info.n_holdout),
            "wrinkle_rank": np.int64(info.rank),
            "wrinkle_train_explained_variance": np.float64(info.train_explained_variance),
            "wrinkle_ridge": np.float64(info.ridge),
            "wrinkle_fit": np.str_(info.method),  # "shared" (per-checkpoint basis + per-person base) or "person"
            "wrinkle_fit_note": np.str_(info.note),
            "wrinkle_shared_codes": np.int64(info.shared_codes),
            "wrinkle_shared_samples": np.int64(info.shared_samples),
            "wrinkle_prior": np.str_(wr.PRIOR_DESCRIPTION),
            "bf16": np.bool_(self.bf16),
            "crop_convention": np.str_(face.crop.convention),
            "displacement_map": dec.displacement_map,
            **face.detection.record(),
            **(extra or {}),
        }
        return ReconstructionResult(
            source_image=str(face.photo.path), image_size=np.array([h, w], np.int64), face_index=int(face.index),
            shape=shape, exp=np1(dec.exp), pose=np1(dec.pose), cam=np1(c.cam), tex=tex_code,
            light=np1(c.light), detail=np1(face.detail),
            vertices=np1(geom.vertices), landmarks2d=dec.landmarks2d, landmarks3d=np1(geom.landmarks3d),
            detected_landmarks=face.detection.landmarks.copy(), crop_matrix=face.crop.matrix.copy(),
            faces=self._faces, uv_coords=self._uv_coords, uv_faces=self._uv_faces,
            rig_template=rig.template, rig_expr_basis=rig.expr_basis, rig_posedirs=rig.posedirs,
            rig_weights=rig.weights, rig_joints=rig.joints, rig_parents=rig.parents, rig_shape_basis=rig.shape_basis,
            displacement=disp, displacement_scale=enc.displacement_scale(disp), wrinkles=model,
            flame_model=self.flame_description, is_test_model=bool(self.face_assets.flame.is_test_model),
            extra=extra_all,
        )

    def _write(self, result: ReconstructionResult, dec: DecodedFace, out_dir: Path, name: str,
               overwrite: bool) -> Path:
        with self._stage("writing"):
            return writing.write_result_folder(result, dec.images, out_dir, name, overwrite)

    # ------------------------------------------------------------------ public API

    def reconstruct_photo(self, path: str | Path, out_dir: str | Path, all_faces: bool = False,
                          progress: Progress | None = None, overwrite: bool = False,
                          on_fields: Callable[[str, str, dict], None] | None = None) -> list[Path]:
        """Reconstruct one photo: one result folder per face (``<out>/<stem>``, ``<stem>_face1``, ...).

        Raises `ImageReadError`, `NoFaceError` (or any other failure) for this photo, `OutputDirError`
        when ``out_dir`` cannot be written. Existing folders are kept (a new name is chosen) unless
        ``overwrite``. ``on_fields(folder_name, part, fields)``, when given, is called for each face with
        result fields as soon as they are known: part "rig" once its codes and rig exist, before its detail,
        textures and wrinkle model (`early_fields`), then part "wrinkles" (the wrinkle model and the
        displacement) before its folder is written. The Blender worker sends them ahead so that the scene is
        built meanwhile."""
        out = writing.check_output_dir(out_dir)
        if progress:
            progress(0.0, f"reading {Path(path).name}")
        photo = self._prepare(path, all_faces)
        photo.stem = writing.pick_base_stem(out, writing.safe_stem(photo.path.stem), len(photo.crops), overwrite, set())
        if progress:
            progress(0.2, "running the networks")
        codes, detail, uv_z = self._forward(self._network_inputs([photo]))
        folders = []
        n = len(photo.crops)
        for i in range(n):
            face = _Face(photo, i, _slice_codes(codes, i), detail[i:i + 1], uv_z[i:i + 1])
            if progress:
                progress(0.3 + 0.7 * i / n, f"decoding face {i + 1} of {n}")
            folders.append(self._finish(face, out, overwrite, on_fields))
        if progress:
            progress(1.0, "done")
        return folders

    def _finish(self, face: _Face, out: Path, overwrite: bool,
                on_fields: Callable[[str, str, dict], None] | None = None) -> Path:
        name = writing.folder_name(face.photo.stem, face.index)
        rig = None
        if on_fields is not None:
            fields, rig = self.early_fields(face)
            on_fields(name, "rig", fields)
        dec = self._decode_face(face)
        result = self._result(face, dec, rig=rig)
        if on_fields is not None:
            wr_model = result.wrinkles
            on_fields(name, "wrinkles", {"wrinkle_base": wr_model.base, "wrinkle_maps": wr_model.maps,
                                         "wrinkle_matrix": wr_model.matrix, "displacement": result.displacement})
        return self._write(result, dec, out, name, overwrite)

    def early_fields(self, face: _Face) -> tuple[dict, object]:
        """The `ReconstructionResult` fields a face's rigged mesh is built from, known once the networks
        ran (the very values `_result` stores: same codes, the same `build_rig`), and that rig."""
        c = face.codes

        def np1(t: torch.Tensor) -> np.ndarray:
            return t[0].detach().float().cpu().numpy()

        rig = build_rig(self.face_assets.flame, np1(c.shape), n_expression=N_EXP)
        h, w = face.photo.image.shape[:2]
        fields = {
            "source_image": str(face.photo.path), "image_size": np.array([h, w], np.int64),
            "face_index": int(face.index), "exp": np1(c.exp), "pose": np1(c.pose), "cam": np1(c.cam),
            "crop_matrix": face.crop.matrix.copy(), "faces": self._faces, "uv_coords": self._uv_coords,
            "uv_faces": self._uv_faces, "rig_template": rig.template, "rig_expr_basis": rig.expr_basis,
            "rig_posedirs": rig.posedirs, "rig_weights": rig.weights, "rig_joints": rig.joints,
            "rig_parents": rig.parents, "rig_shape_basis": rig.shape_basis,
            "is_test_model": bool(self.face_assets.flame.is_test_model),
        }
        return fields, rig

    def reconstruct_many(self, paths: Iterable[str | Path], out_dir: str | Path, batch_size: int = 8,
                         all_faces: bool = False, progress: Progress | None = None,
                         overwrite: bool = False) -> ReconstructionSummary:
        """Reconstruct photos (folders are expanded), batching the network forward over up to
        ``batch_size`` faces. A photo that fails (unreadable, no face, ...) is recorded in the summary and
        the batch goes on. Raises `OutputDirError` before any work when ``out_dir`` cannot be written."""
        t0 = time.perf_counter()
        out = writing.check_output_dir(out_dir)
        self.detector  # a missing detector is not a per-photo failure: raise DetectorUnavailableError now
        photos = collect_photos(paths)
        summary = ReconstructionSummary(n_photos=len(photos))
        batch_size = max(1, int(batch_size))
        reserved: set[str] = set()
        pending: list[_Photo] = []
        done = 0

        def report(message: str) -> None:
            if progress:
                progress(done / max(1, len(photos)), message)

        def fail(path, exc: BaseException, face_index: int | None = None) -> None:
            summary.failed.append(PhotoFailure(str(path), type(exc).__name__, _error_message(exc), face_index))

        def flush() -> None:
            nonlocal done
            if not pending:
                return
            codes, detail, uv_z = self._forward(self._network_inputs(pending))
            row = 0
            for photo in pending:
                for i in range(len(photo.crops)):
                    face = _Face(photo, i, _slice_codes(codes, row), detail[row:row + 1], uv_z[row:row + 1])
                    row += 1
                    try:
                        folder = self._finish(face, out, overwrite)
                        summary.succeeded.append(FaceOutcome(str(photo.path), i, str(folder)))
                    except (KeyboardInterrupt, SystemExit, writing.OutputDirError):
                        raise
                    except Exception as exc:  # this face failed; the batch goes on
                        fail(photo.path, exc, i)
                done += 1
                report(f"{photo.path.name}: done")
            pending.clear()

        n_faces = 0
        for path in photos:
            try:
                photo = self._prepare(path, all_faces)
                photo.stem = writing.pick_base_stem(out, writing.safe_stem(photo.path.stem), len(photo.crops),
                                                    overwrite, reserved)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # unreadable, no face, ...: recorded, the batch goes on
                fail(path, exc)
                done += 1
                report(f"{Path(path).name}: {type(exc).__name__}")
                continue
            pending.append(photo)
            n_faces += len(photo.crops)
            if n_faces >= batch_size:
                flush()
                n_faces = 0
        flush()
        summary.seconds = time.perf_counter() - t0
        return summary

    def decode_displacement(self, result: ReconstructionResult, exp, jaw) -> np.ndarray:
        """The exact detail decoder for a result's person: displacement (256, 256) float32 (metres along
        the normal, ``uv_z * mask + fixed``) at expression ``exp`` (50,) and jaw axis-angle ``jaw`` (3,)."""
        detail = np.asarray(result.detail, np.float32).ravel()
        if detail.size != N_DETAIL:
            raise ResultError(f"{result.source_image}: the result holds no {N_DETAIL}-d detail code (got "
                              f"{detail.size} values); exact re-evaluation needs a result written by `reconstruct`")
        return self.decode_displacement_code(detail, exp, jaw)

    def decode_displacement_code(self, detail, exp, jaw) -> np.ndarray:
        """`decode_displacement` from a detail code (N_DETAIL,) instead of a result."""
        detail = np.asarray(detail, np.float32).ravel()
        e = torch.as_tensor(np.asarray(exp, np.float32).ravel()[None], device=self.device)
        j = torch.as_tensor(np.asarray(jaw, np.float32).ravel()[None], device=self.device)
        if e.shape[1] != N_EXP or j.shape[1] != N_JAW or detail.size != N_DETAIL:
            raise ValueError(f"decode_displacement needs {N_EXP} expression, {N_JAW} jaw and {N_DETAIL} detail values, "
                             f"got {e.shape[1]}, {j.shape[1]} and {detail.size}")
        d = torch.as_tensor(detail[None], device=self.device)
        with torch.inference_mode():
            disp = self.face_model.displacement(self._decode_uv_z(j, e, d))
        return disp[0, 0].float().cpu().numpy()

    def animate(self, identity_photo: str | Path, expression_photos: Sequence[str | Path], out_dir: str | Path,
                overwrite: bool = False, progress: Progress | None = None,
                batch_size: int = 8) -> AnimationSummary:
        """DECA's expression transfer: the identity photo's shape, detail code, texture, camera and head pose
        with each expression photo's expression and jaw; the detail maps are re-decoded per frame.

        Writes one result folder per expression photo (``<out>/<identity>_<NNN>_<expression>``, on the
        identity's photo) and ``animation.json`` listing them in order. Raises for the identity photo;
        expression photos that fail are recorded and skipped."""
        out = writing.check_output_dir(out_dir)
        ident = self._prepare(identity_photo, all_faces=False)
        codes, detail, uv_z = self._forward(self._network_inputs([ident]))
        face = _Face(ident, 0, _slice_codes(codes, 0), detail[0:1], uv_z[0:1])
        base = self._decode_face(face)
        texture = (base.texture, base.albedo)
        wrinkles = base.wrinkles
        summary = AnimationSummary(identity=str(identity_photo))
        sources = collect_photos(expression_photos)
        id_stem = writing.safe_stem(Path(identity_photo).stem)
        reserved: set[str] = set()
        prepared: list[tuple[int, Path, _Photo]] = []
        for k, src in enumerate(sources):
            try:
                prepared.append((k, src, self._prepare(src, all_faces=False)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                summary.failed.append(PhotoFailure(str(src), type(exc).__name__, _error_message(exc)))
        for start in range(0, len(prepared), max(1, batch_size)):
            chunk = prepared[start:start + max(1, batch_size)]
            ecodes, _, _ = self._forward(self._network_inputs([p for _, _, p in chunk]))
            for row, (k, src, _) in enumerate(chunk):
                exp = ecodes.exp[row:row + 1]
                jaw = ecodes.pose[row:row + 1, 3:]
                try:
                    dec = self._decode_face(face, exp=exp, jaw=jaw, texture=texture, wrinkles=wrinkles)
                    result = self._result(face, dec, extra={"expression_source": np.str_(str(src)),
                                                            "expression_frame": np.int64(k)})
                    stem = writing.pick_base_stem(out, f"{id_stem}_{k:03d}_{writing.safe_stem(src.stem)}", 1,
                                                  overwrite, reserved)
                    folder = self._write(result, dec, out, stem, overwrite)
                    summary.frames.append({"index": k, "folder": str(folder), "expression_source": str(src)})
                except (KeyboardInterrupt, SystemExit, writing.OutputDirError):
                    raise
                except Exception as exc:
                    summary.failed.append(PhotoFailure(str(src), type(exc).__name__, _error_message(exc)))
                if progress:
                    progress(len(summary.frames) / max(1, len(sources)), f"{src.name}: done")
        manifest = out / "animation.json"
        summary.manifest = str(manifest)
        payload = json.dumps(summary.to_dict(), indent=2).encode()
        atomic_write_bytes(manifest, lambda f: f.write(payload))
        return summary


def _slice_codes(codes: FlameCodes, i: int) -> FlameCodes:
    return FlameCodes(**{k: v[i:i + 1] for k, v in codes.as_dict().items()})
