"""Export trained weights in the official ``deca_model.tar`` layout (loads in the inference core unchanged).

A training checkpoint already stores the three networks under the official names; exporting writes only
``E_flame``, ``E_detail`` and ``D_detail`` (no optimizer, no RNG state) with
``core.networks.save_deca_checkpoint`` and verifies the result with ``core.networks.verify_checkpoint``.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.networks import CheckpointError, load_deca_checkpoint, save_deca_checkpoint, verify_checkpoint

__all__ = ["export_checkpoint"]


def export_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a training checkpoint (or any file with the three state dicts) and write ``out``."""
    nets = load_deca_checkpoint(checkpoint)  # validates the layout, weights_only
    path = save_deca_checkpoint(nets, out)
    problems = verify_checkpoint(path)
    if problems:  # pragma: no cover - save and verify come from the same definitions
        raise CheckpointError(path, "exported file does not verify: " + "; ".join(problems))
    return path
