"""`deca-blender eval now` on a miniature NoW tree in NoW's own layout and formats, against an independent
implementation of the official steps written here (github soubhiksanyal/now_evaluation:
``compute_error.py`` ``metric_computation``/``load_pp``, ``scan2mesh_computations.py`` ``compute_mask``,
``crop_face_scan``, ``procrustes(scaling=True, reflection='best')``, ``rigid_scan_2_mesh_alignment``):

1. scan vertices within ``1.4 (|outer eyes| + |bridge - nose bottom|) / 2`` of ``nose_bottom + 0.3 (bridge -
   nose_bottom)`` (scan landmarks, scan units = mm);
2. Procrustes of the predicted 7 landmarks Y onto the scan's X: centred, unit-Frobenius-normalised,
   ``U, s, Vt = svd(X0^T Y0)``, ``T = V U^T`` (any determinant), ``b = sum(s) |X0| / |Y0|``,
   ``aligned = b Y T + (mean X - b mean Y T)``;
3. refinement: ``min_{s, r, t} sum_i dist(scan_i, s R(r) aligned + t)^2`` (here Gauss-Newton with an
   analytic Jacobian and brute-force point-triangle distances);
4. per image: the distances of the cropped scan vertices to the refined surface, in mm.

The tree: two subjects (one scan .obj each, in mm; Meshlab .pp landmarks), four predictions (.obj + .npy in
metres, binary .ply + .txt, a mirrored .obj + .txt, ascii .ply + .npy) and one listed image without a
prediction. Surfaces are face-like height fields, small enough for brute force.
"""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from core.evaluation.now import now_errors
from core.evaluation.now_files import read_landmarks, read_mesh, read_ply, read_pp

LMK_XY = np.array([[-45, 30], [-15, 30], [15, 30], [45, 30], [0, -8], [-25, -38], [25, -38]], np.float64)


# --------------------------------------------------------------------------------- face-like surfaces

def face_height(x, y):
    """A face-like height field in mm: a rounded dome, a nose, brow ridges, an asymmetric cheek."""
    return (40 * np.exp(-(x ** 2 + y ** 2) / (2 * 70.0 ** 2))
            + 16 * np.exp(-(x ** 2 / (2 * 7.0 ** 2) + (y - 4) ** 2 / (2 * 16.0 ** 2)))
            + 4 * np.exp(-((np.abs(x) - 30) ** 2 / (2 * 14.0 ** 2) + (y - 40) ** 2 / (2 * 6.0 ** 2)))
            + 3 * np.exp(-((x - 40) ** 2 + (y + 20) ** 2) / (2 * 15.0 ** 2)))


def grid_mesh(extent, step, height):
    c = np.arange(-extent, extent + 1e-9, step)
    x, y = np.meshgrid(c, c)
    v = np.stack([x.ravel(), y.ravel(), height(x.ravel(), y.ravel())], 1)
    n = len(c)
    idx = np.arange(n * n).reshape(n, n)
    a, b, cc, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    f = np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, cc], 1)])
    return v, f


def on_surface(xy, height):
    return np.column_stack([xy, height(xy[:, 0], xy[:, 1])])


# ----------------------------------------------------------------------------- NoW's formats, written

def write_obj(path: Path, v, f=None):
    lines = [f"v {a:.9g} {b:.9g} {c:.9g}" for a, b, c in v]
    if f is not None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


