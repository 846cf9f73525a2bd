"""The NoW benchmark's error metric (Sanyal et al. 2019), reimplemented with numpy and scipy.

Protocol (as the NoW evaluation defines it; written here from its description, no code copied):

1. **Seven landmarks** on both sides: outer and inner eye corners, the nose bottom and the mouth corners,
   in the order ``[eye_outer_a, eye_inner_a, eye_inner_b, eye_outer_b, nose_bottom, mouth_a, mouth_b]``.
   On FLAME they are the iBUG-68 points ``NOW_LANDMARKS_68 = (36, 39, 42, 45, 33, 48, 54)`` of the 3D
   landmark embedding (33 is the bottom of the nose, the subnasale, not the tip 30).
2. **Face crop** of the ground-truth scan: the points within a sphere around the face centre
   ``c = nose_bottom + 0.3 (nose_bridge - nose_bottom)`` (nose bridge = midpoint of the inner eye
   corners) of radius ``1.4 (|eye_outer_a - eye_outer_b| + |nose_bridge - nose_bottom|) / 2`` (NoW's current
   factor; its first release used 1.2).
3. **Alignment**: a similarity (scale, orthogonal matrix, translation; the predicted mesh is not metrical)
   from the predicted 7 landmarks onto the scan's: NoW's ``procrustes(..., reflection='best')``, i.e. the
   orthogonal matrix of the SVD *without* the determinant correction, so a mirrored prediction is aligned
   by a reflection. Then it is **refined** by minimising the squared scan-to-mesh distances over a proper
   similarity (scale, rotation, translation) applied after it, with a Gauss-Newton solver on the
   scan-to-mesh distances as NoW's ``rigid_scan_2_mesh_alignment`` (chumpy) does (`refine_alignment`).
4. **Error**: for each cropped scan point, the unsigned distance to the closest point of the aligned
   predicted *surface* (point-to-triangle). The benchmark reports the median, mean and standard deviation
   of all distances of all scans together, in millimetres.

Units: the distances are in the scan's units times `units_to_mm` (NoW's scans are in millimetres: 1; FLAME
space is metres: 1000). `unit_to_mm_from_landmarks` reads the unit from the landmarks' size.
The closest-point query is exact: a KD-tree over triangle centroids proposes candidates, the exact
point-triangle distance decides, and a ball query with the largest triangle radius catches any triangle
the first candidates could have missed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

NOW_LANDMARKS_68 = (36, 39, 42, 45, 33, 48, 54)
NOW_LANDMARK_NAMES = ("eye_outer_a", "eye_inner_a", "eye_inner_b", "eye_outer_b", "nose_bottom", "mouth_a", "mouth_b")
NOW_CROP_FACTOR = 1.4
# Outer eye corner distance of adult faces is about 80-110 mm: a generous window per unit.
_EYE_SPAN_MM = (30.0, 300.0)
UNIT_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


def unit_to_mm_from_landmarks(lmk7: np.ndarray) -> float:
    """The length unit of a scan, read from its 7 landmarks: the outer eye corners of a real face are
    30-300 mm apart, so that span in mm, cm or m names the unit. Raises ValueError when no unit fits."""
    lm = _check_lmk7(lmk7, "scan landmarks")
    span = float(np.linalg.norm(lm[0] - lm[3]))
    for name, k in UNIT_TO_MM.items():
        if _EYE_SPAN_MM[0] <= span * k <= _EYE_SPAN_MM[1]:
            return k
    raise ValueError(f"cannot tell the scan's unit: its outer eye corners are {span:g} units apart "
                     "(expected about 90 mm); give the unit explicitly (--scan-unit mm|cm|m)")


def now_landmarks(landmarks68: np.ndarray) -> np.ndarray:
    """(..., 68, 3) iBUG landmarks -> (..., 7, 3) NoW landmarks."""
    lm = np.asarray(landmarks68)
    if lm.shape[-2] != 68:
        raise ValueError(f"expected 68 landmarks, got shape {lm.shape}")
    return lm[..., list(NOW_LANDMARKS_68), :]


# ------------------------------------------------------------------------------------------------ crop

def face_sphere(lmk7: np.ndarray, factor: float = NOW_CROP_FACTOR) -> tuple[np.ndarray, float]:
    """Centre (3,) and radius of NoW's face crop from the scan's 7 landmarks."""
    lm = _check_lmk7(lmk7, "scan landmarks")
    nose_bottom = lm[4]
    bridge = (lm[1] + lm[2]) / 2.0
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = factor * (np.linalg.norm(lm[0] - lm[3]) + np.linalg.norm(bridge - nose_bottom)) / 2.0
    return centre, float(radius)


def crop_face(points: np.ndarray, lmk7: np.ndarray, factor: float = NOW_CROP_FACTOR) -> np.ndarray:
    """Boolean mask of the scan points inside NoW's face sphere."""
    centre, radius = face_sphere(lmk7, factor)
    return np.linalg.norm(np.asarray(points, np.float64) - centre, axis=1) <= radius


