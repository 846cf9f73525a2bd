"""Errors of E_flame on a dataset with ground-truth codes (a synthetic set from ``deca-train synth``).

* ``vertex_px``: mean distance (224-crop pixels) between the projected predicted and ground-truth meshes
  (all 5023 vertices): the **parameter error** used by the tests, it combines shape, expression, pose and
  camera in one image-space number.
* ``landmark_px``: the same for the 68 landmarks (also available on real data, against detected landmarks).
* ``shape_mm``: mean vertex distance of the neutral, unposed identity meshes (shape codes only), in mm.
* ``shape_rmse``, ``exp_rmse``: RMS code errors; ``pose_deg``: mean absolute axis-angle error (degrees).

``now_validation``: the NoW benchmark during training (DECA's released ``Trainer.evaluate``): E_flame on
face crops of NoW's validation images, the neutral mesh (expression and pose zeroed) and its 7 NoW landmarks
written in NoW's submission layout, scored with ``core.evaluation.now_layout`` (median / mean / std in mm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.networks import DecaNetworks
from core.render import ndc_to_pixels

from .data import IdentityDataset, collate

__all__ = ["evaluate", "predict", "r_squared", "mean_code_baseline", "LearningReport",
           "learning_report", "landmark_px", "now_crop_path", "write_now_predictions", "now_validation"]


@torch.no_grad()
def evaluate(nets: DecaNetworks, face, data: IdentityDataset | str | Path, batch_size: int = 8,
             device: torch.device | str = "cpu") -> dict[str, float]:
    ds = data if isinstance(data, IdentityDataset) else IdentityDataset(data)
    device = torch.device(device)
    was_training = nets.training
    nets.eval()
    sums: dict[str, float] = {}
    n_total = 0
    samples = ds.all_samples()
    for a in range(0, len(samples), batch_size):
        batch = collate([ds[s] for s in samples[a:a + batch_size]])
        images = batch["image"].to(device)
        B = images.shape[0]
        codes = nets.E_flame.encode(images)
        g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
        size = images.shape[-1]
        lm = ndc_to_pixels(g.landmarks2d, size)
        add = {"landmark_px": (lm - batch["landmarks"].to(device)).norm(dim=-1).mean(-1)}
        if "gt_shape" in batch:
            gt = {k: batch[f"gt_{k}"].to(device) for k in ("shape", "exp", "pose", "cam")}
            g_gt = face.geometry(gt["shape"], gt["exp"], gt["pose"], gt["cam"])
            vp = ndc_to_pixels(g.verts_screen[..., :2], size)
            vg = ndc_to_pixels(g_gt.verts_screen[..., :2], size)
            add["vertex_px"] = (vp - vg).norm(dim=-1).mean(-1)
            t_pred = face.flame.shaped_template(codes.shape)
            t_gt = face.flame.shaped_template(gt["shape"])
            add["shape_mm"] = (t_pred - t_gt).norm(dim=-1).mean(-1) * 1000.0
            add["shape_rmse"] = (codes.shape - gt["shape"]).pow(2).mean(-1).sqrt()
            add["exp_rmse"] = (codes.exp - gt["exp"]).pow(2).mean(-1).sqrt()
            add["pose_deg"] = (codes.pose - gt["pose"]).abs().mean(-1) * (180.0 / math.pi)
        for k, v in add.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        n_total += B
    if was_training:
        nets.train()
    return {k: v / n_total for k, v in sums.items()} | {"n_images": n_total}


@torch.no_grad()
def predict(nets: DecaNetworks, data: IdentityDataset | str | Path, batch_size: int = 8,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """E_flame's codes for every image of ``data`` (eval mode) next to the ground truth:
    ``{"shape", "exp", "pose", "cam", "gt_shape", ..., "landmarks"}`` each (N, ...) on the CPU."""
    ds = data if isinstance(data, IdentityDataset) else IdentityDataset(data)
    was_training = nets.training
    nets.eval()
    out: dict[str, list[torch.Tensor]] = {}
    samples = ds.all_samples()
    for a in range(0, len(samples), batch_size):
        batch = collate([ds[s] for s in samples[a:a + batch_size]])
        codes = nets.E_flame.encode(batch["image"].to(device))
        for k in ("shape", "exp", "pose", "cam"):
            out.setdefault(k, []).append(getattr(codes, k).float().cpu())
        for k, v in batch.items():
            if k.startswith("gt_") or k == "landmarks":
                out.setdefault(k, []).append(v)
    if was_training:
        nets.train()
    return {k: torch.cat(v) for k, v in out.items()}


def r_squared(pred: torch.Tensor, gt: torch.Tensor) -> float:
    """Coefficient of determination of ``pred`` (N, D) for ``gt`` (N, D), pooled over the D columns:
    ``1 - sum((pred - gt)^2) / sum((gt - mean_N(gt))^2)``. 1: exact; 0: no better than the mean of ``gt``."""
    sse = (pred.double() - gt.double()).pow(2).sum()
    sst = (gt.double() - gt.double().mean(0, keepdim=True)).pow(2).sum()
    return float(1.0 - sse / sst.clamp_min(1e-30))


@torch.no_grad()
def landmark_px(face, codes: dict[str, torch.Tensor], landmarks: torch.Tensor, size: int = 224) -> float:
    """Mean 68-landmark distance (pixels) of the projected codes to ``landmarks`` (N, 68, 2)."""
    g = face.geometry(codes["shape"], codes["exp"], codes["pose"], codes["cam"])
    return float((ndc_to_pixels(g.landmarks2d, size) - landmarks).norm(dim=-1).mean())


@dataclass
class LearningReport:
    """Does E_flame do better than predicting one constant? (synthetic sets with ground truth)"""

    landmark_px: float  # mean landmark error of the predictions
    baseline_px: float  # the same for the training set's mean ground-truth codes, predicted for every image
    r2: dict[str, float]  # R^2 of shape, exp, head rotation (global pose), jaw, cam
    spread: dict[str, float]  # standard deviation across images of the predicted vs ground-truth codes

    def as_dict(self) -> dict:
        return {"landmark_px": self.landmark_px, "baseline_px": self.baseline_px, "r2": self.r2,
                "spread": self.spread}


@torch.no_grad()
def mean_code_baseline(train: IdentityDataset | str | Path) -> dict[str, torch.Tensor]:
    """The training set's mean ground-truth codes ``{"shape", "exp", "pose", "cam"}`` (1, D) each."""
    ds = train if isinstance(train, IdentityDataset) else IdentityDataset(train)
    batch = collate([ds[s] for s in ds.all_samples()])
    return {k: batch[f"gt_{k}"].mean(0, keepdim=True) for k in ("shape", "exp", "pose", "cam")}


