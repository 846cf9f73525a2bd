"""At most N bone influences per vertex, renormalised, for engines that skin with 4 (Unity, glTF).

FLAME's skinning weights give some vertices 5 non-zero joints. Unity's default quality and glTF's
JOINTS_0/WEIGHTS_0 take 4; glTF's exporter drops the rest with a warning, FBX keeps all 5 and leaves the
engine to cut them. `limited_influences` keeps each vertex's `n` largest weights, divides them by their
sum (so they sum to 1, as skinning needs), and restores the original weights after the export: the
.blend is unchanged. The dropped weights are FLAME's smallest, so the skin moves very little.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


def read_weights(obj) -> np.ndarray:
    """(V, G) dense vertex-group weights of a mesh object (0 where a vertex is not in a group)."""
    W = np.zeros((len(obj.data.vertices), len(obj.vertex_groups)))
    for v in obj.data.vertices:
        for g in v.groups:
            W[v.index, g.group] = g.weight
    return W


def limit_weights(W: np.ndarray, n: int = 4) -> np.ndarray:
    """(V, G) weights with each row's `n` largest kept and renormalised to sum 1 (rows of zeros stay zero)."""
    W = np.asarray(W, np.float64)
    if W.shape[1] <= n:
        keep = W.copy()
    else:
        order = np.argsort(-W, axis=1, kind="stable")
        keep = np.zeros_like(W)
        rows = np.arange(W.shape[0])[:, None]
        keep[rows, order[:, :n]] = W[rows, order[:, :n]]
    total = keep.sum(axis=1, keepdims=True)
    return np.divide(keep, total, out=np.zeros_like(keep), where=total > 0)


def write_weights(obj, W: np.ndarray) -> None:
    """Set the vertex groups to W (V, G): a zero removes the vertex from that group."""
    for gi, vg in enumerate(obj.vertex_groups):
        col = W[:, gi]
        zero = np.flatnonzero(col == 0)
        if zero.size:
            vg.remove(zero.tolist())
        for i in np.flatnonzero(col):
            vg.add([int(i)], float(col[i]), "REPLACE")


@contextmanager
def limited_influences(obj, n: int | None = 4):
    """Within the block, `obj`'s vertex groups hold at most `n` renormalised influences per vertex (no-op
    for n None); the original weights come back afterwards, also on an error."""
    if not n:
        yield
        return
    original = read_weights(obj)
    write_weights(obj, limit_weights(original, n))
    try:
        yield
    finally:
        write_weights(obj, original)
