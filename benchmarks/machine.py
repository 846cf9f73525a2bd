"""What machine a benchmark ran on, recorded in every benchmark's JSON so numbers can be compared."""
from __future__ import annotations

import platform
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name with its family/model and widest vector unit, e.g. ``AMD EPYC (family 25, model
    17; AVX-512)``. Virtual machines often report only "AMD EPYC": machines of one name differed by 2x here
    (an AVX2-only EPYC and a Zen 4 one with AVX-512), so the name alone does not say which numbers compare."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key and fields:
                break  # the first processor's block is enough
            fields.setdefault(key, value.strip())
    except OSError:
        return platform.processor()
    name = fields.get("model name") or platform.processor()
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    detail = ", ".join(f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
                       if key in fields)
    extra = "; ".join(x for x in (detail, isa) if x)
    return f"{name} ({extra})" if extra else name


def gemm_peak_gflops(repeats: int = 3, n: int = 2048) -> float:
    """The machine's fp32 matrix-multiply rate with this process's torch threads (best of ``repeats``),
    GFLOP/s: the ceiling a convolution runtime can approach (Winograd-style algorithms aside)."""
    import torch  # here, not at the top: the benchmarks without torch import this module too

    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b  # warm-up: thread pool and packing buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9