@torch.no_grad()
def learning_report(nets: DecaNetworks, face, train: IdentityDataset | str | Path,
                    test: IdentityDataset | str | Path) -> LearningReport:
    """:class:`LearningReport` of ``nets`` on ``test``, with the mean-code baseline taken from ``train``."""
    p = predict(nets, test)
    n = p["shape"].shape[0]
    mean = {k: v.expand(n, -1) for k, v in mean_code_baseline(train).items()}
    groups = {"shape": ("shape", slice(None)), "exp": ("exp", slice(None)), "rotation": ("pose", slice(0, 3)),
              "jaw": ("pose", slice(3, 6)), "cam": ("cam", slice(None))}
    r2, spread = {}, {}
    for name, (k, sl) in groups.items():
        pred, gt = p[k][:, sl], p[f"gt_{k}"][:, sl]
        r2[name] = r_squared(pred, gt)
        spread[name] = float(pred.std(0).mean())
        spread[name + "_gt"] = float(gt.std(0).mean())
    return LearningReport(landmark_px(face, p, p["landmarks"]), landmark_px(face, mean, p["landmarks"]), r2, spread)


def now_crop_path(crops: str | Path, image) -> Path | None:
    """The face crop of one NoW image (a ``core.evaluation.now_layout.NowImage``):
    ``<crops>/<subject>/<experiment>/<image stem>.png`` (or ``.jpg``), or None when there is none."""
    base = Path(crops) / image.subject / image.experiment / image.stem
    for ext in (".png", ".jpg", ".jpeg"):
        if base.with_suffix(ext).is_file():
            return base.with_suffix(ext)
    return None


