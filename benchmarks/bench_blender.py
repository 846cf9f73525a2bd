"""Blender add-on timings: a result folder to a finished head, and Import Photo cold and warm, with a baseline.

    .venv/bin/python benchmarks/bench_blender.py [--repeats 5] [--rounds 2] [--no-baseline]

Builds the extension zip and a result folder from the FLAME-format TEST model (same topology and
array sizes as a real result), then, in a bpy subprocess (bpy never shares a process with torch),
installs the extension into a scratch Blender configuration and times `deca.import_result` until the
head is evaluated (drivers run, the mesh skinned: what the viewport would show). When the reconstruction
pipeline exists it also times `deca.import_photo` through the add-on's worker (with the installed model
files, or, without DECA's checkpoint, the TEST model and randomly initialised networks: same computation):

  * cold: a fresh worker, nothing warmed up, the photo imported at once (also: the very first import
    after installing the extension, which compiles the bundled core's bytecode as well);
  * warm: the worker up and the models loaded (median of --repeats); alternating with each, the same
    import with its early parts off (`early_parts=False`: the scene built only after the worker's answer,
    as before the overlap), so that the overlap's gain is measured in the same session;
  * after the add-on's warm-up (deca_blender/warmup.py: with Blender, or when the file browser opens),
    how long that warm-up takes, and the import started together with the warm-up (zero gap);
  * stage times: worker start, imports, model and detector load, the worker's reconstruction stages,
    and the scene's (mesh, shape keys, ARKit-52, identity keys, node groups, material, ...), with the
    scene's seconds built while the worker still worked (its early parts) and after its answer.

The baseline is the tree issue 11 was filed against (BASELINE_COMMIT, extracted with `git archive`), run
with its own bench_blender.py in the same session, interleaved with this tree's runs (--rounds each);
without git the issue's filed numbers are printed instead, labelled as not measured here. Prints
baseline, now and ratio with the 1-minute load average; writes benchmarks/results/blender.json.
Targets (issue 11): Import Photo <= 1.5 s warm, <= 4 s cold.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "blender.json"


def inside_blender(zip_path: str, result: str, repeats: int, photo: str, out_json: str) -> None:
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)

    def finished_head(op, **kw) -> float:
        t = time.perf_counter()
        op(**kw)
        obj = bpy.context.active_object
        bpy.context.view_layer.update()
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        ev.to_mesh()
        ev.to_mesh_clear()
        return time.perf_counter() - t

    times = [finished_head(bpy.ops.deca.import_result, filepath=result) for _ in range(repeats + 1)]
    out = {"result_to_head_first_s": times[0], "result_to_head_s": times[1:],
           "result_to_head_median_s": statistics.median(times[1:]), "heads_in_scene": repeats + 1}
    # Moving a slider: drivers + skinning re-evaluated.
    obj = bpy.context.active_object
    kb = obj.data.shape_keys.key_blocks["exp_003"]
    ts = []
    for i in range(20):
        kb.value = 0.1 * i
        t = time.perf_counter()
        bpy.context.view_layer.update()
        ts.append(time.perf_counter() - t)
    out["slider_update_median_s"] = statistics.median(ts)

    if photo:
        out.update(_photo_timings(photo, repeats, finished_head))
    Path(out_json).write_text(json.dumps(out))


def _photo_timings(photo: str, repeats: int, finished_head) -> dict:
    """Import Photo through the add-on's worker, inside Blender: cold (a fresh worker, no warm-up), warm, and
    after the add-on's warm-up (the worker started with Blender or when the file browser opened), with the
    worker's and the scene's stage times. Runs only the add-on's public operators and its warm-up."""
    import importlib

    import bpy

    addon = next(k for k in bpy.context.preferences.addons.keys() if k.endswith("deca_blender"))
    prefs_mod = importlib.import_module(addon + ".preferences")
    ops_mod = importlib.import_module(addon + ".operators.import_ops")
    warmup = importlib.import_module(addon + ".warmup") if importlib.util.find_spec(addon + ".warmup") else None
    out: dict = {}

    def photo_import(label: str, **kw) -> dict:
        seconds = finished_head(bpy.ops.deca.import_photo, filepath=photo, **kw)
        return {"label": label, "seconds": seconds, **dict(getattr(ops_mod, "last_photo_import", {}))}

    sequential_switch = "early_parts" in bpy.ops.deca.import_photo.get_rna_type().properties.keys()

    client = prefs_mod.worker_client()
    try:
        # 1. The very first import after installing the extension: also compiles the bundled core's bytecode.
        out["cold_first_after_install"] = photo_import("fresh worker, first run after install")
        # 2. Warm: the worker is up, the models loaded.
        warm, sequential = [], []
        for i in range(max(1, repeats)):
            if sequential_switch:  # the same import without its early parts, alternating which goes first
                pair = [lambda: warm.append(photo_import("warm")),
                        lambda: sequential.append(photo_import("warm, sequential", early_parts=False))]
                for run in (pair if i % 2 == 0 else pair[::-1]):
                    run()
            else:
                warm.append(photo_import("warm"))
        out["warm"] = warm
        out["warm_median_s"] = statistics.median(w["seconds"] for w in warm)
        if sequential:  # scene built after the worker's answer, as before the early parts: same session, interleaved
            out["warm_sequential"] = sequential
            out["warm_sequential_median_s"] = statistics.median(w["seconds"] for w in sequential)
        # 3. Cold on first use: a fresh worker, nothing warmed up, the photo imported at once.
        client.stop()
        out["cold_first_use"] = photo_import("fresh worker, no warm-up")
        # 4. Where a cold start goes: the worker process, then `load` (imports, models, detector).
        client.stop()
        t = time.perf_counter()
        client.start()
        start_s = time.perf_counter() - t
        if warmup is not None:
            t = time.perf_counter()
            load = client.call("load", timeout=600, **warmup.load_settings(prefs_mod.get_prefs()))
            out["cold_stages_s"] = {"worker start": start_s, **load["timings"],
                                    "load total": time.perf_counter() - t}
            out["after_load"] = photo_import("first photo after load")
            # 5. The warm-up as the add-on runs it (with Blender or when the browser opens): how long the user
            # must take to pick a photo for the first import to be warm, and the import right after it.
            client.stop()
            t = time.perf_counter()
            job = warmup.start()
            job.wait(600)
            out["warm_up_s"] = time.perf_counter() - t
            out["after_warm_up"] = photo_import("first photo after the add-on's warm-up")
            # 6. The warm-up started and the photo imported at once (a user who picks instantly, or a script).
            client.stop()
            t = time.perf_counter()
            warmup.start()
            out["zero_gap"] = photo_import("warm-up started, photo imported at once")
            out["zero_gap"]["seconds_from_warm_up_start"] = time.perf_counter() - t
    except RuntimeError as exc:
        out["photo_to_head"] = f"failed: {exc}"
    finally:
        client.stop()
    return out


