"""Figures for docs/benchmarks.md: every figure is a median with its min–max (and p99
where there are many samples) over repeated runs, never a single lucky run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q))]


def ms(xs: Sequence[float]) -> str:
    """Many samples in seconds: median, min, p99, max in ms."""
    s = sorted(xs)
    return (f"median {statistics.median(s) * 1e3:.2f} ms (min {s[0] * 1e3:.2f}, p99 {quantile(s, 0.99) * 1e3:.2f}, "
            f"max {s[-1] * 1e3:.2f}; n={len(s)})")


def spread(xs: Sequence[float], fmt: str = "{:.1f}", unit: str = "") -> str:
    """A few repeated runs: median (min–max)."""
    m = statistics.median(xs)
    if len(xs) == 1:
        return fmt.format(m) + unit
    return f"{fmt.format(m)}{unit} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket that holds
    the q-th observation. `buckets` are (upper bound, cumulative count), +Inf last."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lo_bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / max(count - lo_count, 1e-12)
        lo_bound, lo_count = bound, count
    return buckets[-1][0]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