def write_ply(path: Path, v, f, binary: bool):
    head = ["ply", "format binary_little_endian 1.0" if binary else "format ascii 1.0", "comment test",
            f"element vertex {len(v)}", "property float x", "property float y", "property float z",
            "property uchar red", "property uchar green", "property uchar blue",
            f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    if binary:
        vd = np.zeros(len(v), [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        vd["x"], vd["y"], vd["z"] = v.T
        fd = np.zeros(len(f), [("n", "u1"), ("i", "<i4", 3)])
        fd["n"], fd["i"] = 3, f
        path.write_bytes(("\n".join(head) + "\n").encode() + vd.tobytes() + fd.tobytes())
    else:
        body = [f"{a:.7g} {b:.7g} {c:.7g} 200 180 160" for a, b, c in v] + [f"3 {a} {b} {c}" for a, b, c in f]
        path.write_text("\n".join(head + body) + "\n")


def write_pp(path: Path, lmk):
    head = ['<!DOCTYPE PickedPoints>', '<PickedPoints>', ' <DocumentData>',
            '  <DateTime time="12:00:00" date="2019-03-01"/>', '  <User name="annotator"/>',
            '  <DataFileName name="scan.obj"/>', '  <templateName name=""/>', ' </DocumentData>']
    pts = [f' <point x="{x:.6f}" y="{y:.6f}" z="{z:.6f}" active="1" name="{k + 1}"/>'
           for k, (x, y, z) in enumerate(lmk)]
    path.write_text("\n".join(head + pts + ['</PickedPoints>']) + "\n")


def write_txt(path: Path, lmk):
    path.write_text("\n".join(f"{x:.9g} {y:.9g} {z:.9g}" for x, y, z in lmk) + "\n")


# ------------------------------------------------------------------- the official steps, independently

def closest_on_triangles(p, tri):
    """p (N, 3), tri (F, 3, 3) -> closest points (N, F, 3), by plane projection or the nearest edge."""
    a, b, c = (tri[None, :, k] for k in range(3))
    p = p[:, None]
    n = np.cross(b - a, c - a)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    proj = p - ((p - a) * n).sum(-1, keepdims=True) * n
    v0, v1, v2 = b - a, c - a, proj - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 ** 2
    bv, bw = (d11 * d20 - d01 * d21) / den, (d00 * d21 - d01 * d20) / den
    inside = (bv >= 0) & (bw >= 0) & (bv + bw <= 1)

    def seg(s, e):
        t = np.clip(((p - s) * (e - s)).sum(-1) / ((e - s) ** 2).sum(-1), 0, 1)
        return s + t[..., None] * (e - s)

    cands = np.stack([seg(a, b), seg(b, c), seg(c, a)])  # (3, N, F, 3)
    best = cands[np.argmin(((cands - p[None]) ** 2).sum(-1), 0), np.arange(p.shape[0])[:, None],
                 np.arange(tri.shape[0])[None]]
    return np.where(inside[..., None], proj, best)


def closest_on_mesh(p, v, f):
    q = closest_on_triangles(p, v[f])
    d = np.linalg.norm(q - p[:, None], axis=-1)
    j = d.argmin(1)
    return d[np.arange(len(p)), j], q[np.arange(len(p)), j]


def official_procrustes(X, Y):
    muX, muY = X.mean(0), Y.mean(0)
    X0, Y0 = X - muX, Y - muY
    normX, normY = np.sqrt((X0 ** 2).sum()), np.sqrt((Y0 ** 2).sum())
    X0, Y0 = X0 / normX, Y0 / normY
    U, s, Vt = np.linalg.svd(X0.T @ Y0, full_matrices=False)
    T = Vt.T @ U.T
    b = s.sum() * normX / normY
    return b, T, muX - b * muY @ T


def official_now_distances(scan_v, scan_lmk, pred_v, pred_f, pred_lmk, reflection="best"):
    nose_bottom, bridge = scan_lmk[4], (scan_lmk[1] + scan_lmk[2]) / 2
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = 1.4 * (np.linalg.norm(scan_lmk[0] - scan_lmk[3]) + np.linalg.norm(bridge - nose_bottom)) / 2
    pts = scan_v[np.linalg.norm(scan_v - centre, axis=1) <= radius]
    b, T, c = official_procrustes(scan_lmk, pred_lmk)
    assert reflection == "best"
    Y = b * pred_v @ T + c
    # Gauss-Newton (Levenberg-Marquardt damping) on sum_i dist(p_i, s R Y + t)^2
    s, R, t, lam = 1.0, np.eye(3), np.zeros(3), 1e-6

    def cost_of(s, R, t):
        d, q = closest_on_mesh(pts, s * Y @ R.T + t, pred_f)
        return float((d ** 2).sum()), d, q

    cost, d, q = cost_of(s, R, t)
    for _ in range(200):
        u = (pts - q) / np.maximum(d, 1e-12)[:, None]
        a = q - t
        J = np.concatenate([-(u * a).sum(1, keepdims=True) / s, np.cross(u, a), -u], 1)  # d r / d(s, w, t)
        H, g = J.T @ J, J.T @ d
        step = np.linalg.solve(H + lam * np.diag(np.diag(H)), -g)
        s2, R2, t2 = s + step[0], Rotation.from_rotvec(step[1:4]).as_matrix() @ R, t + step[4:]
        c2, d2, q2 = cost_of(s2, R2, t2)
        if c2 < cost:
            done = cost - c2 <= 1e-10 * cost
            s, R, t, cost, d, q, lam = s2, R2, t2, c2, d2, q2, lam / 3
            if done:
                break
        else:
            lam *= 10
            if lam > 1e8:
                break
    return d


# ------------------------------------------------------------------------------------------- the tree

@pytest.fixture(scope="module")
def now_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("now")
    data, pred = root / "NoW_Dataset", root / "predictions"
    rng = np.random.default_rng(7)
    scan_height = {"FaMoS_180424_03335_TA": lambda x, y: face_height(x, y) + 0.8 * np.sin(x / 15) * np.cos(y / 20),
                   "FaMoS_180426_03336_TA": lambda x, y: face_height(x, y) * 1.05 + 0.5 * np.cos(x / 11)}
    scan_pose = {"FaMoS_180424_03335_TA": (np.eye(3), np.zeros(3)),
                 "FaMoS_180426_03336_TA": (Rotation.from_rotvec([0.1, -0.3, 0.05]).as_matrix(),
                                           np.array([12.0, -40.0, 800.0]))}
    scans = {}
    for subject, h in scan_height.items():
        R, t = scan_pose[subject]
        sv, _ = grid_mesh(100, 10, h)
        sv = sv @ R.T + t
        lmk = on_surface(LMK_XY, h) @ R.T + t
        (data / "scans" / subject).mkdir(parents=True)
        (data / "scans_lmks_onlypp" / subject).mkdir(parents=True)
        write_obj(data / "scans" / subject / f"{subject[6:19]}.obj", sv)  # NoW's scans: vertices in mm
        write_pp(data / "scans_lmks_onlypp" / subject / f"{subject[6:19]}_picked_points.pp", lmk)
        scans[subject] = (sv, lmk)
    A, B = scan_height
    fh = face_height
    cases = [  # subject, experiment, image, surface, unit (prediction), mirrored, mesh format, landmark format
        (A, "multiview_neutral", "IMG_0041", lambda x, y: fh(x, y) + 0.4 * np.cos(x / 25), 1e-3, False, "obj", "npy"),
        (A, "multiview_expressions", "IMG_0068", lambda x, y: fh(x, y) * 0.97 + 0.3 * np.sin(y / 9), 1e-3, False,
         "ply_bin", "txt"),
        (B, "selfie", "IMG_0102", lambda x, y: fh(x, y) * 1.02 + 0.6 * np.sin(x / 13 + y / 17), 1e-3, True,
         "obj", "txt"),
        (B, "multiview_neutral", "IMG_0007", lambda x, y: fh(x, y) + 0.2 * x / 50, 1.0, False, "ply_ascii", "npy"),
    ]
    lines, expected = [], {}
    for subject, exp, img, h, unit, mirror, mfmt, lfmt in cases:
        v, f = grid_mesh(108, 12, h)
        lmk = on_surface(LMK_XY, h)
        R = Rotation.from_rotvec(rng.normal(scale=0.4, size=3)).as_matrix()
        t = rng.normal(scale=50, size=3)
        M = np.diag([-1.0, 1, 1]) if mirror else np.eye(3)
        v, lmk = (v @ M.T @ R.T + t) * unit, (lmk @ M.T @ R.T + t) * unit
        if mirror:
            f = f[:, ::-1]  # keep the surface's orientation consistent, as a mirrored export would
        folder = pred / subject / exp
        folder.mkdir(parents=True, exist_ok=True)
        if mfmt == "obj":
            write_obj(folder / f"{img}.obj", v, f)
        else:
            write_ply(folder / f"{img}.ply", v.astype(np.float32).astype(np.float64), f, binary=mfmt == "ply_bin")
            v = v.astype(np.float32).astype(np.float64)  # what the file holds
        if lfmt == "npy":
            np.save(folder / f"{img}.npy", lmk)
        else:
            write_txt(folder / f"{img}.txt", lmk)
            lmk = np.loadtxt(folder / f"{img}.txt")
        lines.append(f"{subject}/{exp}/{img}.jpg")
        expected[f"{subject}/{exp}/{img}"] = official_now_distances(*scans[subject], v, f, lmk)
    lines.insert(2, f"{B}/multiview_occlusions/IMG_0200.jpg")  # listed, never predicted
    (data / "imagepathsvalidation.txt").write_text("\n".join(lines) + "\n")
    return dict(data=data, pred=pred, expected=expected, scans=scans, cases=cases,
                missing=f"{B}/multiview_occlusions/IMG_0200")


# --------------------------------------------------------------------------------------------- tests

def test_now_files_are_read_as_written(now_tree):
    data = now_tree["data"]
    for subject, (sv, lmk) in now_tree["scans"].items():
        pp = next((data / "scans_lmks_onlypp" / subject).glob("*.pp"))
        np.testing.assert_allclose(read_pp(pp), lmk, atol=1e-6)
        np.testing.assert_allclose(read_landmarks(pp), lmk, atol=1e-6)
        v, f = read_mesh(next((data / "scans" / subject).glob("*.obj")))
        np.testing.assert_allclose(v, sv, rtol=1e-8)
        assert f.shape == (0, 3)
    # the binary and the ascii PLY hold the same kind of mesh
    for ply in now_tree["pred"].rglob("*.ply"):
        v, f = read_ply(ply)
        assert v.shape == (19 * 19, 3) and f.shape == (2 * 18 * 18, 3) and f.max() == len(v) - 1


def test_bad_now_files_are_refused_with_the_file_named(tmp_path):
    (tmp_path / "few.pp").write_text('<PickedPoints><point x="1" y="2" z="3"/></PickedPoints>')
    with pytest.raises(ValueError, match="few.pp.*1 picked points"):
        read_pp(tmp_path / "few.pp")
    (tmp_path / "bad.txt").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(ValueError, match="bad.txt.*7 landmarks"):
        read_landmarks(tmp_path / "bad.txt")
    (tmp_path / "x.ply").write_bytes(b"ply\nformat binary_big_endian 1.0\nelement vertex 1\nproperty float x\n"
                                     b"end_header\n\0\0\0\0")
    with pytest.raises(ValueError, match="x.ply.*lack x, y or z"):
        read_ply(tmp_path / "x.ply")


def test_eval_now_on_nows_layout_matches_the_official_steps(now_tree):
    from core.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["eval", "now", "--gt", str(now_tree["data"]), "--pred", str(now_tree["pred"]), "--json"])
    assert rc == 0
    report = json.loads(buf.getvalue())
    assert report["missing"] == [now_tree["missing"]]
    items = {it["name"]: it for it in report["items"]}
    assert set(items) == set(now_tree["expected"])
    worst = 0.0
    for name, ref in now_tree["expected"].items():
        it = items[name]
        assert it["scan_unit_to_mm"] == 1.0  # read from the data: NoW's scans are in mm
        assert it["n_points"] == len(ref)
        for key, value in (("median_mm", np.median(ref)), ("mean_mm", np.mean(ref)), ("std_mm", np.std(ref))):
            assert it[key] == pytest.approx(value, abs=2e-3), (name, key, it[key], value)
            worst = max(worst, abs(it[key] - value))
        assert 0.05 < it["median_mm"] < 1.5, (name, it["median_mm"])  # millimetres, not metres or microns
    all_ref = np.concatenate(list(now_tree["expected"].values()))
    assert report["overall"]["median_mm"] == pytest.approx(np.median(all_ref), abs=2e-3)
    assert report["overall"]["n_points"] == all_ref.size
    mirrored = [n for n, it in items.items() if it["reflected"]]
    assert mirrored == [f"FaMoS_180426_03336_TA/selfie/IMG_0102"]
    print(f"\n[NoW layout] {len(items)} images, per-image median/mean/std within {worst:.1e} mm of the official "
          f"steps; mirrored median {items[mirrored[0]]['median_mm']:.3f} mm")


def test_the_reflection_rule_matters_for_a_mirrored_prediction(now_tree):
    subject, exp, img = "FaMoS_180426_03336_TA", "selfie", "IMG_0102"
    sv, slmk = now_tree["scans"][subject]
    v, f = read_mesh(now_tree["pred"] / subject / exp / f"{img}.obj")
    lmk = read_landmarks(now_tree["pred"] / subject / exp / f"{img}.txt")
    best = now_errors(sv, slmk, v, f, lmk, units_to_mm=1.0)
    proper = now_errors(sv, slmk, v, f, lmk, units_to_mm=1.0, allow_reflection=False)
    assert best.median == pytest.approx(np.median(now_tree["expected"][f"{subject}/{exp}/{img}"]), abs=2e-3)
    assert proper.median > 3 * best.median, (proper.median, best.median)


def test_scan_units_are_read_from_the_data_or_forced(now_tree, tmp_path):
    """The same scan in metres gives the same millimetres; forcing the wrong unit scales them 1000x; a
    scan of no plausible size is refused."""
    from core.evaluation.now_layout import evaluate_now_layout

    data = tmp_path / "NoW_m"
    for sub in ("scans", "scans_lmks_onlypp"):
        for d in (now_tree["data"] / sub).iterdir():
            (data / sub / d.name).mkdir(parents=True)
    for subject, (sv, lmk) in now_tree["scans"].items():
        write_obj(data / "scans" / subject / "scan.obj", sv / 1000.0)
        write_pp(data / "scans_lmks_onlypp" / subject / "scan.pp", lmk / 1000.0)
    (data / "imagepathsvalidation.txt").write_text((now_tree["data"] / "imagepathsvalidation.txt").read_text())
    ref = evaluate_now_layout(now_tree["data"], now_tree["pred"], challenge="selfie")
    metres = evaluate_now_layout(data, now_tree["pred"], challenge="selfie")
    assert [it["name"] for it in metres["items"]] == ["FaMoS_180426_03336_TA/selfie/IMG_0102"]
    assert metres["items"][0]["scan_unit_to_mm"] == 1000.0
    assert metres["items"][0]["median_mm"] == pytest.approx(ref["items"][0]["median_mm"], rel=1e-3)
    forced = evaluate_now_layout(data, now_tree["pred"], challenge="selfie", scan_unit="mm")
    assert forced["items"][0]["median_mm"] == pytest.approx(ref["items"][0]["median_mm"] / 1000, rel=1e-3)
    for subject, (sv, lmk) in now_tree["scans"].items():
        write_pp(data / "scans_lmks_onlypp" / subject / "scan.pp", lmk * 1e-5)
    from core.evaluation.dataset import EvaluationError
    with pytest.raises(EvaluationError, match="cannot tell the scan's unit"):
        evaluate_now_layout(data, now_tree["pred"], challenge="selfie")
