"""Issue 11's target table: each row measured against its baseline in the same run, with the ratio.

TEST FLAME model; random weights in two forms: PyTorch's default ("tiny": the decoder barely responds to
its input) and input-dependent ones (`core.networks.responsive`), which is where the wrinkle model's fidelity
shows. Every row is ``baseline`` (the code path before issue 11) and ``now`` (what the pipeline runs), timed
in the same run, interleaved, median of ``--repeats``: the wrinkle and forward rows rebuild the old path from
the same modules in this process; the photo -> folder and cold-start rows run the old tree itself
(``--baseline-src``) in its own process.

    .venv/bin/python benchmarks/bench_targets.py --quick       # < 3 minutes on 2 quiet cores
    .venv/bin/python benchmarks/bench_targets.py --repeats 5

Rows:
- wrinkle model: time per photo with the shared basis loaded (cache warm), the one-time cost of building
  the basis (cold cache) and of loading it in a new ``Reconstructor``, and the held-out explained variance
  (32 fresh i.i.d. prior samples), tiny and input-dependent weights. Baseline: the per-person fit before
  issue 11 (eager ``D_detail`` on the full 181-d input, fixed ridge 1, 56 + 16 decodes). Now: the shared
  per-checkpoint basis (`core.pipeline.wrinkle_cache`, in a temporary cache folder) and 12 decodes per
  photo (the held-out explained variance leave-one-out over them; 12 + 8 decodes before).
- photo -> result folder, warm (224x224 shared photo and a 4000x3000 one made from it): two warm server
  processes, one on ``--baseline-src`` (the code at filing) and one on this tree, same asset home
  (checkpoint, TEST FLAME, data), same photo, dlib landmarks (the detector both trees have), interleaved;
  each row lists both trees' per-stage times, and this tree's with its default detector (MediaPipe) as a
  third server. Without ``--baseline-src`` the row is skipped.
- batched forward (E_flame + E_detail + one D_detail, batch 8): eager fp32 against the folded channels_last
  networks (`core.networks.runtime.inference_networks`), and their largest relative difference.
- expression-only decoding (frames/s): `core.pipeline.expressions.decode_expressions` against
  `Reconstructor.animate` (a full folder per frame) on the same photos.
- cold start: a fresh process importing, building `Reconstructor` (asset home with a saved checkpoint,
  the tree's default detector: MediaPipe now, dlib at filing where FAN has no weights) and reconstructing
  one photo; the baseline is the same process on ``--baseline-src`` (a tree of the code before
  issue 11), else the issue's 13.8 s.
- cold `deca-blender reconstruct`: the command itself (``python -m core.cli reconstruct``) on both trees,
  process start to process end, interleaved (with ``--baseline-src``); and this tree's command again with
  its detector child process turned off (``DECA_BLENDER_DETECTOR_PROCESS=0``), to show what the child gains.
- peak RSS of the cold-start process (one photo to a folder) and of this benchmark process.

Writes ``benchmarks/results/targets.json`` with the load average at start and end. On a shared machine
OpenMP's active spin-waiting slows torch badly; ``OMP_WAIT_POLICY=PASSIVE`` is set unless ``--omp-active``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if "--omp-active" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name, gemm_peak_gflops  # noqa: E402
from benchmarks.report import row  # noqa: E402
from core.networks import build_deca_networks, save_deca_checkpoint  # noqa: E402
from core.networks.responsive import responsive_networks  # noqa: E402
from core.networks.runtime import inference_networks  # noqa: E402
from core.pipeline import wrinkle_cache as wc  # noqa: E402
from core.pipeline import wrinkles as wr  # noqa: E402
from core.pipeline.expressions import decode_expressions  # noqa: E402
from core.model.face_model import FaceAssets  # noqa: E402
from core.pipeline.reconstruct import WRINKLE_DECODE_BATCH, Reconstructor  # noqa: E402
from core.testmodels.synthetic_flame import write_test_flame  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "targets.json"
TARGETS = {"wrinkle_s": 0.4, "wrinkle_ev_responsive": 0.5, "photo_to_folder_s": 1.2, "photo_to_folder_ratio": 1 / 3,
           "photo_4000x3000_s": 1.5, "forward_ratio": 2.0, "expression_fps": 6.0, "cold_reconstruct_s": 4.0,
           "peak_rss_gb": 1.5}


def _shared() -> Path:
    return Path(os.environ.get("DECA_SHARED", ROOT.parent / "shared"))


def _median(xs) -> float:
    return float(statistics.median(xs))


def _timed(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return _median(times), out


def baseline_decoder(rec: Reconstructor, detail: torch.Tensor):
    """The wrinkle fit's decoder before issue 11: eager D_detail (batch norms, channels_last) on the full
    [jaw, exp, detail] input."""
    eager = rec.eager_D_detail

    def decode(x: np.ndarray) -> np.ndarray:
        xt = torch.as_tensor(x, dtype=torch.float32, device=rec.device)
        maps = []
        with torch.inference_mode():
            for i in range(0, len(xt), WRINKLE_DECODE_BATCH):
                b = xt[i:i + WRINKLE_DECODE_BATCH]
                uv_z = eager.decode(b[:, 50:], b[:, :50], detail.expand(len(b), -1))
                maps.append(rec.face_model.displacement(uv_z)[:, 0])
        return torch.cat(maps).cpu().numpy()
    return decode


def baseline_fit_wrinkles(rec: Reconstructor, detail: torch.Tensor):
    """The wrinkle fit before issue 11: `baseline_decoder`, fixed ridge 1."""
    return wr.fit_wrinkle_model(baseline_decoder(rec, detail), rec._detail_mask, n_samples=rec.wrinkle_samples,
                                n_holdout=rec.wrinkle_holdout, n_components=rec.wrinkle_components, ridge=1.0)


def fresh_ev(rec: Reconstructor, model, detail: torch.Tensor, n: int = 32) -> float:
    x = wr.sample_prior(n, np.random.default_rng(1234)).astype(np.float32)
    d = rec._wrinkle_decoder(detail)(x)
    m = rec._detail_mask
    pred = np.stack([model.evaluate(xi[:50], xi[50:]) for xi in x])
    return wr.explained_variance(d[:, m].astype(np.float64), pred[:, m].astype(np.float64))


@contextlib.contextmanager
def _wrinkle_cache(folder: Path | None = None):
    """Point the wrinkle basis cache (`core.pipeline.wrinkle_cache`) at ``folder`` for the block, never at the
    user's cache; without ``folder``, at a fresh (cold) temporary folder removed afterwards."""
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="bench_wrinkle_cache_")) if own else Path(folder)
    old = os.environ.get(wc.CACHE_ENV)
    os.environ[wc.CACHE_ENV] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop(wc.CACHE_ENV, None)
        else:
            os.environ[wc.CACHE_ENV] = old
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def bench_wrinkles(rows, fa, photos, repeats):
    """Per photo: the fit before issue 11 against the shared-basis fit with the basis loaded (cache warm);
    once per checkpoint: building the basis (a cold cache folder) and loading it in a new Reconstructor."""
    with _wrinkle_cache():  # a cold cache, and the user's stays untouched
        for kind, make in (("tiny", lambda: build_deca_networks().eval()), ("input-dependent",
                                                                              lambda: responsive_networks(0))):
            torch.manual_seed(0)
            nets = make()
            rec = Reconstructor(device="cpu", landmarks="dlib", face_assets=fa, networks=nets)
            rec.eager_D_detail = nets.D_detail.eval().to(memory_format=torch.channels_last)
            x = rec._network_inputs([rec._prepare(photos[0], all_faces=False)])
            _, detail, _ = rec._forward(x)
            t_build, (basis, note) = _timed(rec.shared_wrinkle_basis, 1)
            fresh = Reconstructor(device="cpu", landmarks=rec.detector, face_assets=fa, networks=nets)
            t_load, (_, note_load) = _timed(fresh.shared_wrinkle_basis, 1)
            assert "from the cache" in note_load, note_load
            person = Reconstructor(device="cpu", landmarks=rec.detector, face_assets=fa, networks=nets,
                                   wrinkle_fit="person")
            tb, tp, tn = [], [], []
            for _ in range(repeats):  # interleaved: load changes hit all three
                t, (m_base, _) = _timed(lambda: baseline_fit_wrinkles(rec, detail), 1)
                tb.append(t)
                t, (m_person, _) = _timed(lambda: person.fit_wrinkles(detail), 1)
                tp.append(t)
                t, (m_now, info) = _timed(lambda: rec.fit_wrinkles(detail), 1)
                tn.append(t)
            t_base, t_person, t_now = _median(tb), _median(tp), _median(tn)
            if kind == "tiny":  # the decoder alone, batch of 16, many interleaved repeats (less noisy)
                xs = torch.as_tensor(wr.sample_prior(WRINKLE_DECODE_BATCH, np.random.default_rng(0)),
                                     dtype=torch.float32)
                eager, person = baseline_decoder(rec, detail), rec._wrinkle_decoder(detail)
                db, dn = [], []
                for _ in range(5 * repeats):
                    db.append(_timed(lambda: eager(xs.numpy()), 1)[0])
                    dn.append(_timed(lambda: person(xs.numpy()), 1)[0])
                rows.append(row("D_detail for the wrinkle fit (ms/sample)", _median(db) / len(xs) * 1e3,
                                _median(dn) / len(xs) * 1e3, "ms",
                                f"({rec.wrinkle_samples + rec.wrinkle_holdout} samples per fit before, "
                                f"{info.n_samples + info.n_holdout} now)"))
            ev_base, ev_now = fresh_ev(rec, m_base, detail), fresh_ev(rec, m_now, detail)
            how = f"leave-one-out on {info.n_samples}" if info.n_holdout == 0 else f"on {info.n_holdout} held out"
            rows.append(row(f"wrinkle model per photo, cache warm ({kind})", t_base, t_now, "s", "<= 0.4 s",
                            f"{info.method} fit, {info.n_samples} + {info.n_holdout} decodes"))
            rows.append(row(f"wrinkle per photo: shared vs per-person fit ({kind})", t_person, t_now, "s",
                            "~1/3 of the per-person fit", f"per-person (GCV, folded decoder) held-out EV "
                            f"{fresh_ev(rec, m_person, detail):.3f}"))
            rows.append(row(f"wrinkle basis once per checkpoint ({kind})", t_base, t_build, "s",
                            "a few seconds, once", f"baseline: one photo's fit then; new process loads it in "
                            f"{t_load:.3f} s; {basis.n_codes} codes x {basis.n_samples // basis.n_codes} decodes"))
            rows.append(row(f"wrinkle held-out EV ({kind})", ev_base, ev_now, "EV",
                            ">= 0.5 input-dependent, not lower on tiny",
                            f"32 fresh samples; reported {info.explained_variance:.3f} {how}; "
                            f"shared ridge {info.ridge:.1f}"))


