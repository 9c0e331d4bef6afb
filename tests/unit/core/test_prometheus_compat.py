"""_prometheus_compat: observe_many does what observe() per value does, on the prometheus_client
installed, and the module refuses a release or a Histogram it was not written for."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from pipeline.core import _prometheus_compat
from pipeline.core._prometheus_compat import check_histogram, check_version, observe_many
from pipeline.core.versions import spec_of
from tests.pins import pinned_range


def _samples(histogram: Histogram) -> dict[tuple[str, str | None], float]:
    return {
        (sample.name, sample.labels.get("le")): sample.value
        for family in histogram.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_leaves_the_histogram_as_observe_per_value_does() -> None:
    batched, one_by_one = (
        Histogram("latency_seconds", "latency", buckets=(0.1, 1, 10), registry=CollectorRegistry())
        for _ in range(2)
    )
    values = [0.0, 0.05, 0.1, 0.100001, 0.5, 1.0, 9.0, 10.0, 11.0, 0.25]
    observe_many(batched, values)
    for value in values:
        one_by_one.observe(value)
    assert _samples(batched) == pytest.approx(_samples(one_by_one), rel=1e-12)


def test_the_histogram_of_the_installed_release_has_every_part_used() -> None:
    check_histogram(Histogram("any_seconds", "any", registry=None))


def test_a_histogram_without_the_parts_used_is_refused() -> None:
    with pytest.raises(ImportError, match="_buckets"):
        check_histogram(object())


def test_the_guard_accepts_exactly_the_range_pyproject_pins() -> None:
    assert spec_of(*_prometheus_compat.SUPPORTED) == pinned_range("prometheus-client")
    for version in ("0.21.0", "0.26.0", "0.99.9"):
        check_version(version)


@pytest.mark.parametrize("version", ["0.20.1", "1.0.0", "2.3", "not a version"])
def test_a_release_it_was_not_written_for_is_refused_at_import(version: str) -> None:
    with pytest.raises(ImportError, match="prometheus_client"):
        check_version(version)
