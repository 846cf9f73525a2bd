"""The training dataset: images grouped by identity, with landmarks and skin masks precomputed.

Layout (written by ``deca-train prepare`` from photos, or ``deca-train synth``)::

    <root>/dataset.json                 optional: {"format": "deca-train-dataset", "version": 1, ...}
    <root>/manifest*.json               optional: the index (identities and their samples), written by
                                        ``prepare`` (one per shard) and ``synth``, or for an older folder by
                                        ``deca-train index`` (:func:`index_dataset`); without one the folder
                                        is listed once, as before
    <root>/<identity>/<name>.png        224x224 RGB crop (DECA's crop rule, scale 1.375 of the landmark box)
    <root>/<identity>/<name>.full.png   optional: the full image the training crop is re-cut from
                                        (``data.crop: release``): for prepared photos the photo's square at
                                        2.2x the landmark box around the face, for synthetic sets a render
    <root>/<identity>/<name>.npz        landmarks (68, 2) float32: iBUG 68 in crop pixels (continuous,
                                        docs/CONVENTIONS.md); skin_mask (224, 224) uint8 0/1;
                                        optional: crop_matrix (3, 3), source (str), and for synthetic sets
                                        the ground-truth codes gt_shape/gt_exp/gt_pose/gt_cam/gt_light/gt_tex;
                                        with a full image: full_landmarks (68, 2) in its pixels,
                                        full_skin_mask (H, W) uint8, full_matrix (3, 3) full px -> crop px

**Crops** (``data.crop``): ``release`` (default) re-cuts every training sample from the full image as DECA's
released data loaders do (``decalib/datasets/vggface.py`` ``crop``): the landmarks' extent box, side
``old_size = (w + h) / 2``, centre = box centre moved by ``u * trans_scale * old_size`` (u uniform in
[-1, 1]^2; released ``trans_scale`` 0), square side ``old_size * scale`` with ``scale`` uniform in
[1.4, 1.8], resampled to 224 (continuous pixels; DECA rounds the side down to an integer and maps onto
pixel indices 0..223: a sub-pixel difference). The draw is a function of the sample's augmentation seed;
seed 0 (evaluation) is the deterministic crop at the middle of the range. Ground-truth cameras follow the
crop. ``fixed`` reads the stored 224 crop as it is (the behaviour before re-cropping).

A batch holds ``identities_per_batch`` identities with ``images_per_identity`` (K) images each, grouped
(identity-major), so the consistency losses can swap codes between images of one person.

Sampling is a pure function of ``(seed, epoch, batch index, rank, world size)``: which identities, which K
images of each, and the augmentation of every image. A run resumed at a batch therefore sees exactly the
batches the uninterrupted run saw, with any number of DataLoader workers; and under DistributedDataParallel
the ``world_size`` processes together see exactly the batch one process would see with ``world_size`` times
as many identities (rank ``r`` takes the ``r``-th block of identities of the global batch).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from core.errors import DecaError
from core.networks import INPUT_SIZE

__all__ = [
    "DATASET_FORMAT", "IMAGE_EXTS", "GT_KEYS", "CROPS", "RELEASE_CROP_SCALE", "FULL_SUFFIX", "Sample",
    "IdentityDataset", "IdentityBatchSampler", "collate", "write_sample", "write_dataset_info", "write_manifest",
    "read_manifests", "index_dataset", "release_crop", "transform_camera", "worker_init", "DatasetError",
]

DATASET_FORMAT = "deca-train-dataset"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
GT_KEYS = ("gt_shape", "gt_exp", "gt_pose", "gt_cam", "gt_light", "gt_tex")
#: ``data.crop``: re-cut from the full image as the released code does, or the stored 224 crop
CROPS = ("release", "fixed")
#: the released ``dataset.scale_min`` / ``scale_max`` (``decalib/utils/config.py``)
RELEASE_CROP_SCALE = (1.4, 1.8)
#: the full image beside ``<name>.png``
FULL_SUFFIX = ".full.png"
MANIFEST_FORMAT = "deca-train-manifest"


class DatasetError(DecaError, ValueError):
    """A dataset folder that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    """One image of a batch: which identity, which of its images, and the seed of its augmentation."""

    identity: int
    image: int
    aug_seed: int


