"""The benchmark's figure arithmetic (bench/report.py): a wrong quantile would make every
agent latency in docs/benchmarks.md wrong."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import histogram_quantile, quantile, spread  # noqa: E402


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    # 10 observations ≤ 1 ms, 10 more in (1, 2] ms, none above.
    buckets = [(0.001, 10.0), (0.002, 20.0), (0.005, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(buckets, 0.5) == 0.001
    assert math.isclose(histogram_quantile(buckets, 0.75), 0.0015)
    assert math.isclose(histogram_quantile(buckets, 0.25), 0.0005)
    assert math.isclose(histogram_quantile(buckets, 0.99), 0.001 + 0.001 * 9.8 / 10)


def test_histogram_quantile_in_the_open_bucket_answers_its_lower_bound():
    assert histogram_quantile([(0.01, 1.0), (math.inf, 10.0)], 0.99) == 0.01
    assert math.isnan(histogram_quantile([(0.01, 0.0), (math.inf, 0.0)], 0.5))


def test_quantile_and_spread():
    assert quantile(list(range(100)), 0.99) == 99 and quantile([3.0], 0.5) == 3.0
    assert spread([1.0, 3.0, 2.0], "{:.1f}", " ms") == "2.0 ms (1.0–3.0)"
    assert spread([5.0]) == "5.0"
