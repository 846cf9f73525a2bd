"""Errors of E_flame on a dataset with ground-truth codes (a synthetic set from ``deca-train synth``).

* ``vertex_px``: mean distance (224-crop pixels) between the projected predicted and ground-truth meshes
  (all 5023 vertices): the **parameter error** used by the tests, it combines shape, expression, pose and
  camera in one image-space number.
* ``landmark_px``: the same for the 68 landmarks (also available on real data, against detected landmarks).
* ``shape_mm``: mean vertex distance of the neutral, unposed identity meshes (shape codes only), in mm.
* ``shape_rmse``, ``exp_rmse``: RMS code errors; ``pose_deg``: mean absolute axis-angle error (degrees).
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
           "learning_report", "landmark_px"]


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