BASELINE_COMMIT = "9ba048b"  # the tree issue 11 was filed against
FILED = {"cold_s": 13.3, "warm_s": 4.43}  # issue 11's Import Photo, quiet 2-core AMD EPYC (not this machine)
TARGETS = {"warm_s": 1.5, "cold_s": 4.0}
WRINKLE_BUDGET_S = 0.4  # the wrinkle model's own target (issue 11), used for the projection below


def measure_now(args, shared: Path) -> dict:
    """One Blender run of this tree: a result folder and a photo to heads (see `inside_blender`)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from blender_fixtures import build_result_folder

    from core.flame import load_flame_model
    from core.testmodels.synthetic_flame import write_test_flame
    from deca_blender.packaging import build_extension

    with tempfile.TemporaryDirectory(prefix="bench_blender_") as tmp:
        tmp = Path(tmp)
        flame = write_test_flame(tmp / "test_flame.pkl", shared / "assets" / "deca",
                                 shared / "assets" / "flame" / "flame2020_joint_regressor.npz")
        result = build_result_folder(tmp / "photo", load_flame_model(flame), shared / "assets" / "deca")
        zip_path = build_extension(tmp / "dist")
        photo, photo_note, photo_setup = "-", None, None
        env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp / "blender_user"))
        photos = sorted((shared / "photos").glob("*.jpg"))
        if importlib.util.find_spec("core.pipeline.reconstruct") is None:
            photo_note = "skipped: core.pipeline.reconstruct does not exist yet"
        elif not photos:
            photo_note = f"skipped: no photos in {shared / 'photos'}"
        else:
            from core.assets import AssetManager

            photo = str(photos[0])
            if not AssetManager().missing():
                photo_setup = "installed model files (DECA checkpoint)"
            else:
                # Without DECA's licensed checkpoint: the TEST model, DECA's data, a checkpoint in DECA's
                # layout with random weights. The computation (and so the time) is the same; the faces
                # are meaningless.
                from core.networks import build_deca_networks, save_deca_checkpoint

                home = tmp / "assets"
                ckpt = save_deca_checkpoint(build_deca_networks(), tmp / "deca_model.tar")
                AssetManager(home).install(flame=flame, data=shared / "assets" / "deca", deca=ckpt,
                                           progress=lambda m: None)
                env.update(DECA_BLENDER_HOME=str(home))
                photo_setup = "TEST model + DECA data + randomly initialised networks (no DECA checkpoint here)"
            # The shared wrinkle basis is built once per checkpoint and cached (core.pipeline.wrinkle_cache):
            # build it here, in this run's own cache folder, so that "cold" is a fresh worker after a restart
            # (the usual case); the one-time build is timed on its own.
            env["DECA_BLENDER_CACHE"] = str(tmp / "wrinkle_cache")
            os.environ["DECA_BLENDER_CACHE"] = env["DECA_BLENDER_CACHE"]
            from core.pipeline.reconstruct import Reconstructor

            t = time.perf_counter()
            Reconstructor(AssetManager(env.get("DECA_BLENDER_HOME")), device="cpu").shared_wrinkle_basis()
            basis_s = time.perf_counter() - t
        out_json = tmp / "inside.json"
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--inside-blender", str(zip_path), str(result),
                               str(args.repeats), photo, str(out_json)], env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out_json.is_file():
            raise RuntimeError(f"the Blender run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        inside = json.loads(out_json.read_text())
        inside["subprocess_total_s"] = time.perf_counter() - t
    if photo_note:
        inside["photo_to_head"] = photo_note
    else:
        inside["wrinkle_basis_once_per_checkpoint_s"] = basis_s
    if photo_setup:
        inside["photo_setup"] = photo_setup
        inside["photo"] = Path(photo).name
    return inside


def baseline_tree(tmp: Path) -> Path | None:
    """The baseline commit's tree, extracted from this repository's history (None without git or the commit)."""
    dest = tmp / "baseline"
    dest.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_COMMIT], capture_output=True,
                                 check=True, timeout=120).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    return dest if (dest / "benchmarks" / "bench_blender.py").is_file() else None


def measure_baseline(tree: Path, repeats: int, shared: Path) -> dict:
    """The baseline tree's own bench_blender.py (the method the filed numbers came from): Import Photo cold
    (the first, starting the worker) and warm, with its worker's stage times."""
    env = dict(os.environ, PYTHONPATH=str(tree), DECA_SHARED=str(shared))
    proc = subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_blender.py"), "--repeats", str(repeats)],
                          cwd=tree, env=env, capture_output=True, text=True)
    path = tree / "benchmarks" / "results" / "blender.json"
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"the baseline run failed:\n{proc.stderr[-3000:]}")
    r = json.loads(path.read_text())
    path.unlink()
    return {"cold_s": r["photo_to_head_cold_s"], "warm_s": r["photo_to_head_warm_median_s"],
            "worker_stage_timings_s": r.get("worker_stage_timings_s"), "result_to_head_s": r["result_to_head_median_s"]}