def _read_crop(path: Path, size: int = 224) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):  # crops made at another size: resized like DECA's test crops' warp output
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)


@torch.no_grad()
def write_now_predictions(nets: DecaNetworks, face, now_root: str | Path, crops: str | Path, out: str | Path,
                          image_set: str = "val", batch_size: int = 8, device: torch.device | str = "cpu") -> int:
    """E_flame's neutral meshes for NoW's listed images that have a crop, written as NoW submissions
    ``<out>/<subject>/<experiment>/<stem>.obj`` + ``.npy`` (7 x 3 landmarks, metres). As released
    (``Trainer.evaluate``): expression and pose set to zero, landmarks = the 3D landmarks 36, 39, 42, 45, 33,
    48, 54. Returns the number of meshes written."""
    import numpy as np

    from core.evaluation.now import NOW_LANDMARKS_68
    from core.evaluation.now_layout import IMAGE_LISTS, read_image_list
    from core.obj import write_obj

    device = torch.device(device)
    images = [(im, now_crop_path(crops, im)) for im in read_image_list(Path(now_root) / IMAGE_LISTS[image_set])]
    images = [(im, p) for im, p in images if p is not None]
    faces = face.flame.faces.detach().cpu().numpy()
    was_training = nets.training
    nets.eval()
    out = Path(out)
    for a in range(0, len(images), batch_size):
        chunk = images[a:a + batch_size]
        x = torch.stack([_read_crop(p) for _, p in chunk]).to(device)
        codes = nets.E_flame.encode(x)
        zero_exp, zero_pose = torch.zeros_like(codes.exp), torch.zeros_like(codes.pose)
        fl = face.flame(codes.shape.float(), zero_exp.float(), zero_pose.float())
        verts = fl.vertices.cpu().numpy()
        lmk = fl.landmarks3d[:, list(NOW_LANDMARKS_68)].cpu().numpy()
        for k, (im, _) in enumerate(chunk):
            base = out / im.subject / im.experiment / im.stem
            base.parent.mkdir(parents=True, exist_ok=True)
            write_obj(base.with_suffix(".obj"), verts[k], faces)
            np.save(base.with_suffix(".npy"), lmk[k].astype(np.float64))
    if was_training:
        nets.train()
    return len(images)


def now_validation(nets: DecaNetworks, face, now_root: str | Path, crops: str | Path, out: str | Path,
                   image_set: str = "val", device: torch.device | str = "cpu") -> dict[str, float]:
    """NoW errors of E_flame on the listed images that have a crop (:func:`write_now_predictions` into ``out``,
    then ``core.evaluation.now_layout.evaluate_now_layout``): ``{"median_mm", "mean_mm", "std_mm",
    "n_points", "n_images", "n_missing"}``."""
    from core.evaluation.now_layout import evaluate_now_layout

    n = write_now_predictions(nets, face, now_root, crops, out, image_set, device=device)
    if n == 0:
        from core.evaluation.dataset import EvaluationError

        raise EvaluationError(f"{crops}: no face crop <subject>/<experiment>/<image stem>.png for any image of "
                              f"{Path(now_root) / 'imagepathsvalidation.txt'}")
    rep = evaluate_now_layout(now_root, out, image_set=image_set)
    return {**rep["overall"], "n_images": len(rep["items"]), "n_missing": len(rep["missing"])}