def _check_lmk7(lmk7, what: str) -> np.ndarray:
    lm = np.asarray(lmk7, np.float64)
    if lm.shape != (7, 3) or not np.isfinite(lm).all():
        raise ValueError(f"{what} must be 7 finite 3D points (NoW order), got shape {lm.shape}")
    return lm


# ------------------------------------------------------------------------------------------ similarity

@dataclass(frozen=True)
class Similarity:
    """``x -> scale * R @ x + t``."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(x, np.float64) @ self.rotation.T + self.translation

    def inverse_apply(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, np.float64) - self.translation) @ self.rotation / self.scale

    def compose(self, inner: "Similarity") -> "Similarity":
        """self after inner."""
        return Similarity(self.scale * inner.scale, self.rotation @ inner.rotation,
                          self.scale * self.rotation @ inner.translation + self.translation)

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None,
                   scale: bool = True, allow_reflection: bool = False) -> Similarity:
    """Least-squares similarity mapping ``src`` (N, 3) onto ``dst`` (Umeyama 1991). With
    ``allow_reflection`` the orthogonal part is the best one with either determinant (NoW's
    ``procrustes(reflection='best')``: ``U V^T`` of the SVD as it comes), else a proper rotation."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    cov = (xd * w[:, None]).T @ xs  # (3, 3) = sum w dst src^T
    U, S, Vt = np.linalg.svd(cov)
    D = np.eye(3)
    if not allow_reflection and np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    var_s = float(w @ (xs ** 2).sum(1))
    s = float(np.trace(np.diag(S) @ D) / var_s) if scale and var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return Similarity(s, R, t)


# --------------------------------------------------------------------------------- closest points