_SERVER = """\
import json, sys, time
import torch
torch.set_num_threads({threads})
from core.assets import AssetManager
from core.pipeline.reconstruct import Reconstructor
rec = Reconstructor(AssetManager({home!r}), device="cpu", landmarks={landmarks!r})
import core
print("READY", core.__file__, flush=True)
for line in sys.stdin:
    photo, out = line.rstrip("\\n").split("\\t")
    rec.reset_timings()
    t0, c0 = time.perf_counter(), time.process_time()
    rec.reconstruct_photo(photo, out, overwrite=True)
    print("TIME", time.perf_counter() - t0, time.process_time() - c0, json.dumps(rec.timings), flush=True)
"""


def _check_tree(core_file: str, src: Path) -> None:
    """A baseline that silently ran this checkout's code would compare the code with itself."""
    if not Path(core_file).resolve().is_relative_to(Path(src).resolve()):
        raise RuntimeError(f"a process meant to run the tree in {src} imported core from {core_file}")


class PhotoServer:
    """A warm `Reconstructor` of one source tree in its own process (``PYTHONPATH=src``): the code path
    of that tree as a whole (networks, detector, crops, texture, wrinkle fit, writing), on the same asset
    home (checkpoint, FLAME, data) and photos as the other tree's server."""

    def __init__(self, src: Path, home: Path, threads: int, landmarks: str = "dlib"):
        env = {**os.environ, "PYTHONPATH": str(src)}
        code = _SERVER.format(threads=threads, home=str(home), landmarks=landmarks)
        # cwd=src: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH, so a server
        # started from this checkout would import this checkout's `core` whatever PYTHONPATH says.
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, cwd=str(src),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"the reconstruct server for {src} did not start")
        _check_tree(line.split(" ", 1)[1].strip(), src)

    def time(self, photo: Path, out: Path) -> tuple[float, dict]:
        self.proc.stdin.write(f"{photo}\t{out}\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the reconstruct server died")
            if line.startswith("TIME "):
                _, t, cpu, timings = line.split(" ", 3)
                return float(t), {"cpu": float(cpu), **json.loads(timings)}

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def asset_home(tmp: Path, flame: Path) -> Path:
    """An asset home with the TEST FLAME model and a saved input-dependent random checkpoint."""
    home = tmp / "home"
    if not home.exists():
        from core.assets import AssetManager
        ckpt = save_deca_checkpoint(responsive_networks(0), tmp / "dl" / "deca_model.tar")
        AssetManager(home).install(flame=flame, deca=ckpt, data=_shared() / "assets" / "deca", progress=lambda m: None)
    return home


