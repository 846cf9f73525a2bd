"""Other inference runtimes for DECA's batched forward: torch.compile, OpenVINO and ONNX Runtime against eager.

The forward of `bench_targets`' "batched forward" row (E_flame + E_detail + one D_detail, input-dependent
random weights `responsive_networks(0)`, batch ``--batch``, ``--threads`` threads everywhere), as photos/s:
eager fp32 (the reference and the baseline), the project's fast path (`inference_networks`: batch norms
folded, channels_last), the fast path compiled by ``torch.compile`` (CPU inductor, freezing), OpenVINO (CPU, PERFORMANCE_HINT=LATENCY, INFERENCE_PRECISION_HINT=f32, checked on
the compiled model) and ONNX Runtime (CPU, ORT_ENABLE_ALL, intra-op threads ``--threads``, inter-op 1).
Both runtimes run one ONNX file (torch.onnx.export, TorchScript exporter, opset 17) of a flat wrapper
(images -> codes vector, detail code, displacement) traced at ``--batch``: the exported graph has that
batch size fixed, another batch size needs another export. OpenVINO converts the ONNX file
(`ov.convert_model`, 2-4 s here; `convert_model` of the torch module took ~33 s). The files go to a
temporary folder, or to ``--keep DIR`` (with the OpenVINO IR, fp32). Also recorded: the one-time costs
(export, conversion, compile / session creation) and the runtimes' import times, all in this process
(torch already imported: a fresh process pays more), and the max relative difference
max|a - b| / max|a| of each output against eager.

Timing: two warm-ups per variant, then ``--repeats`` rounds; each round times every variant once, in an
order rotated round to round (load changes and cache effects hit all of them), and measures the fp32
GEMM rate (the ceiling a convolution runtime can approach). Medians, min-max, ratios to eager and fast.

Measured here (2026-12-03, quiet 2-core AMD EPYC family 25 model 17, Zen 4 with AVX-512, load 1.19 -> 1.49,
7 repeats, photos/s): eager 8.11, fast 9.98 (1.23x), torch.compile 11.05 (1.36x; 14-40 s to compile),
OpenVINO 11.42 (1.41x), ONNX Runtime 11.54 (1.42x eager, 1.16x the fast path); relative differences <= 2.5e-6.
Eager itself moved between runs (5.7, 6.9, 8.1 photos/s; the runtimes 10.3-11.5), so the ratios to eager
ranged 1.4-1.8x. At 11.5 photos/s x 18.1 GFLOP the runtimes already exceed the measured fp32 GEMM rate
(190-196 GFLOP/s): 2x eager (16 photos/s, ~290 GFLOP/s) is beyond what fp32 arithmetic gives on these two
cores. Not adopted: a one-time conversion per checkpoint (ONNX export 3.5-4.7 s + conversion 1.7-2.3 s +
compile 0.3-0.5 s) and ~200 MB of files, a fixed batch, for ~1.15-1.2x on a forward that is ~0.15-0.25 s
of a 0.6-1 s photo.

openvino and onnxruntime are optional and not installed by setup.sh; a missing one is reported as a row
and skipped. To run them, a side venv that sees the project's packages through a .pth file
(``--no-deps``: the project pins protobuf 4.25.x, newer onnx needs protobuf >= 6.31; onnx is what
torch.onnx.export needs; the other dependencies are in the project venv already):

    python3.11 -m venv /tmp/rt && printf '%s\\n' "$PWD/.venv/lib/python3.11/site-packages" "$PWD" \\
        > /tmp/rt/lib/python3.11/site-packages/main.pth
    /tmp/rt/bin/pip install --no-deps openvino==2026.4.1 openvino-telemetry onnxruntime==1.32.0 onnx==1.17.0
    /tmp/rt/bin/python -m benchmarks.bench_runtimes [--batch 8] [--threads 2] [--repeats 7] [--keep DIR]

(or ``.venv/bin/python benchmarks/bench_runtimes.py`` for the torch rows alone). Writes
``benchmarks/results/runtimes.json`` (``--json PATH``) with the load average at start and end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_name, gemm_peak_gflops  # noqa: E402
from benchmarks.report import row  # noqa: E402
from core.networks.responsive import responsive_networks  # noqa: E402
from core.networks.runtime import inference_networks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "runtimes.json"
TARGET = ">= 2x eager fp32, within 1e-4 relative"
OUTPUTS = ("codes", "detail", "displacement")
SKIP = "not installed (pip install {} into a side venv, see docstring)"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def vec(o) -> list:
    """A `DecaNetworkOutput` as its three tensors, in `OUTPUTS` order."""
    return [o.codes.to_vector(), o.detail, o.displacement]


class Flat(nn.Module):
    """`DecaNetworks` with plain tensor outputs, which the ONNX exporter needs: images -> (codes vector,
    detail code, displacement)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nets

    def forward(self, images):
        return tuple(vec(self.nets(images)))


