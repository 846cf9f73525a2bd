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
from pathlib import Path

import torch

from core.networks import DecaNetworks
from core.render import ndc_to_pixels

from .data import IdentityDataset, collate

__all__ = ["evaluate"]


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