def big_photo(photo: Path, tmp: Path) -> Path:
    """A 4000x3000 JPEG made from a shared photo (the face fills the frame: the largest crops)."""
    big = tmp / "big_4000x3000.jpg"
    if not big.exists():
        from PIL import Image
        Image.open(photo).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(big, quality=92)
    return big


def _stage_note(timings: list[dict]) -> str:
    """Median wall seconds per stage, largest first, then the process CPU seconds of the whole photo (both
    threads; less sensitive to other processes' load than wall time)."""
    keys = sorted({k for t in timings for k in t} - {"cpu"}, key=lambda k: -statistics.median(t.get(k, 0.0) for t in timings))
    keys.append("cpu")
    return ", ".join(f"{k} {statistics.median(t.get(k, 0.0) for t in timings):.3f}" for k in keys)


def bench_photo(rows, photos, repeats, tmp: Path, flame: Path, threads: int, baseline_src: Path | None):
    """Warm photo -> folder. Baseline: the tree in ``baseline_src`` (the code at filing, 9ba048b), run as a
    warm server process on the same asset home and photo; now: this tree, the same way. Interleaved."""
    if baseline_src is None:
        print("photo -> folder: no --baseline-src, row skipped (the baseline is the code at filing)")
        return
    home = asset_home(tmp, flame)
    big = big_photo(photos[0], tmp)
    servers = {}
    try:
        for name, src, landmarks in (("baseline", baseline_src, "dlib"), ("now", ROOT, "dlib"),
                                     ("now, default detector", ROOT, "auto")):
            servers[name] = PhotoServer(src, home, threads, landmarks)
        for label, photo in (("photo -> folder, warm (224x224)", photos[0]), ("photo -> folder, warm (4000x3000)", big)):
            times = {name: [] for name in servers}
            stages = {name: [] for name in servers}
            for name, srv in servers.items():  # warm-up: first-use costs (detector models, caches)
                srv.time(photo, tmp / f"warm_{name}")
            for _ in range(max(2, repeats)):  # interleaved: load changes hit both
                for name, srv in servers.items():
                    t, st = srv.time(photo, tmp / name)
                    times[name].append(t)
                    stages[name].append(st)
            target = "<= 1.2 s and <= 1/3 of baseline" if "224" in label else "<= 1.5 s"
            # the wrinkle model is another row's (and about the same code in both trees here): the rest alone
            rest = {n: _median(t - st.get("wrinkle model", 0.0) for t, st in zip(times[n], stages[n])) for n in servers}
            rows.append(row(label, _median(times["baseline"]), _median(times["now"]), "s", target,
                            f"without the wrinkle model: baseline {rest['baseline']:.3f} s, now {rest['now']:.3f} s, "
                            f"now with MediaPipe {rest['now, default detector']:.3f} s; "
                            f"baseline: {baseline_src} (warm server, dlib, same checkpoint); "
                            f"now stages: {_stage_note(stages['now'])}; baseline stages: {_stage_note(stages['baseline'])}; "
                            f"now with the default detector (MediaPipe): {_median(times['now, default detector']):.3f} s "
                            f"({_stage_note(stages['now, default detector'])})"))
    finally:
        for srv in servers.values():
            srv.close()


