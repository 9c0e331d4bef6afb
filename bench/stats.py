"""Percentiles of samples, and quantiles of a Prometheus histogram's bucket deltas."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_BUCKET = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)_bucket\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$"
)
_LE = re.compile(r'le="(?P<le>[^"]+)"')


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 < q <= 100) of an ascending sequence."""
    if not ordered:
        return math.nan
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return float(ordered[rank - 1])


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, p50, p95, p99, max and mean, rounded to 0.1."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50": round(percentile(ordered, 50), 1),
        "p95": round(percentile(ordered, 95), 1),
        "p99": round(percentile(ordered, 99), 1),
        "max": round(ordered[-1], 1),
        "mean": round(sum(ordered) / len(ordered), 1),
    }


def histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts {upper bound: count} of histogram `name` (no other labels)."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        match = _BUCKET.match(line)
        if match is None or match["name"] != name:
            continue
        le = _LE.search(match["labels"])
        if le is not None:
            buckets[float(le["le"])] = float(match["value"])
    return buckets


def bucket_delta(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {le: count - before.get(le, 0.0) for le, count in after.items()}


def histogram_quantile(buckets: dict[float, float], q: float) -> float:
    """Like PromQL's histogram_quantile: linear inside the bucket holding quantile `q` (0..1)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return math.nan
    total = buckets[bounds[-1]]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            inside = count - lower_count
            share = (rank - lower_count) / inside if inside else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def fraction_at_most(buckets: dict[float, float], bound: float) -> float:
    """Share of observations <= `bound` (exact when `bound` is a bucket boundary)."""
    total = buckets.get(math.inf, max(buckets.values(), default=0.0))
    if total <= 0:
        return math.nan
    below = [count for le, count in buckets.items() if le <= bound]
    return max(below, default=0.0) / total
