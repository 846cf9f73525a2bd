"""The codes a fit produces: DECA's parameterisation (shape 100, exp 50, pose 6, cam 3, tex 50, light 9x3)."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

N_SHAPE, N_EXP, N_TEX = 100, 50, 50


@dataclass
class FitCodes:
    """Batched codes (B first). ``cam`` is in the crop's image NDC (DECA's convention)."""

    shape: torch.Tensor  # (B, 100)
    exp: torch.Tensor  # (B, 50)
    pose: torch.Tensor  # (B, 6) global axis-angle, jaw axis-angle
    cam: torch.Tensor  # (B, 3) s, tx, ty
    tex: torch.Tensor  # (B, 50) zeros without a texture space
    light: torch.Tensor  # (B, 9, 3)

    @property
    def batch_size(self) -> int:
        return int(self.shape.shape[0])

    @classmethod
    def zeros(cls, batch_size: int, device=None, dtype=torch.float32) -> "FitCodes":
        z = lambda *s: torch.zeros(batch_size, *s, device=device, dtype=dtype)  # noqa: E731
        cam = z(3)
        cam[:, 0] = 1.0
        return cls(z(N_SHAPE), z(N_EXP), z(6), cam, z(N_TEX), z(9, 3))

    def detach(self) -> "FitCodes":
        return FitCodes(**{f.name: getattr(self, f.name).detach().clone() for f in fields(self)})

    def select(self, i: int) -> "FitCodes":
        return FitCodes(**{f.name: getattr(self, f.name)[i:i + 1] for f in fields(self)})

    @classmethod
    def cat(cls, items: list["FitCodes"]) -> "FitCodes":
        return cls(**{f.name: torch.cat([getattr(c, f.name) for c in items]) for f in fields(cls)})

    def numpy(self, i: int = 0) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name)[i].detach().float().cpu().numpy() for f in fields(self)}

    @classmethod
    def from_numpy(cls, d: dict, device=None, dtype=torch.float32) -> "FitCodes":
        """One face's codes (unbatched numpy arrays, e.g. a result.npz's) -> a batch of 1."""
        def get(name, shape):
            v = np.asarray(d[name], np.float32) if name in d else np.zeros(shape, np.float32)
            return torch.as_tensor(v.reshape(shape), device=device, dtype=dtype)[None]
        return cls(get("shape", (N_SHAPE,)), get("exp", (N_EXP,)), get("pose", (6,)), get("cam", (3,)),
                   get("tex", (N_TEX,)), get("light", (9, 3)))