def bench_forward(rows, repeats, batch=8):
    """Eager fp32 against the folded channels_last networks, interleaved; with the forward's FLOPs and the
    machine's GEMM rate measured in the same run, so the row says how far from the ceiling each one is
    (2x eager needs twice eager's fraction of it)."""
    from torch.utils.flop_counter import FlopCounterMode
    nets = responsive_networks(0)
    fast = inference_networks(nets)
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        counter = FlopCounterMode(display=False)
        with counter:
            a = nets(x)
        gflop = counter.get_total_flops() / batch / 1e9  # per photo
        b = fast(xc)
        rel = max(float((u - v).abs().max() / u.abs().max()) for u, v in
                  ((a.codes.to_vector(), b.codes.to_vector()), (a.detail, b.detail), (a.displacement, b.displacement)))
        te, tf, peaks = [], [], []
        for _ in range(repeats):
            peaks.append(gemm_peak_gflops(3))
            te.append(_timed(lambda: nets(x), 1)[0])
            tf.append(_timed(lambda: fast(xc), 1)[0])
    eager, now, peak = batch / _median(te), batch / _median(tf), max(peaks)
    rows.append(row(f"batched forward, batch {batch} (photos/s)", eager, now, "photo/s",
                    ">= 2x eager fp32, within 1e-4 relative",
                    f"max relative difference {rel:.1e}; {gflop:.2f} GFLOP/photo; fp32 GEMM {peak:.0f} GFLOP/s "
                    f"({torch.get_num_threads()} threads); eager {100 * eager * gflop / peak:.0f} %, now "
                    f"{100 * now * gflop / peak:.0f} % of it"))


