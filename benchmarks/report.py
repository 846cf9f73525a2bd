"""One benchmark row, printed and returned for the JSON: a measurement against its baseline from the same run."""
from __future__ import annotations


def row(name: str, baseline: float, now: float, unit: str, target: str, extra: str = "", **fields) -> dict:
    """Print ``name``'s baseline, now, ratio and target on one line; return them (and ``fields``) as a dict."""
    ratio = now / baseline if baseline else float("nan")
    print(f"{name:44s} baseline {baseline:8.3f} {unit:8s} now {now:8.3f} {unit:8s} ratio {ratio:6.3f}   "
          f"target {target}{'  ' + extra if extra else ''}", flush=True)
    return {"row": name, "baseline": baseline, "now": now, "unit": unit, "ratio_now_over_baseline": ratio,
            "target": target, "extra": extra, **fields}
