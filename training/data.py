"""The training dataset: images grouped by identity, with landmarks and skin masks precomputed.

Layout (written by ``deca-train prepare`` from photos, or ``deca-train synth``)::

    <root>/dataset.json                 optional: {"format": "deca-train-dataset", "version": 1, ...}
    <root>/<identity>/<name>.png        224x224 RGB crop (DECA's crop rule)
    <root>/<identity>/<name>.npz        landmarks (68, 2) float32: iBUG 68 in crop pixels (continuous,
                                        docs/CONVENTIONS.md); skin_mask (224, 224) uint8 0/1;
                                        optional: crop_matrix (3, 3), source (str), and for synthetic sets
                                        the ground-truth codes gt_shape/gt_exp/gt_pose/gt_cam/gt_light/gt_tex

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
    "DATASET_FORMAT", "IMAGE_EXTS", "GT_KEYS", "Sample", "IdentityDataset", "IdentityBatchSampler",
    "collate", "write_sample", "write_dataset_info", "DatasetError",
]

DATASET_FORMAT = "deca-train-dataset"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
GT_KEYS = ("gt_shape", "gt_exp", "gt_pose", "gt_cam", "gt_light", "gt_tex")


class DatasetError(DecaError, ValueError):
    """A dataset folder that cannot be used; the message names the file or folder."""


@dataclass(frozen=True)
class Sample:
    """One image of a batch: which identity, which of its images, and the seed of its augmentation."""

    identity: int
    image: int
    aug_seed: int


def write_sample(folder: str | Path, name: str, image: np.ndarray, landmarks: np.ndarray, skin_mask: np.ndarray,
                 **extra) -> Path:
    """Write ``<folder>/<name>.png`` (image (H, W, 3) float in [0, 1]) and ``<name>.npz`` atomically."""
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
    buf = io.BytesIO()
    np.savez_compressed(buf, landmarks=lm, skin_mask=mask, **{k: np.asarray(v) for k, v in extra.items()})
    atomic_write_bytes(folder / f"{name}.npz", lambda f: f.write(buf.getvalue()))
    write_png(folder / f"{name}.png", np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0))
    return folder / f"{name}.png"


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
    index), and ``gt_*`` codes when the files have them.
    """

    def __init__(self, root: str | Path, min_images_per_identity: int = 1, scale_jitter: float = 0.0,
                 shift_jitter: float = 0.0, load_gt: bool = True) -> None:
        self.root = Path(root)
        if not str(root) or not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root} (set data.root; build one with "
                               f"'deca-train prepare' or 'deca-train synth')")
        info_path = self.root / "dataset.json"
        self.info: dict = {}
        if info_path.is_file():
            try:
                self.info = json.loads(info_path.read_text())
            except ValueError as e:
                raise DatasetError(f"{info_path}: not valid JSON ({e})") from None
            if self.info.get("format") != DATASET_FORMAT:
                raise DatasetError(f"{info_path}: not a {DATASET_FORMAT} description")
        self.identities: list[str] = []
        self.files: list[list[Path]] = []
        skipped = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            imgs = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.with_suffix(".npz").is_file())
            if len(imgs) < max(1, min_images_per_identity):
                skipped.append(d.name)
                continue
            self.identities.append(d.name)
            self.files.append(imgs)
        if not self.identities:
            raise DatasetError(f"{self.root}: no identity folder with at least {max(1, min_images_per_identity)} "
                               f"image(s) and their .npz files")
        self.skipped_identities = skipped
        self.offsets = np.concatenate([[0], np.cumsum([len(f) for f in self.files])]).astype(np.int64)
        self.scale_jitter = float(scale_jitter)
        self.shift_jitter = float(shift_jitter)
        self.load_gt = load_gt

    # ------------------------------------------------------------------ sizes
    @property
    def n_identities(self) -> int:
        return len(self.identities)

    def n_images(self, identity: int) -> int:
        return len(self.files[identity])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def all_samples(self) -> list[Sample]:
        """Every image once, identity-major, no augmentation (for evaluation)."""
        return [Sample(i, j, 0) for i in range(self.n_identities) for j in range(self.n_images(i))]

    def calibration_samples(self, n: int, seed: int) -> list[Sample]:
        """``n`` images in a seeded order independent of rank and world size (batch-norm calibration,
        head initialisation)."""
        all_ = self.all_samples()
        rng = np.random.default_rng([int(seed), 7919])
        order = rng.permutation(len(all_))
        return [all_[k] for k in order[: min(n, len(all_))]]

    # ------------------------------------------------------------------ reading
    def _read(self, identity: int, image: int) -> dict[str, np.ndarray]:
        from core.frontend import read_image

        path = self.files[identity][image]
        img = read_image(path)
        if img.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
            raise DatasetError(f"{path}: images must be {INPUT_SIZE}x{INPUT_SIZE} crops, got {img.shape[1]}x{img.shape[0]}")
        npz = path.with_suffix(".npz")
        try:
            with np.load(npz, allow_pickle=False) as z:
                out = {"image": img, "landmarks": np.asarray(z["landmarks"], dtype=np.float32),
                       "skin_mask": np.asarray(z["skin_mask"], dtype=np.float32)}
                if self.load_gt:
                    for k in GT_KEYS:
                        if k in z.files:
                            out[k] = np.asarray(z[k], dtype=np.float32)
        except (OSError, KeyError, ValueError) as e:
            raise DatasetError(f"{npz}: cannot read landmarks/skin_mask ({e})") from None
        if out["landmarks"].shape != (68, 2):
            raise DatasetError(f"{npz}: landmarks must be (68, 2), got {out['landmarks'].shape}")
        if out["skin_mask"].shape != img.shape[:2]:
            raise DatasetError(f"{npz}: skin_mask must be {img.shape[:2]}, got {out['skin_mask'].shape}")
        return out

    def __getitem__(self, s: Sample) -> dict[str, torch.Tensor]:
        if isinstance(s, (tuple, list)):
            s = Sample(*s)
        d = self._read(s.identity, s.image)
        image = torch.from_numpy(np.ascontiguousarray(d["image"].transpose(2, 0, 1)))
        lm = torch.from_numpy(d["landmarks"])
        mask = torch.from_numpy(d["skin_mask"])[None]
        if (self.scale_jitter > 0 or self.shift_jitter > 0) and s.aug_seed:
            image, lm, mask = self._augment(image, lm, mask, s.aug_seed)
        out = {"image": image, "landmarks": lm, "skin_mask": mask,
               "identity": torch.tensor(s.identity, dtype=torch.long),
               "index": torch.tensor(int(self.offsets[s.identity]) + s.image, dtype=torch.long)}
        for k in GT_KEYS:
            if k in d:
                out[k] = torch.from_numpy(d[k])
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