def bench_expressions(rows, fa, photos, tmp: Path):
    # The default detector (MediaPipe), as `animate --fast` and the Blender video path use: with dlib, one of
    # the shared photos misses HOG and takes dlib's CNN fallback (~1.4 s a frame), which then decides the row.
    rec = Reconstructor(device="cpu", landmarks="auto", face_assets=fa, networks=responsive_networks(0),
                        wrinkle_samples=wr.DEFAULT_SAMPLES)
    frames = list(photos) * 2
    decode_expressions(rec, frames[:2])
    t_fast, out = _timed(lambda: decode_expressions(rec, frames, batch_size=8), 1)
    t0 = time.perf_counter()
    rec.animate(photos[0], frames, tmp / "anim", overwrite=True)
    t_full = time.perf_counter() - t0
    rows.append(row("expression decoding (frames/s)", len(frames) / t_full, len(out.sources) / t_fast, "frame/s",
                    ">= 6 frames/s batched", f"{len(frames)} frames; default detector; baseline: animate (a full folder per "
                    f"frame, incl. identity)"))


def bench_cold(rows, tmp: Path, flame: Path, baseline_src: Path | None = None, repeats: int = 1):
    home = asset_home(tmp, flame)
    photo = sorted((_shared() / "photos").glob("*.jpg"))[0]
    script = (f"import time; t0 = time.perf_counter()\n"
              f"import torch; torch.set_num_threads(2)\n"
              f"from core.assets import AssetManager\nfrom core.pipeline.reconstruct import Reconstructor\n"
              f"t1 = time.perf_counter(); rec = Reconstructor(AssetManager({str(home)!r}), device='cpu')\n"
              f"t2 = time.perf_counter(); rec.reconstruct_photo({str(photo)!r}, {str(tmp / 'cold')!r}, overwrite=True)\n"
              f"t3 = time.perf_counter()\n"
              # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
              f"hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0].split()[1]\n"
              f"import core; print(core.__file__)\n"
              f"print(t1 - t0, t2 - t1, t3 - t2, t3 - t0, int(hwm) / 1024 ** 2)\n")
    cache = tmp / "cold_cache"  # the wrinkle basis cache (`core.pipeline.wrinkle_cache`), empty at first

    def run(src: Path) -> tuple[float, list[float]]:
        env = {**os.environ, "PYTHONPATH": str(src), wc.CACHE_ENV: str(cache)}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True,
                             cwd=str(src))  # see PhotoServer: the working directory comes first on sys.path
        _check_tree(out.stdout.split()[-6], src)
        return time.perf_counter() - t0, list(map(float, out.stdout.split()[-5:]))

    base_wall, base_peak, what = 13.8, 1.0, "the issue's quiet-machine numbers"
    if baseline_src is not None:
        base_wall, b = run(baseline_src)
        base_peak, what = b[4], f"the tree in {baseline_src}, same run"
    shutil.rmtree(cache, ignore_errors=True)
    first_wall, (f_imports, f_build, f_work, _, first_peak) = run(ROOT)  # builds and caches the wrinkle basis
    wall, (imports, build, work, total, peak) = run(ROOT)  # a new process: the basis comes from the cache
    rows.append(row("cold reconstruct, fresh process (s)", base_wall, wall, "s", "<= 4 s",
                    f"baseline: {what}; now: imports {imports:.2f}, Reconstructor() {build:.2f}, photo {work:.2f} "
                    f"(the checkpoint's wrinkle basis read from the cache)"))
    rows.append(row("cold reconstruct, first photo of a new checkpoint (s)", base_wall, first_wall, "s",
                    "once per checkpoint", f"builds and caches the shared wrinkle basis: imports {f_imports:.2f}, "
                    f"Reconstructor() {f_build:.2f}, photo {f_work:.2f}; peak {first_peak:.2f} GB"))
    peak = max(peak, first_peak)
    rows.append(row("peak RSS, photo -> folder process (GB)", base_peak, peak, "GB", "<= 1.5 GB",
                    f"baseline: {what}; cold process: load, one photo, write"))
    if baseline_src is not None:
        bench_cold_command(rows, home, photo, tmp, cache, baseline_src, repeats)