def write_sample(folder: str | Path, name: str, image: np.ndarray, landmarks: np.ndarray, skin_mask: np.ndarray,
                 full: dict | None = None, **extra) -> Path:
    """Write ``<folder>/<name>.png`` (image (H, W, 3) float in [0, 1]) and ``<name>.npz`` atomically; with
    ``full`` (``image`` (H', W', 3), ``landmarks`` (68, 2) and ``skin_mask`` (H', W') in its pixels, ``matrix``
    (3, 3) full px -> crop px) also ``<name>.full.png``, the image ``data.crop: release`` re-cuts from. The
    ``.npz`` is written last: its presence marks a complete sample (an interrupted ``prepare`` resumes)."""
    from core.atomic import atomic_write_bytes
    from core.frontend import write_png
    import io

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be (68, 2), got {lm.shape}")
    mask = (np.asarray(skin_mask) > 0.5).astype(np.uint8)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"skin mask {mask.shape} does not match the image {image.shape[:2]}")
    arrays = {k: np.asarray(v) for k, v in extra.items()}
    if full is not None:
        fimg = np.asarray(full["image"], dtype=np.float32)
        flm = np.asarray(full["landmarks"], dtype=np.float32)
        fmask = (np.asarray(full["skin_mask"]) > 0.5).astype(np.uint8)
        fmat = np.asarray(full["matrix"], dtype=np.float64)
        if flm.shape != (68, 2) or fmask.shape != fimg.shape[:2] or fmat.shape != (3, 3):
            raise ValueError(f"full image: landmarks {flm.shape}, mask {fmask.shape} for image {fimg.shape[:2]}, "
                             f"matrix {fmat.shape}")
        arrays.update(full_landmarks=flm, full_skin_mask=fmask, full_matrix=fmat)
        write_png(folder / f"{name}{FULL_SUFFIX}", np.clip(fimg, 0.0, 1.0))
    buf = io.BytesIO()
    np.savez_compressed(buf, landmarks=lm, skin_mask=mask, **arrays)
    write_png(folder / f"{name}.png", np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0))
    atomic_write_bytes(folder / f"{name}.npz", lambda f: f.write(buf.getvalue()))
    return folder / f"{name}.png"