def summarise(now_runs: list[dict], base_runs: list[dict], baseline_label: str) -> dict:
    med = statistics.median

    def pick(key, sub="seconds"):
        vals = [r[key][sub] for r in now_runs if isinstance(r.get(key), dict) and sub in r[key]]
        return med(vals) if vals else None

    now = {
        "warm_s": med(r["warm_median_s"] for r in now_runs),
        "cold_s": pick("cold_first_use"),
        "cold_first_after_install_s": pick("cold_first_after_install"),
        "after_warm_up_s": pick("after_warm_up"),
        "warm_up_s": med(r["warm_up_s"] for r in now_runs) if all("warm_up_s" in r for r in now_runs) else None,
        "zero_gap_s": pick("zero_gap", "seconds_from_warm_up_start"),
    }
    base = {k: med(b[k] for b in base_runs) for k in ("cold_s", "warm_s")} if base_runs else dict(FILED)
    if base_runs:  # the baseline's own breakdown: its worker's stages and a result folder to a head
        keys = set().union(*(b.get("worker_stage_timings_s") or {} for b in base_runs))
        base["warm_worker_stages_s"] = {k: med((b.get("worker_stage_timings_s") or {}).get(k, 0.0) for b in base_runs)
                                        for k in sorted(keys)}
        base["result_to_head_s"] = med(b["result_to_head_s"] for b in base_runs)
    now["result_to_head_s"] = med(r["result_to_head_median_s"] for r in now_runs)
    # The wrinkle model is another change's work (target <= 0.4 s): each time again with the wrinkle model
    # measured in that very import replaced by its budget (a projection, labelled as such).
    def budgeted(key):
        vals = [r[key]["seconds"] - max(0.0, r[key]["worker"].get("wrinkle model", 0.0) - WRINKLE_BUDGET_S)
                for r in now_runs if isinstance(r.get(key), dict) and "worker" in r[key]]
        return med(vals) if vals else None

    now["warm_with_wrinkle_budget_s"] = med(
        w["seconds"] - max(0.0, w["worker"].get("wrinkle model", 0.0) - WRINKLE_BUDGET_S)
        for r in now_runs for w in r["warm"])
    now["cold_with_wrinkle_budget_s"] = budgeted("cold_first_use")
    now["wrinkle_model_s"] = med(w["worker"].get("wrinkle model", 0.0) for r in now_runs for w in r["warm"])
    # Where a warm import goes (medians over every warm import of every run).
    stages = {}
    for r in now_runs:
        for w in r["warm"]:
            for part in ("worker", "scene"):
                for k, v in w.get(part, {}).items():
                    stages.setdefault(f"{part}: {k}", []).append(v)
    seq = [r["warm_sequential_median_s"] for r in now_runs if "warm_sequential_median_s" in r]
    if seq:  # the same add-on with the early parts off (Import Photo's early_parts=False), interleaved per import
        now["warm_sequential_s"] = med(seq)
        now["warm_over_sequential"] = now["warm_s"] / now["warm_sequential_s"]
    # Import Photo builds each head's first parts while the worker still works (the rig, then the wrinkle
    # model, sent ahead): the scene's seconds before the worker's answer and after it (the latter adds to the
    # request; the former overlaps it).
    for key in ("scene_while_worker", "scene_after_result"):
        vals = [w[key] for r in now_runs for w in r["warm"] if key in w]
        if vals:
            now[f"warm_{key}_s"] = med(vals)
    warm_total = now["warm_s"]
    now["warm_stages_s"] = {k: med(v) for k, v in stages.items()}
    now["warm_stage_share"] = {k: med(v) / warm_total for k, v in stages.items()}
    cold = [r["cold_stages_s"] for r in now_runs if "cold_stages_s" in r]
    if cold:
        now["cold_start_stages_s"] = {k: med(c[k] for c in cold) for k in cold[0]}
    ratio = {k: now[k] / base[k] for k in ("cold_s", "warm_s", "result_to_head_s") if now.get(k) and base.get(k)}
    # The old tree's cold import also compiled the bundled core's bytecode (a fresh install): compare like with like.
    if now["cold_first_after_install_s"] and base.get("cold_s"):
        ratio["cold_first_after_install_vs_baseline_cold"] = now["cold_first_after_install_s"] / base["cold_s"]
    return {"baseline": {"source": baseline_label, **base}, "now": now, "ratio_now_over_baseline": ratio,
            "targets_s": TARGETS,
            "target_met": {"warm": now["warm_s"] <= TARGETS["warm_s"],
                           "warm_with_wrinkle_budget": now["warm_with_wrinkle_budget_s"] <= TARGETS["warm_s"],
                           "cold_first_use": bool(now["cold_s"]) and now["cold_s"] <= TARGETS["cold_s"],
                           "cold_with_wrinkle_budget": bool(now["cold_with_wrinkle_budget_s"])
                           and now["cold_with_wrinkle_budget_s"] <= TARGETS["cold_s"]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="warm imports per Blender run")
    parser.add_argument("--rounds", type=int, default=2, help="baseline and current runs, interleaved")
    parser.add_argument("--no-baseline", action="store_true",
                        help=f"skip the {BASELINE_COMMIT} tree (the issue's filed numbers are shown instead)")
    parser.add_argument("--inside-blender", nargs=5, metavar=("ZIP", "RESULT", "REPEATS", "PHOTO", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside_blender:
        z, r, n, photo, out = args.inside_blender
        inside_blender(z, r, int(n), photo if photo != "-" else "", out)
        return 0

    shared = Path(os.environ.get("DECA_SHARED", REPO.parent / "shared"))
    if not (shared / "assets").is_dir():
        print(f"shared test data not found at {shared} (set DECA_SHARED)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(REPO))
    loads = [os.getloadavg()[0]]
    now_runs, base_runs = [], []
    with tempfile.TemporaryDirectory(prefix="bench_blender_base_") as tmp:
        tree = None if args.no_baseline else baseline_tree(Path(tmp))
        label = (f"tree {BASELINE_COMMIT}, its own bench_blender.py, measured in this run, interleaved" if tree else
                 "issue 11 as filed (quiet 2-core AMD EPYC, NOT measured in this run: the ratio is indicative only)")
        for i in range(max(1, args.rounds)):
            if tree is not None:
                base_runs.append(measure_baseline(tree, args.repeats, shared))
                loads.append(os.getloadavg()[0])
                print(f"round {i + 1}: baseline cold {base_runs[-1]['cold_s']:.2f} s, warm {base_runs[-1]['warm_s']:.2f} s",
                      file=sys.stderr)
            now_runs.append(measure_now(args, shared))
            loads.append(os.getloadavg()[0])
            r = now_runs[-1]
            if "warm" in r:
                print(f"round {i + 1}: now cold {r['cold_first_use']['seconds']:.2f} s, warm {r['warm_median_s']:.2f} s, "
                      f"after warm-up {r['after_warm_up']['seconds']:.2f} s", file=sys.stderr)
    from benchmarks.machine import cpu_name

    record = {
        "benchmark": "blender add-on: result folder -> finished head; Import Photo cold and warm, with baseline",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_average_1min": loads,
        "model": "deca-blender TEST model (FLAME topology: 5023 vertices, 50 expression keys, 36 correctives, "
                 "16 wrinkle maps)",
        "import_photo": summarise(now_runs, base_runs, label) if all("warm" in r for r in now_runs) else None,
        "baseline_runs": base_runs,
        "runs": now_runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("machine", "load_average_1min", "import_photo")}, indent=2))
    print(f"full record: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
