"""observe_many: a batch of observations leaves a histogram as observe() per value would."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from pipeline.core.metrics import observe_many

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _histogram(labels: tuple[str, ...] = ()) -> Histogram:
    return Histogram(
        "latency_seconds", "latency", labels, buckets=BUCKETS, registry=CollectorRegistry()
    )


def _samples(histogram: Histogram) -> dict[tuple[str, str | None], float]:
    return {
        (sample.name, sample.labels.get("le")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def _assert_same(batched: Histogram, one_by_one: Histogram) -> None:
    got, want = _samples(batched), _samples(one_by_one)
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key[0].endswith("_sum"):
            assert got[key] == pytest.approx(value, rel=1e-12, nan_ok=True)
        else:
            assert got[key] == value, key


VALUE_SETS = [
    [],
    [0.0],
    [0.004, 0.005, 0.0050001, 0.01, 29.9, 30.0, 30.1, 1e9],  # on and around the bounds
    [0.0] * 7 + [0.5] * 3,
    [i / 997 for i in range(5_000)],
    [-1.0, 0.0, math.inf],
    [0.1, math.nan, 0.2],
    [math.inf, -math.inf, 1.0],
]


@pytest.mark.parametrize("values", VALUE_SETS)
def test_batch_equals_one_observe_per_value(values: list[float]) -> None:
    batched, one_by_one = _histogram(), _histogram()
    for histogram in (batched, one_by_one):
        histogram.observe(0.3)  # both start from the same non-empty state
    observe_many(batched, values)
    for value in values:
        one_by_one.observe(value)
    _assert_same(batched, one_by_one)


def test_labelled_child_works_and_parent_is_refused() -> None:
    batched, one_by_one = _histogram(("symbol",)), _histogram(("symbol",))
    observe_many(batched.labels("BTCUSDT"), [0.02, 3.0])
    for value in (0.02, 3.0):
        one_by_one.labels("BTCUSDT").observe(value)
    _assert_same(batched, one_by_one)
    with pytest.raises(ValueError, match="missing label values"):
        observe_many(batched, [0.02])