def rel_diffs(ref, out) -> dict:
    return {k: float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max() / torch.as_tensor(a).abs().max())
            for k, a, b in zip(OUTPUTS, ref, out)}


def skipped(name: str, why: str) -> dict:
    print(f"{name:26s} {why}", flush=True)
    return {"row": name, "skipped": why}


def _import(module: str, costs: dict):
    """``module`` or None when it is not installed; its import time (in this process) into ``costs``."""
    t0 = time.perf_counter()
    try:
        mod = __import__(module)
    except ImportError:
        return None
    costs[f"import {module} (s, in-process)"] = time.perf_counter() - t0
    return mod


def setup_runtimes(nets, x, folder: Path, threads: int, costs: dict, notes: dict, save_ir: bool = False):
    """{variant: forward(numpy images) -> outputs} for the installed runtimes, and skipped rows for the others."""
    ov, ort = _import("openvino", costs), _import("onnxruntime", costs)
    variants = {}
    skips = [skipped(name, SKIP.format(pkg)) for mod, name, pkg in ((ov, "OpenVINO LATENCY", "openvino"),
             (ort, "ONNX Runtime", "onnxruntime")) if mod is None]
    if ov is None and ort is None:
        return variants, skips
    onnx_path = folder / f"deca_b{len(x)}.onnx"
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
            warnings.simplefilter("ignore")
            torch.onnx.export(Flat(nets).eval(), (x,), str(onnx_path), dynamo=False, opset_version=17,
                              input_names=["images"], output_names=list(OUTPUTS))  # no dynamic axes: fixed batch
    except Exception as e:  # e.g. the `onnx` package missing: report it, keep the torch rows
        return variants, skips + [skipped(n, f"ONNX export failed: {e!r}"[:200])
                                  for n, m in (("OpenVINO LATENCY", ov), ("ONNX Runtime", ort)) if m is not None]
    costs["onnx export (s)"] = time.perf_counter() - t0
    notes["onnx_mb"] = os.path.getsize(onnx_path) / 1e6
    if ov is not None:
        t0 = time.perf_counter()
        model = ov.convert_model(str(onnx_path))
        costs["openvino convert_model(onnx) (s)"] = time.perf_counter() - t0
        if save_ir:  # --keep: the IR too, fp32 weights (save_model compresses to fp16 by default)
            ov.save_model(model, str(folder / f"deca_b{len(x)}.xml"), compress_to_fp16=False)
        t0 = time.perf_counter()
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        costs["openvino compile_model (s)"] = time.perf_counter() - t0
        # unless told, the CPU plugin may run bf16 / f16 where the CPU has them: check what it runs
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        notes["openvino"] = {"version": ov.get_version(), "precision": str(precision),
                             "f32": precision == ov.Type.f32,
                             "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
                             "streams": compiled.get_property("NUM_STREAMS")}
        request = compiled.create_infer_request()
        variants["OpenVINO LATENCY"] = lambda xn: list(request.infer({0: xn}).values())
    if ort is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        costs["onnxruntime session (s)"] = time.perf_counter() - t0
        notes["onnxruntime"] = {"version": ort.__version__}
        variants["ONNX Runtime"] = lambda xn: session.run(None, {"images": xn})
    return variants, skips