def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point of triangle (a, b, c) to p, row by row; all (N, 3). Handles degenerate triangles.

    Voronoi-region classification of the point against the triangle's vertices, edges and interior.
    """
    ab, ac, ap = b - a, c - a, p - a
    d1 = np.einsum("ij,ij->i", ab, ap)
    d2 = np.einsum("ij,ij->i", ac, ap)
    bp = p - b
    d3 = np.einsum("ij,ij->i", ab, bp)
    d4 = np.einsum("ij,ij->i", ac, bp)
    cp = p - c
    d5 = np.einsum("ij,ij->i", ab, cp)
    d6 = np.einsum("ij,ij->i", ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    out = np.empty_like(p)
    done = np.zeros(len(p), bool)

    def put(mask, value):
        nonlocal done
        m = mask & ~done
        out[m] = value[m] if value.ndim == 2 else value
        done |= m

    def safe_div(n, d):
        return n / np.where(np.abs(d) > 0, d, 1.0)

    put((d1 <= 0) & (d2 <= 0), a)  # vertex a
    put((d3 >= 0) & (d4 <= d3), b)  # vertex b
    put((d6 >= 0) & (d5 <= d6), c)  # vertex c
    v = safe_div(d1, d1 - d3)
    put((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + v[:, None] * ab)  # edge ab
    w = safe_div(d2, d2 - d6)
    put((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + w[:, None] * ac)  # edge ac
    w = safe_div(d4 - d3, (d4 - d3) + (d5 - d6))
    put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), b + w[:, None] * (c - b))  # edge bc
    denom = va + vb + vc
    inv = safe_div(np.ones_like(denom), denom)
    v, w = vb * inv, vc * inv
    interior = a + v[:, None] * ab + w[:, None] * ac
    # Degenerate triangles (zero area) that reached here: fall back to the nearest of the three edges.
    degenerate = ~done & ~(np.abs(denom) > 0)
    if degenerate.any():
        interior[degenerate] = _closest_on_edges(p[degenerate], a[degenerate], b[degenerate], c[degenerate])
    put(np.ones(len(p), bool), interior)
    return out


def _closest_on_segment(p, a, b):
    ab = b - a
    t = np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300)
    return a + np.clip(t, 0.0, 1.0)[:, None] * ab


def _closest_on_edges(p, a, b, c):
    cands = np.stack([_closest_on_segment(p, a, b), _closest_on_segment(p, b, c), _closest_on_segment(p, c, a)])
    d = ((cands - p[None]) ** 2).sum(-1)
    return cands[d.argmin(0), np.arange(len(p))]


class MeshDistance:
    """Exact closest points on a triangle mesh for many query points (static mesh, queried often).

    Every triangle is covered by sample points (the vertices of a regular subdivision) such that each of
    its points lies within ``delta`` of one of its samples. The nearest sample is a surface point, so the
    distance ``d`` is at most its distance ``s1``; any triangle within ``d`` has a sample within
    ``s1 + delta``: a ball query of radius (nearest sample distance + delta) gathers every candidate.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, delta: float | None = None) -> None:
        self.vertices = np.asarray(vertices, np.float64)
        self.faces = np.asarray(faces, np.int64)
        tri = self.vertices[self.faces]  # (F, 3, 3)
        self._a, self._b, self._c = tri[:, 0], tri[:, 1], tri[:, 2]
        edges = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=-1).max(1)  # longest edge per face
        if delta is None:
            delta = max(float(np.median(edges)), 1e-12)
        self.delta = float(delta)
        # Any point of a triangle is within its longest edge of each corner, so a subdivision into m
        # parts along each edge covers it within (longest edge) / m.
        m = np.maximum(1, np.ceil(edges / self.delta)).astype(np.int64)
        samples, owners = [], []
        for level in np.unique(m):
            sel = np.nonzero(m == level)[0]
            i, j = np.meshgrid(np.arange(level + 1), np.arange(level + 1), indexing="ij")
            keep = (i + j) <= level
            w1, w2 = i[keep] / level, j[keep] / level  # barycentric weights of b and c
            pts = (tri[sel, None, 0] * (1 - w1 - w2)[None, :, None] + tri[sel, None, 1] * w1[None, :, None]
                   + tri[sel, None, 2] * w2[None, :, None])
            samples.append(pts.reshape(-1, 3))
            owners.append(np.repeat(sel, len(w1)))
        self.samples = np.concatenate(samples)
        self.owner = np.concatenate(owners)
        self.tree = cKDTree(self.samples)

    def query(self, points: np.ndarray, exact: bool = True, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 3) points -> unsigned distance (N,), closest surface point (N, 3), face index (N,).

        With ``exact=False`` only the triangles owning the 8 nearest samples are examined: an upper bound,
        almost always exact, used inside the alignment's iterations.
        """
        points = np.asarray(points, np.float64).reshape(-1, 3)
        out = [self._query(points[i:i + chunk], exact) for i in range(0, len(points), chunk)]
        if not out:
            return np.zeros(0), np.zeros((0, 3)), np.zeros(0, np.int64)
        return tuple(np.concatenate(x) for x in zip(*out))

    def _closest_among(self, points, rows, cand):
        """Exact closest point over candidate (row, face) pairs sorted by row -> per-row best."""
        q = closest_points_on_triangles(points[rows], self._a[cand], self._b[cand], self._c[cand])
        d2 = ((q - points[rows]) ** 2).sum(1)
        order = np.lexsort((d2, rows))
        first = order[np.r_[0, np.nonzero(np.diff(rows[order]))[0] + 1]]
        return np.sqrt(d2[first]), q[first], cand[first]

    def _query(self, points: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, n_faces = len(points), len(self.faces)
        k = min(8, len(self.samples))
        _, sidx = self.tree.query(points, k=k)
        sidx = sidx.reshape(n, k)
        key = np.unique(np.arange(n)[:, None] * n_faces + self.owner[sidx])
        dist, closest, face = self._closest_among(points, key // n_faces, key % n_faces)
        if not exact:
            return dist, closest, face
        # Any triangle closer than the current distance d has a sample within d + delta: gather them all.
        lists = self.tree.query_ball_point(points, dist + self.delta * (1 + 1e-9) + 1e-15)
        lens = np.fromiter((len(x) for x in lists), np.int64, count=n)
        flat = np.fromiter((i for x in lists for i in x), np.int64, count=int(lens.sum()))
        key = np.unique(np.repeat(np.arange(n), lens) * n_faces + self.owner[flat])
        d2, q2, f2 = self._closest_among(points, key // n_faces, key % n_faces)
        better = d2 < dist
        dist[better], closest[better], face[better] = d2[better], q2[better], f2[better]
        return dist, closest, face


def scan_to_mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unsigned distance from each point (N, 3) to the surface (V, 3), (F, 3)."""
    return MeshDistance(vertices, faces).query(points)[0]


# ----------------------------------------------------------------------------------------- alignment