def bench_cold_command(rows, home: Path, photo: Path, tmp: Path, cache: Path, baseline_src: Path, repeats: int):
    """The command a user runs, ``python -m core.cli reconstruct PHOTO --out DIR`` (= ``deca-blender
    reconstruct``), from process start to process end (the script rows above end with the interpreter's
    normal exit; the command ends with `core.cli.exit_now`). Each tree's default detector, the wrinkle basis
    from the cache (built by `bench_cold`'s first run), interleaved."""
    def run(src: Path, out: Path, detector_child: bool = True) -> float:
        env = {**os.environ, "PYTHONPATH": str(src), wc.CACHE_ENV: str(cache),
               "DECA_BLENDER_DETECTOR_PROCESS": "1" if detector_child else "0"}
        cmd = [sys.executable, "-m", "core.cli", "reconstruct", str(photo), "--out", str(out), "--home", str(home),
               "--device", "cpu", "--overwrite"]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=str(src))
        wall = time.perf_counter() - t0
        if not (out / photo.stem / "result.npz").is_file():
            raise RuntimeError(f"`reconstruct` of {src} wrote no result folder in {out}")
        return wall

    times: dict[str, list[float]] = {"baseline": [], "now": [], "no child": []}
    for _ in range(max(1, repeats)):  # interleaved: load changes hit all three
        times["baseline"].append(run(baseline_src, tmp / "cli_baseline"))
        times["now"].append(run(ROOT, tmp / "cli_now"))
        times["no child"].append(run(ROOT, tmp / "cli_no_child", detector_child=False))
    rows.append(row("cold `deca-blender reconstruct` command, process start to end (s)", _median(times["baseline"]),
                    _median(times["now"]), "s", "<= 4 s",
                    f"baseline: the command of {baseline_src}; {max(1, repeats)} runs each, interleaved "
                    f"(baseline {', '.join(f'{t:.2f}' for t in times['baseline'])}; "
                    f"now {', '.join(f'{t:.2f}' for t in times['now'])})"))
    rows.append(row("the same without the detector child process (s)", _median(times["no child"]),
                    _median(times["now"]), "s", "child < no child",
                    f"baseline: this tree with DECA_BLENDER_DETECTOR_PROCESS=0 (detector loaded on a thread, as "
                    f"before); runs {', '.join(f'{t:.2f}' for t in times['no child'])}"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one repeat, fewer rows' samples (< 3 minutes quiet)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["wrinkles", "photo", "forward", "expressions", "cold"])
    ap.add_argument("--omp-active", action="store_true")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="a source tree of the code before issue 11 for the cold-start baseline, e.g. "
                         "mkdir /tmp/base && git archive 9ba048b core | tar -x -C /tmp/base")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    shared = _shared()
    photos = sorted(p for p in (shared / "photos").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_targets_"))
    rows: list[dict] = []
    print(f"load average at start {load_start}; threads {args.threads}; repeats {repeats}")
    try:
        # The shared wrinkle basis is cached per checkpoint: a folder of this run's, never the user's cache.
        with _wrinkle_cache(tmp / "cache"):
            flame = write_test_flame(tmp / "test_flame.pkl", shared / "assets" / "deca",
                                     shared / "assets" / "flame" / "flame2020_joint_regressor.npz")
            fa = FaceAssets.from_paths(flame, shared / "assets" / "deca")
            if "wrinkles" not in args.skip:
                bench_wrinkles(rows, fa, photos, repeats)
            if "photo" not in args.skip:
                bench_photo(rows, photos, repeats, tmp, flame, args.threads, args.baseline_src)
            if "forward" not in args.skip:
                bench_forward(rows, max(2, repeats))
            if "expressions" not in args.skip:
                bench_expressions(rows, fa, photos[:4] if args.quick else photos, tmp)
            if "cold" not in args.skip:
                bench_cold(rows, tmp, flame, args.baseline_src, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"peak RSS of this process {peak:.2f} GB (target <= 1.5 GB); load average at end {os.getloadavg()}")
    report = {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_name(), "cpu_count": os.cpu_count(),
              "loadavg_at_start": load_start, "loadavg_at_end": os.getloadavg(), "repeats": repeats,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "peak_rss_gb": peak,
              "targets": TARGETS, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
