"""Throughput of DECA's three networks (E_flame + E_detail + D_detail) on the CPU.

Random weights (the speed does not depend on them), eval mode, ``torch.inference_mode``,
``torch.set_num_threads(2)``. Variants: plain float32, channels_last, bfloat16 autocast (uses AMX /
AVX512-BF16 through oneDNN where the CPU has them), both, and a frozen TorchScript trace.
Prints a table and writes ``benchmarks/results/networks.json``.

    .venv/bin/python benchmarks/bench_networks.py [--repeats 3] [--batch-sizes 1 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_name  # noqa: E402
from core.networks import DecaNetworks, build_deca_networks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "networks.json"


class _Pipeline(torch.nn.Module):
    """The three networks as one traceable function: images -> (params, detail, displacement)."""

    def __init__(self, nets: DecaNetworks) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, images: torch.Tensor):
        params = self.nets.E_flame(images)
        detail = self.nets.E_detail(images)
        z = torch.cat([params[:, 203:206], params[:, 150:200], detail], dim=1)  # jaw, exp, detail
        return params, detail, self.nets.D_detail(z)


def _time(fn, images, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn(images)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", nargs="+",
                    default=["fp32", "fp32_channels_last", "bf16_autocast", "bf16_autocast_channels_last",
                             "fp32_jit_frozen"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = _Pipeline(build_deca_networks()).eval()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None

    results = []
    reference: dict[int, tuple] = {}
    for variant in args.variants:
        channels_last = "channels_last" in variant
        bf16 = "bf16" in variant
        model = base
        if channels_last:
            model = _Pipeline(build_deca_networks()).eval()
            model.load_state_dict(base.state_dict())
            model = model.to(memory_format=torch.channels_last)
        for bs in args.batch_sizes:
            images = torch.rand(bs, 3, 224, 224, generator=torch.Generator().manual_seed(bs))
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext())
            fn = model
            if variant == "fp32_jit_frozen":
                with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    fn = torch.jit.freeze(torch.jit.trace(base, images))

            def run(x, fn=fn, autocast=autocast):
                with torch.inference_mode(), autocast:
                    return fn(x)

            times = _time(run, images, args.repeats, args.warmup)
            out = run(images)
            if variant == "fp32":
                reference[bs] = out
            err = None
            if bs in reference and variant != "fp32":
                ref = reference[bs]
                err = {name: float((o.float() - r).abs().max() / r.abs().max().clamp_min(1e-12))
                       for name, o, r in zip(("params", "detail", "displacement"), out, ref)}
            med = statistics.median(times)
            row = {"variant": variant, "batch": bs, "median_s": med, "min_s": min(times),
                   "times_s": times, "photos_per_s": bs / med, "max_rel_err_vs_fp32": err}
            results.append(row)
            print(f"{variant:30s} batch {bs:2d}: {med * 1000:8.1f} ms/batch (min {min(times) * 1000:7.1f})"
                  f"  {bs / med:6.2f} photos/s" + (f"  rel.err {max(err.values()):.1e}" if err else ""),
                  flush=True)

    report = {
        "what": "E_flame + E_detail + D_detail forward, random weights, eval, inference_mode, 224x224",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