def refine_alignment(scan: np.ndarray, mesh: MeshDistance, init: Similarity, iterations: int = 100,
                     tol: float = 1e-12) -> Similarity:
    """Similarity T (applied to the mesh) minimising sum_i dist(scan_i, T(mesh))^2 from `init`.

    T = P o init with P = (s, R, t) a proper similarity, as NoW refines ``s R x + t`` on the landmark-aligned
    mesh (so a reflection in `init` is kept), and like NoW's solver a Gauss-Newton method (with
    Levenberg-Marquardt damping; a step is taken only if it lowers the objective). Residuals are the
    distances d_i = |p_i - q_i| to the closest surface points q_i, which move rigidly with the surface, so
    ``dd_i/dt = -u_i``, ``dd_i/ds = -u_i . (q_i - t) / s``, ``dd_i/dw = u_i x (q_i - t)`` for a rotation
    increment w (``u_i = (p_i - q_i) / d_i``). Closest points are queried in the mesh's frame (the scan
    mapped by T^-1), so the mesh's KD-tree is built once.
    """
    scan = np.asarray(scan, np.float64)

    def evaluate(P: Similarity):
        T = P.compose(init)
        dist, closest, _ = mesh.query(T.inverse_apply(scan), exact=False)
        d = T.scale * dist
        return T, d, T.apply(closest), float(d @ d)

    P = Similarity.identity()
    T, d, q, cost = evaluate(P)
    lam = 1e-6
    for _ in range(iterations):
        # unit directions; a zero residual has no direction and no gradient
        u = np.divide(scan - q, d[:, None], out=np.zeros_like(q), where=d[:, None] > 0)
        a = q - P.translation
        J = np.concatenate([-(u * a).sum(1, keepdims=True) / P.scale, np.cross(u, a), -u], 1)
        H, g = J.T @ J, J.T @ d
        while True:
            step = np.linalg.solve(H + lam * np.diag(np.diag(H)) + 1e-300 * np.eye(7), -g)
            rot = Rotation.from_rotvec(step[1:4]).as_matrix()
            cand = Similarity(P.scale + step[0], rot @ P.rotation, P.translation + step[4:])
            T2, d2, q2, cost2 = evaluate(cand) if cand.scale > 0 else (None, None, None, np.inf)
            if cost2 < cost:
                break
            lam *= 10.0
            if lam > 1e8:
                return T
        converged = cost - cost2 <= tol * cost
        P, T, d, q, cost, lam = cand, T2, d2, q2, cost2, lam / 3.0
        if converged:
            break
    return T


@dataclass
class NowErrors:
    """Result for one scan: `distances` in millimetres (one per cropped scan point)."""

    distances: np.ndarray
    transform: Similarity  # maps the predicted mesh into the scan's frame
    crop: np.ndarray  # bool mask over the scan points
    aligned_vertices: np.ndarray = field(repr=False)

    @property
    def median(self) -> float:
        return float(np.median(self.distances))

    @property
    def mean(self) -> float:
        return float(np.mean(self.distances))

    @property
    def std(self) -> float:
        return float(np.std(self.distances))


def now_errors(scan_points: np.ndarray, scan_lmk7: np.ndarray, pred_vertices: np.ndarray,
               pred_faces: np.ndarray, pred_lmk7: np.ndarray, refine: bool = True, crop: bool = True,
               units_to_mm: float = 1000.0, crop_factor: float = NOW_CROP_FACTOR,
               refine_iterations: int = 100, allow_reflection: bool = True) -> NowErrors:
    """NoW error of one predicted mesh against one scan (see the module docstring).

    Args:
        scan_points: (N, 3) ground-truth scan vertices; scan_lmk7: (7, 3) their NoW landmarks.
        pred_vertices, pred_faces: the predicted mesh; pred_lmk7: (7, 3) its NoW landmarks.
        refine: run the scan-to-mesh refinement of the alignment (NoW does).
        crop: keep only the scan points in NoW's face sphere (NoW does).
        units_to_mm: the scan's unit in mm: 1000 for metres (FLAME), 1 for millimetres (NoW's scans).
        allow_reflection: NoW's landmark Procrustes (``reflection='best'``); False forces a rotation.
    """
    scan_points = np.asarray(scan_points, np.float64)
    scan_lmk7 = _check_lmk7(scan_lmk7, "scan landmarks")
    pred_lmk7 = _check_lmk7(pred_lmk7, "predicted landmarks")
    mask = crop_face(scan_points, scan_lmk7, crop_factor) if crop else np.ones(len(scan_points), bool)
    scan = scan_points[mask]
    if len(scan) == 0:
        raise ValueError("no scan point lies in the face crop; are the scan landmarks in the scan's units?")
    T = fit_similarity(pred_lmk7, scan_lmk7, allow_reflection=allow_reflection)
    mesh = MeshDistance(pred_vertices, pred_faces)
    if refine:
        T = refine_alignment(scan, mesh, T, iterations=refine_iterations)
    dist, _, _ = mesh.query(T.inverse_apply(scan))
    return NowErrors(distances=dist * T.scale * units_to_mm, transform=T, crop=mask,
                     aligned_vertices=T.apply(pred_vertices))


def summarize(distances) -> dict[str, float]:
    """NoW's statistics over all distances of all scans (a list of arrays or one array), in mm."""
    d = np.concatenate([np.ravel(x) for x in distances]) if isinstance(distances, (list, tuple)) else np.ravel(distances)
    return {"median_mm": float(np.median(d)), "mean_mm": float(np.mean(d)), "std_mm": float(np.std(d)),
            "n_points": int(d.size)}