def setup_inductor(fast, xc, costs: dict):
    """``torch.compile`` of the fast path with the CPU inductor and freezing (weights folded into the graph as
    constants and prepacked for oneDNN's blocked layouts); compiled on the first call (C++ codegen, gcc)."""
    name = "torch.compile (inductor)"
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        t0 = time.perf_counter()
        compiled = torch.compile(Flat(fast).eval())
        with torch.inference_mode():  # freezing applies to inference graphs only
            compiled(xc)
        costs["torch.compile, first call (s)"] = time.perf_counter() - t0
    except Exception as e:  # no C++ compiler, an unsupported op: a row that says so, the others go on
        return {}, [skipped(name, f"failed: {e!r}"[:200])]
    return {name: lambda: list(compiled(xc))}, []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--keep", type=Path, default=None, help="keep the ONNX file and OpenVINO IR in DIR")
    ap.add_argument("--json", type=Path, default=RESULTS)
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile (about 40 s to compile)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    print(f"load average at start {load_start}; threads {torch.get_num_threads()}; batch {args.batch}; "
          f"repeats {args.repeats}; {cpu_name()}, torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()})", flush=True)
    nets = responsive_networks(0)
    costs, notes = {}, {}
    t0 = time.perf_counter()
    fast = inference_networks(nets)
    costs["inference_networks (s)"] = time.perf_counter() - t0
    x = torch.rand(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    xc, xn = x.contiguous(memory_format=torch.channels_last), x.numpy()

    with tempfile.TemporaryDirectory(prefix="bench_runtimes_") as tmp:
        folder = Path(tmp) if args.keep is None else args.keep
        folder.mkdir(parents=True, exist_ok=True)
        runtimes, skips = setup_runtimes(nets, x, folder, args.threads, costs, notes, save_ir=args.keep is not None)
        compiled, more = ({}, []) if args.no_inductor else setup_inductor(fast, xc, costs)
        skips += more
        variants = {"eager fp32": lambda: vec(nets(x)), "fast (folded, CL)": lambda: vec(fast(xc)), **compiled,
                    **{k: (lambda f=f: f(xn)) for k, f in runtimes.items()}}
        times = {k: [] for k in variants}
        diffs, peaks = {}, []
        with torch.inference_mode():
            ref = vec(nets(x))
            for k, f in variants.items():
                f()
                diffs[k] = rel_diffs(ref, f())  # the second warm-up's outputs
            names = list(variants)
            for r in range(args.repeats):
                peaks.append(gemm_peak_gflops())
                for k in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each round
                    times[k].append(_time(variants[k]))
    load_end = os.getloadavg()

    def rate(k):
        return args.batch / statistics.median(times[k])

    eager, fast_rate = rate("eager fp32"), rate("fast (folded, CL)")
    rows = []
    for k in names:
        ps = [args.batch / t for t in times[k]]
        d = diffs[k]
        ok = max(d.values()) <= 1e-4 and rate(k) >= 2 * eager
        rows.append(row(k, eager, rate(k), "photo/s", TARGET,
                        f"min-max {min(ps):.2f}-{max(ps):.2f}; x fast {rate(k) / fast_rate:.2f}; rel diff "
                        + " ".join(f"{n} {v:.1e}" for n, v in d.items()) + f"; {'meets' if ok else 'misses'} target",
                        photos_per_s=ps, rel_diff=d, ratio_to_fast=rate(k) / fast_rate, meets_target=ok))
    rows += skips
    for k, v in costs.items():
        print(f"  one-time: {k:40s} {v:7.3f}")
    for k, v in notes.items():
        print(f"  {k}: {v}")
    print(f"fp32 GEMM 2048^3: median {statistics.median(peaks):.0f}, max {max(peaks):.0f} GFLOP/s; "
          f"load average at end {load_end}")
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
              "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "cpu_count": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "loadavg_at_start": load_start, "loadavg_at_end": load_end, "repeats": args.repeats,
              "gemm_gflops": peaks, "one_time_costs_s": costs, "notes": notes, "kept_in": str(args.keep or ""),
              "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a reader (or a second run) never sees half a file
    with tempfile.NamedTemporaryFile("w", dir=args.json.parent, suffix=".tmp", delete=False) as f:
        json.dump(report, f, indent=2)
    os.replace(f.name, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