def write_manifest(root: str | Path, samples: Sequence[tuple[str, str]], name: str = "manifest.json") -> Path:
    """The dataset index ``<root>/<name>``: ``samples`` as ``(identity folder, sample name)`` pairs (the sample
    is ``<identity>/<name>.png`` + ``.npz``). Several manifests (one per ``prepare`` shard) are read as one."""
    from core.atomic import atomic_write_bytes

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[str]] = {}
    for ident, nm in samples:
        groups.setdefault(str(ident), []).append(str(nm))
    payload = {"format": MANIFEST_FORMAT, "version": 1,
               "identities": {k: sorted(set(v)) for k, v in sorted(groups.items())}}
    data = (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(root / name, lambda f: f.write(data))
    return root / name


def read_manifests(root: str | Path) -> dict[str, list[str]] | None:
    """``{identity: [sample names]}`` from every ``<root>/manifest*.json`` merged, or None without any."""
    root = Path(root)
    paths = sorted(root.glob("manifest*.json"))
    if not paths:
        return None
    out: dict[str, set[str]] = {}
    for p in paths:
        try:
            d = json.loads(p.read_text())
        except ValueError as e:
            raise DatasetError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT or not isinstance(d.get("identities"), dict):
            raise DatasetError(f"{p}: not a {MANIFEST_FORMAT} file")
        for ident, names in d["identities"].items():
            out.setdefault(str(ident), set()).update(str(n) for n in names)
    return {k: sorted(v) for k, v in sorted(out.items())}


def index_dataset(root: str | Path, overwrite: bool = False) -> Path:
    """Write ``<root>/manifest.json`` for a dataset folder made before manifests existed, from one listing
    (:meth:`IdentityDataset.list_folder`: every ``<identity>/<name>.png`` with its ``.npz``); identity folders
    without a sample are left out. Refuses (:class:`DatasetError`) a folder that is not a dataset (another
    tool's ``dataset.json``, or no sample at all) and one that has a manifest already, unless ``overwrite``:
    then the new ``manifest.json`` replaces every ``manifest*.json`` (shards' included: they are merged on
    reading, so a stale one would keep listing removed samples). Written atomically, before the old shard
    manifests are removed, so that a reader never finds the folder without an index."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    info = root / "dataset.json"
    if info.is_file():
        try:
            fmt = json.loads(info.read_text()).get("format")
        except (ValueError, AttributeError):
            fmt = None
        if fmt != DATASET_FORMAT:
            raise DatasetError(f"{info}: not a {DATASET_FORMAT} description; {root} is not a deca-train dataset")
    existing = sorted(root.glob("manifest*.json"))
    if existing and not overwrite:
        raise DatasetError(f"{root} already has {', '.join(p.name for p in existing)}; pass --overwrite to "
                           f"replace it with a fresh listing")
    listing = {k: v for k, v in IdentityDataset.list_folder(root).items() if v}
    if not listing:
        raise DatasetError(f"{root}: not a dataset folder (no <identity>/<name>.png with its .npz; build one with "
                           f"'deca-train prepare' or 'deca-train synth')")
    out = write_manifest(root, [(ident, n) for ident, names in listing.items() for n in names])
    for p in existing:
        if p != out:
            p.unlink()
    return out


def release_crop(landmarks: np.ndarray, scale: float, shift: tuple[float, float] = (0.0, 0.0),
                 size: int = INPUT_SIZE):
    """DECA's released training crop (``decalib/datasets/*.py`` ``crop``) of ``landmarks`` (68, 2) full-image
    pixels: the square of side ``old_size * scale`` centred at the landmark box's centre moved by
    ``shift * old_size``, with ``old_size = (w + h) / 2`` of the box; a :class:`~core.frontend.CropTransform`
    onto ``[0, size]^2`` (continuous pixels)."""
    from core.frontend import CropTransform

    lm = np.asarray(landmarks, dtype=np.float64)
    lo, hi = lm.min(0), lm.max(0)
    old_size = float((hi - lo).sum() / 2.0)
    centre = (lo + hi) / 2.0 + np.asarray(shift, dtype=np.float64) * old_size
    return CropTransform.from_square(centre, old_size * float(scale), size)


def transform_camera(cam: np.ndarray, matrix: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """The orthographic camera ``(s, tx, ty)`` of a crop ``size`` x ``size`` mapped by the pixel similarity
    ``matrix`` (3, 3; old crop px -> new crop px, no rotation) into the new crop: in NDC
    ``q' = a q + d`` with ``a = matrix[0, 0]``, ``d = a - 1 + matrix[:2, 2] / (size / 2)``, so
    ``s' = a s``, ``tx' = tx + d_x / s'``, ``ty' = ty - d_y / s'`` (y is negated, docs/CONVENTIONS.md)."""
    m = np.asarray(matrix, dtype=np.float64)
    a = m[0, 0]
    if abs(m[0, 1]) > 1e-9 * abs(a) or abs(m[1, 0]) > 1e-9 * abs(a) or abs(m[1, 1] - a) > 1e-9 * abs(a):
        raise ValueError(f"camera transform needs an axis-aligned similarity, got {m[:2, :2].tolist()}")
    d = a - 1.0 + m[:2, 2] / (size / 2.0)
    s, tx, ty = (float(x) for x in np.asarray(cam, dtype=np.float64))
    s2 = a * s
    return np.array([s2, tx + d[0] / s2, ty - d[1] / s2])


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one thread per worker (the training process has the cores) and numpy /
    torch seeded per worker. No sample depends on these seeds (every random choice of a sample comes from
    its own :class:`Sample` seed); they only keep any other library use in a worker reproducible."""
    info = torch.utils.data.get_worker_info()
    torch.set_num_threads(1)
    seed = int(info.seed) if info is not None else int(worker_id)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def write_dataset_info(root: str | Path, **info) -> Path:
    from core.atomic import atomic_write_bytes

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    payload = {"format": DATASET_FORMAT, "version": 1, "image_size": INPUT_SIZE, **info}
    data = (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()
    atomic_write_bytes(root / "dataset.json", lambda f: f.write(data))
    return root / "dataset.json"


class IdentityDataset(Dataset):
    """The images of a dataset folder, indexed by :class:`Sample` (identity, image, augmentation seed).

    Items are dicts of tensors: ``image`` (3, 224, 224) float32 in [0, 1], ``landmarks`` (68, 2) float32 crop
    pixels, ``skin_mask`` (1, 224, 224) float32, ``identity`` () int64, ``index`` () int64 (global image
    index), ``crop_matrix`` (3, 3) float64 (full-image px -> crop px; ``crop: release`` only), and ``gt_*``
    codes when the files have them (``gt_cam`` in the crop returned).

    The index comes from the folder's manifests (:func:`read_manifests`: no file-system walk, which matters
    with many ranks on a shared file system) or, for a folder without one, from listing it once.
    ``crop``: see the module docstring; ``eval_seed`` > 0 gives :meth:`all_samples` a seeded re-crop per image
    (held-out crops drawn as in training) instead of the deterministic one.
    """

    def __init__(self, root: str | Path, min_images_per_identity: int = 1, scale_jitter: float = 0.0,
                 shift_jitter: float = 0.0, load_gt: bool = True, crop: str = "fixed",
                 crop_scale: Sequence[float] = RELEASE_CROP_SCALE, crop_shift: float = 0.0,
                 eval_seed: int = 0) -> None:
        self.root = Path(root)
        if not str(root) or not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root} (set data.root; build one with "
                               f"'deca-train prepare' or 'deca-train synth')")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        info_path = self.root / "dataset.json"
        self.info: dict = {}
        if info_path.is_file():
            try:
                self.info = json.loads(info_path.read_text())
            except ValueError as e:
                raise DatasetError(f"{info_path}: not valid JSON ({e})") from None
            if self.info.get("format") != DATASET_FORMAT:
                raise DatasetError(f"{info_path}: not a {DATASET_FORMAT} description")
        manifest = read_manifests(self.root)
        self.indexed_by = "manifest" if manifest is not None else "listing"
        if manifest is None:
            manifest = self.list_folder(self.root)
        self.identities: list[str] = []
        self.files: list[list[Path]] = []
        skipped = []
        for ident, names in manifest.items():
            if len(names) < max(1, min_images_per_identity):
                skipped.append(ident)
                continue
            self.identities.append(ident)
            self.files.append([self.root / ident / f"{n}.png" for n in names])
        if not self.identities:
            raise DatasetError(f"{self.root}: no identity folder with at least {max(1, min_images_per_identity)} "
                               f"image(s) and their .npz files")
        self.skipped_identities = skipped
        self.offsets = np.concatenate([[0], np.cumsum([len(f) for f in self.files])]).astype(np.int64)
        self.scale_jitter = float(scale_jitter)
        self.shift_jitter = float(shift_jitter)
        self.load_gt = load_gt
        self.crop = crop
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        if not 0 < self.crop_scale[0] <= self.crop_scale[1]:
            raise ValueError(f"crop_scale must be 0 < min <= max, got {tuple(crop_scale)}")
        self.crop_shift = float(crop_shift)
        self.eval_seed = int(eval_seed)

    @staticmethod
    def list_folder(root: Path) -> dict[str, list[str]]:
        """``{identity: [sample names]}`` of a folder without a manifest: every ``<identity>/<name>.png``
        (not ``*.full.png``) that has its ``.npz``."""
        out = {}
        for d in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            names = sorted(p.stem for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS
                           and not p.name.endswith(FULL_SUFFIX) and p.with_suffix(".npz").is_file())
            out[d.name] = names
        return out

    @property
    def augments(self) -> bool:
        """Whether samples need augmentation seeds (a random re-crop or crop jitter)."""
        return self.crop == "release" or self.scale_jitter > 0 or self.shift_jitter > 0

    # ------------------------------------------------------------------ sizes
    @property
    def n_identities(self) -> int:
        return len(self.identities)

    def n_images(self, identity: int) -> int:
        return len(self.files[identity])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def all_samples(self) -> list[Sample]:
        """Every image once, identity-major; no augmentation (for evaluation), or with ``eval_seed`` each
        image's own seeded re-crop."""
        out = []
        for i in range(self.n_identities):
            for j in range(self.n_images(i)):
                aug = 0
                if self.eval_seed:
                    aug = int(np.random.SeedSequence([self.eval_seed, i, j]).generate_state(1)[0]) or 1
                out.append(Sample(i, j, aug))
        return out

    def calibration_samples(self, n: int, seed: int) -> list[Sample]:
        """``n`` images in a seeded order independent of rank and world size (batch-norm calibration,
        head initialisation); with augmentation each gets its own seeded crop, so that the statistics
        measured on them (e.g. the camera's spread, training/head.py) are those of the training crops."""
        all_ = self.all_samples()
        rng = np.random.default_rng([int(seed), 7919])
        order = rng.permutation(len(all_))[: min(n, len(all_))]
        out = []
        for k in order:
            smp = all_[k]
            if self.augments:
                aug = int(np.random.SeedSequence([int(seed), 7919, int(k)]).generate_state(1)[0]) or 1
                smp = Sample(smp.identity, smp.image, aug)
            out.append(smp)
        return out

    # ------------------------------------------------------------------ reading
    def _read(self, identity: int, image: int) -> dict[str, np.ndarray]:
        from core.frontend import read_image

        path = self.files[identity][image]
        npz = path.with_suffix(".npz")
        full = self.crop == "release"
        try:
            with np.load(npz, allow_pickle=False) as z:
                out = {"landmarks": np.asarray(z["landmarks"], dtype=np.float32),
                       "skin_mask": np.asarray(z["skin_mask"], dtype=np.float32)}
                if full:
                    if "full_landmarks" not in z.files:
                        raise DatasetError(
                            f"{npz}: no full image to re-crop from (data.crop: release); the folder was prepared "
                            f"before re-cropping: run 'deca-train prepare' again or set data.crop: fixed")
                    for k in ("full_landmarks", "full_skin_mask", "full_matrix"):
                        out[k] = np.asarray(z[k], dtype=np.float64 if k == "full_matrix" else np.float32)
                if self.load_gt:
                    for k in GT_KEYS:
                        if k in z.files:
                            out[k] = np.asarray(z[k], dtype=np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise DatasetError(f"{npz}: cannot read landmarks/skin_mask ({e})") from None
        if out["landmarks"].shape != (68, 2):
            raise DatasetError(f"{npz}: landmarks must be (68, 2), got {out['landmarks'].shape}")
        if full:
            fpath = path.with_name(path.stem + FULL_SUFFIX)
            out["full_image"] = read_image(fpath)
            if out["full_skin_mask"].shape != out["full_image"].shape[:2]:
                raise DatasetError(f"{npz}: full_skin_mask {out['full_skin_mask'].shape} does not match "
                                   f"{fpath.name} {out['full_image'].shape[:2]}")
            return out
        img = read_image(path)
        if img.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            raise DatasetError(f"{path}: images must be {INPUT_SIZE}x{INPUT_SIZE} crops, got {img.shape[1]}x{img.shape[0]}")
        if out["skin_mask"].shape != img.shape[:2]:
            raise DatasetError(f"{npz}: skin_mask must be {img.shape[:2]}, got {out['skin_mask'].shape}")
        out["image"] = img
        return out

    def crop_of(self, full_landmarks: np.ndarray, aug_seed: int):
        """The re-crop of a sample (``crop: release``): seed 0 the middle of ``crop_scale``, no shift; else
        ``scale`` uniform in ``crop_scale`` and ``shift`` uniform in ``[-crop_shift, crop_shift]^2`` drawn from
        ``default_rng([aug_seed, 3])`` (scale first)."""
        if not aug_seed:
            return release_crop(full_landmarks, (self.crop_scale[0] + self.crop_scale[1]) / 2.0)
        rng = np.random.default_rng([int(aug_seed), 3])
        scale = rng.uniform(self.crop_scale[0], self.crop_scale[1])
        shift = rng.uniform(-1.0, 1.0, size=2) * self.crop_shift
        return release_crop(full_landmarks, scale, shift)

    def _recrop(self, d: dict[str, np.ndarray], aug_seed: int) -> dict[str, np.ndarray]:
        from core.frontend import warp_image

        tf = self.crop_of(d["full_landmarks"], aug_seed)
        img = warp_image(d["full_image"], tf).permute(1, 2, 0).numpy()
        # the mask: nearest full-image pixel of each crop pixel's centre (zero outside), from the crop's
        # scale k and offset b (full px = (crop px - b) / k; an axis-aligned square, no matrix inverse needed)
        k, b = tf.matrix[0, 0], tf.matrix[:2, 2]
        c = np.arange(INPUT_SIZE) + 0.5
        fm = d["full_skin_mask"]
        cols = np.floor((c - b[0]) / k).astype(np.int64)
        rows = np.floor((c - b[1]) / k).astype(np.int64)
        okc = (cols >= 0) & (cols < fm.shape[1])
        okr = (rows >= 0) & (rows < fm.shape[0])
        mask = fm[np.clip(rows, 0, fm.shape[0] - 1)][:, np.clip(cols, 0, fm.shape[1] - 1)] * okr[:, None] * okc[None]
        out = {"image": img, "landmarks": tf.apply(d["full_landmarks"]).astype(np.float32),
               "skin_mask": (mask > 0.5).astype(np.float32), "crop_matrix": tf.matrix}
        if "gt_cam" in d:  # stored crop px -> new crop px: M_new @ full_matrix^-1 (both axis-aligned squares)
            fmat = d["full_matrix"]
            kf, bf = fmat[0, 0], fmat[:2, 2]
            inv = np.array([[1.0 / kf, 0.0, -bf[0] / kf], [0.0, 1.0 / kf, -bf[1] / kf], [0.0, 0.0, 1.0]])
            if abs(fmat[0, 1]) + abs(fmat[1, 0]) + abs(fmat[1, 1] - kf) > 1e-9 * abs(kf):
                inv = np.linalg.inv(fmat)  # not an axis-aligned square (not written by prepare / synth)
            out["gt_cam"] = transform_camera(d["gt_cam"], tf.matrix @ inv).astype(np.float32)
        return out

    def __getitem__(self, s: Sample) -> dict[str, torch.Tensor]:
        if isinstance(s, (tuple, list)):
            s = Sample(*s)
        d = self._read(s.identity, s.image)
        extra = {}
        if self.crop == "release":
            d.update(self._recrop(d, s.aug_seed))
            extra["crop_matrix"] = torch.from_numpy(np.array(d["crop_matrix"], dtype=np.float64))
        image = torch.from_numpy(np.ascontiguousarray(np.asarray(d["image"], dtype=np.float32).transpose(2, 0, 1)))
        lm = torch.from_numpy(d["landmarks"])
        mask = torch.from_numpy(d["skin_mask"])[None]
        if (self.scale_jitter > 0 or self.shift_jitter > 0) and s.aug_seed:
            image, lm, mask = self._augment(image, lm, mask, s.aug_seed)
        out = {"image": image, "landmarks": lm, "skin_mask": mask,
               "identity": torch.tensor(s.identity, dtype=torch.long),
               "index": torch.tensor(int(self.offsets[s.identity]) + s.image, dtype=torch.long), **extra}
        for k in GT_KEYS:
            if k in d:
                out[k] = torch.from_numpy(np.asarray(d[k], dtype=np.float32))
        return out

    def _augment(self, image, lm, mask, seed: int):
        """Random similarity of the crop: scale by ``1 + u * scale_jitter``, shift by ``v * shift_jitter``
        of the crop (u, v uniform in [-1, 1]); landmarks follow, the mask is resampled (nearest)."""
        rng = np.random.default_rng(int(seed))
        sc = 1.0 + rng.uniform(-1, 1) * self.scale_jitter
        shift = rng.uniform(-1, 1, size=2) * self.shift_jitter * 2.0  # in NDC units (crop = 2)
        # output NDC q = sc * p + shift  ->  sample the input at p = (q - shift) / sc
        theta = torch.tensor([[1.0 / sc, 0.0, -shift[0] / sc], [0.0, 1.0 / sc, -shift[1] / sc]],
                             dtype=torch.float32)[None]
        grid = F.affine_grid(theta, (1, 3, INPUT_SIZE, INPUT_SIZE), align_corners=False)
        image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        mask = F.grid_sample(mask[None], grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
        half = INPUT_SIZE / 2.0
        p = lm / half - 1.0
        lm = ((p * sc + torch.tensor(shift, dtype=torch.float32)) + 1.0) * half
        return image.contiguous(), lm.to(torch.float32), mask.contiguous()


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack the keys every item has (ground truth only when all items carry it)."""
    keys = set(items[0])
    for it in items[1:]:
        keys &= set(it)
    return {k: torch.stack([it[k] for it in items]) for k in sorted(keys)}


class IdentityBatchSampler:
    """Infinite batches of :class:`Sample` for one process (see the module docstring).

    ``identities_per_batch`` is per process; the global batch of one step has ``world_size`` times as many
    identities. Identities are shuffled per epoch (seeded by ``(seed, epoch)``); an epoch has
    ``n_identities // (identities_per_batch * world_size)`` batches (the remainder is dropped). The K images
    of an identity are drawn without replacement when it has K or more, else with replacement.
    """

    def __init__(self, dataset: IdentityDataset, identities_per_batch: int, images_per_identity: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, start_epoch: int = 0, start_batch: int = 0,
                 augment: bool = False) -> None:
        self.ds = dataset
        self.B = int(identities_per_batch)
        self.K = int(images_per_identity)
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world_size)
        self.augment = augment
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        per_step = self.B * self.world
        if dataset.n_identities < per_step:
            raise DatasetError(
                f"{dataset.root}: {dataset.n_identities} identities, but one step needs {per_step} "
                f"(identities_per_batch {self.B} x {self.world} process(es)); lower data.identities_per_batch")
        self.batches_per_epoch = dataset.n_identities // per_step
        self.epoch, self.batch = int(start_epoch), int(start_batch)
        if self.batch >= self.batches_per_epoch:
            self.epoch += self.batch // self.batches_per_epoch
            self.batch %= self.batches_per_epoch

    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch

    def identities_of(self, epoch: int, batch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, int(epoch)]).permutation(self.ds.n_identities)
        start = (batch * self.world + self.rank) * self.B
        return perm[start:start + self.B]

    def batch_samples(self, epoch: int, batch: int) -> list[Sample]:
        out = []
        for ident in self.identities_of(epoch, batch):
            ident = int(ident)
            n = self.ds.n_images(ident)
            rng = np.random.default_rng([self.seed, int(epoch), ident, 1])
            picks = rng.choice(n, size=self.K, replace=n < self.K)
            for slot, j in enumerate(picks):
                aug = 0
                if self.augment:
                    aug = int(np.random.SeedSequence([self.seed, int(epoch), int(batch), ident, slot]).generate_state(1)[0]) or 1
                out.append(Sample(ident, int(j), aug))
        return out

    def __iter__(self) -> Iterator[list[Sample]]:
        while True:
            yield self.batch_samples(self.epoch, self.batch)
            self.batch += 1
            if self.batch >= self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0


def advance(position: tuple[int, int], batches_per_epoch: int, n: int = 1) -> tuple[int, int]:
    """The sampler position ``n`` batches after ``position``."""
    epoch, batch = position
    total = epoch * batches_per_epoch + batch + n
    return total // batches_per_epoch, total % batches_per_epoch


def landmarks_to_ndc(landmarks_px: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Crop pixels (continuous) -> image NDC."""
    return landmarks_px / (size / 2.0) - 1.0
