"""The validation grid: what E_flame makes of the first validation images, as one picture.

DECA's released trainer renders one in ``validation_step`` (``decalib/trainer.py``: ``util.visualize_grid``
of ``deca.decode``'s ``visdict``, saved as ``<output_dir>/<val_vis_dir>/<step:08>.jpg`` and written to
TensorBoard as ``val_images``). Ours shows the three panels of that grid this project has, one row each,
one column per image (the layout of the training grids in TensorBoard):

* ``input``: the validation crop as the dataset gives it (224x224, unchanged);
* ``landmarks``: the crop with the dataset's 68 landmarks (green) and E_flame's projected 68 landmarks (red,
  drawn last) as squares of 3x3 pixels around ``floor(point)``, clamped to the image (``objective._draw_points``);
* ``shape``: the predicted mesh shaded grey, black background (released ``shape_images``): ambient 0.3 plus
  0.65 x the cosine to a light in front of the face and a little above (:data:`SHAPE_LIGHT_DIRECTION`), so that
  it stays below 1 and the shape's relief shows (the training grid's white light saturates most of the face).

The trainer writes it (``train.eval_every``, ``train.val_images``) to ``<output_dir>/val/step_XXXXXXX.png``
(atomically) and to TensorBoard ``val/images``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.networks import DecaNetworks
from core.render import ndc_to_pixels

from .data import IdentityDataset, collate
from .objective import _draw_points, _gray

__all__ = ["image_grid", "ValidationGrid", "PANELS", "GT_COLOUR", "PRED_COLOUR", "SHAPE_LIGHT_DIRECTION", "shape_light",
           "validation_grid", "write_grid"]

#: the grid's rows, top first
PANELS = ("input", "landmarks", "shape")
#: landmark colours (RGB in [0, 1]): the dataset's, and E_flame's (drawn over them)
GT_COLOUR = (0.0, 1.0, 0.0)
PRED_COLOUR = (1.0, 0.0, 0.0)
#: the shape panel's light (FLAME space: +y up, +z towards the viewer), ambient and directional parts
SHAPE_LIGHT_DIRECTION = (0.0, 0.4, 1.0)
SHAPE_AMBIENT, SHAPE_DIFFUSE = 0.3, 0.65


def shape_light(batch_size: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 9, 3) grey SH light whose shading is ``SHAPE_AMBIENT + SHAPE_DIFFUSE * (n . d)``, ``d`` the unit
    :data:`SHAPE_LIGHT_DIRECTION` (bands 0-3 only; the SH constants divided out)."""
    from core.render.shading import SH_CONSTANTS

    d = torch.tensor(SHAPE_LIGHT_DIRECTION, dtype=torch.float64)
    d = d / d.norm()
    light = torch.zeros(9, dtype=torch.float64)
    light[0] = SHAPE_AMBIENT / SH_CONSTANTS[0]
    light[1:4] = SHAPE_DIFFUSE * d / SH_CONSTANTS[1]
    return light[None, :, None].expand(batch_size, 9, 3).to(dtype=dtype, device=device).contiguous()


def image_grid(vis: dict[str, torch.Tensor], n: int = 4, size: int = 224) -> torch.Tensor:
    """Rows = entries of ``vis`` in order (first ``n`` images each, resized to ``size``, missing ones black),
    one (3, rows * size, n * size) image in [0, 1]: the training grids in TensorBoard and the validation grid."""
    import torch.nn.functional as F

    rows = []
    for _, v in vis.items():
        v = v[:n].detach().float().cpu()
        if v.shape[1] == 1:
            v = v.expand(-1, 3, -1, -1)
        if v.shape[-1] != size or v.shape[-2] != size:
            v = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)
        if v.shape[0] < n:
            v = torch.cat([v, v.new_zeros(n - v.shape[0], 3, size, size)])
        rows.append(torch.cat(list(v), dim=2))
    return torch.cat(rows, dim=1).clamp(0, 1)


@dataclass
class ValidationGrid:
    """``image`` (3, len(PANELS) * P, n * P) float in [0, 1] on the CPU, P the crop size; ``n`` images (the
    first of the dataset in :meth:`IdentityDataset.all_samples` order), ``landmarks`` (n, 68, 2) E_flame's in
    crop pixels."""

    image: torch.Tensor
    n: int
    panel_size: int
    landmarks: torch.Tensor


@torch.no_grad()
def validation_grid(nets: DecaNetworks, face, data: IdentityDataset, n: int = 8,
                    device: torch.device | str = "cpu") -> ValidationGrid:
    """The grid of the first ``n`` images of ``data`` (fewer when it has fewer), E_flame in eval mode (the
    networks' modes are restored)."""
    samples = data.all_samples()[: max(0, int(n))]
    if not samples:
        raise ValueError("a validation grid needs at least one image (train.val_images >= 1)")
    batch = collate([data[s] for s in samples])
    images = batch["image"].to(device)
    was_training = nets.training
    nets.eval()
    try:
        codes = nets.E_flame.encode(images)
        g = face.geometry(codes.shape, codes.exp, codes.pose, codes.cam)
        size = images.shape[-1]
        pred = ndc_to_pixels(g.landmarks2d, size)
        shape = face.render(g.vertices, codes.cam, None, shape_light(images.shape[0], g.vertices.dtype, device))
        vis = {"input": images,
               "landmarks": _draw_points(images, [batch["landmarks"].to(device), pred], [GT_COLOUR, PRED_COLOUR]),
               "shape": _gray(shape)}
    finally:
        if was_training:
            nets.train()
    # row r, column j: panel r of image j (the crops are all P x P: no resizing)
    grid = image_grid({k: vis[k] for k in PANELS}, n=len(samples), size=size)
    return ValidationGrid(grid, len(samples), size, pred.float().cpu())


def write_grid(path: str | Path, grid: ValidationGrid) -> Path:
    """The grid as an 8-bit RGB PNG, written atomically (the folder is created)."""
    from core.frontend import write_png

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, grid.image.permute(1, 2, 0).numpy())
