"""merge_expositions: one /metrics from the API process and its workers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core.metrics import merge_expositions


def exposition(stored: dict[str, int], kafka_up: int, latencies: list[float]) -> str:
    """A process's exposition with the same families the pipeline uses."""
    registry = CollectorRegistry()
    counter = Counter("rows_stored_total", "rows", ["symbol"], registry=registry)
    for symbol, count in stored.items():
        counter.labels(symbol).inc(count)
    Gauge("kafka_up", "up", registry=registry).set(kafka_up)
    histogram = Histogram("sink_seconds", "sink", buckets=(0.1, 1.0), registry=registry)
    for value in latencies:
        histogram.observe(value)
    Gauge("process_resident_memory_bytes", "rss", registry=registry).set(100)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_counters_and_histograms_of_every_process_are_added_up() -> None:
    api = exposition({}, 0, [])
    producer = exposition({}, 1, [])
    consumer = exposition({"BTCUSDT": 3, "ETHUSDT": 2}, 0, [0.05, 0.5])
    other_consumer = exposition({"BTCUSDT": 4}, 0, [2.0])

    merged = samples(merge_expositions([api, producer, consumer, other_consumer]).decode())

    assert merged[("rows_stored_total", (("symbol", "BTCUSDT"),))] == 7
    assert merged[("rows_stored_total", (("symbol", "ETHUSDT"),))] == 2
    assert merged[("kafka_up", ())] == 1  # set by the producer only; the others report 0
    assert merged[("sink_seconds_bucket", (("le", "0.1"),))] == 1
    assert merged[("sink_seconds_bucket", (("le", "1.0"),))] == 2
    assert merged[("sink_seconds_bucket", (("le", "+Inf"),))] == 3
    assert merged[("sink_seconds_count", ())] == 3


def test_process_figures_are_the_first_process_s_only() -> None:
    merged = samples(merge_expositions([exposition({}, 0, []), exposition({}, 0, [])]).decode())
    assert merged[("process_resident_memory_bytes", ())] == 100


def test_the_merged_text_parses_with_one_family_per_name() -> None:
    text = merge_expositions([exposition({"BTCUSDT": 1}, 1, [0.2])] * 3).decode()
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))
