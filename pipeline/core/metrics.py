"""Prometheus metrics of every stage, served by the API at /metrics.

Counters per symbol are labelled; everything is updated per batch or per event in O(1),
never logged per message. Counts a hot path keeps itself (per frame, where an `inc()` would cost
a lock) reach their counters through `on_collect` hooks, which `exposition()` runs
first: every exposition includes every count so far.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# Re-exported: the consumer calls metrics.observe_many (it needs prometheus_client internals).
from pipeline.core._prometheus_compat import observe_many as observe_many

TRADES_RECEIVED = Counter(
    "pipeline_trades_received_total", "Frames received from the exchange", ["source"]
)
TRADES_VALID = Counter("pipeline_trades_validated_total", "Valid trades", ["symbol"])
TRADES_REJECTED = Counter(
    "pipeline_trades_rejected_total", "Frames that failed validation (sent to the DLQ)", ["source"]
)
TRADES_PRODUCED = Counter(
    "pipeline_trades_produced_total", "Trades acknowledged by Kafka", ["symbol"]
)
DLQ_PRODUCED = Counter("pipeline_dlq_records_total", "Records written to the DLQ", ["source"])
PRODUCER_QUEUE = Gauge("pipeline_producer_queue_size", "Events waiting for the Kafka producer")
KAFKA_UP = Gauge("pipeline_kafka_up", "1 while the producer reaches Kafka")

RECORDS_CONSUMED = Counter("pipeline_records_consumed_total", "Records read from Kafka")
ROWS_STORED = Counter(
    "pipeline_rows_stored_total",
    "Rows inserted into crypto_prices (duplicates excluded)",
    ["symbol"],
)
ROWS_DUPLICATE = Counter(
    "pipeline_rows_duplicate_total", "Records whose (symbol, trade_id) was already stored"
)
SINK_BATCH_SIZE = Histogram(
    "pipeline_sink_batch_size",
    "Rows per sink transaction",
    buckets=(1, 10, 50, 100, 500, 1_000, 2_500, 5_000, 10_000),
)
SINK_LATENCY = Histogram(
    "pipeline_sink_seconds",
    "Duration of one sink transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SINK_RETRIES = Counter("pipeline_sink_retries_total", "Sink transactions retried after an error")
E2E_LATENCY = Histogram(
    "pipeline_e2e_latency_seconds",
    "Trade time to stored in PostgreSQL",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge("pipeline_consumer_lag", "Records not yet stored", ["partition"])

SOURCE_CONNECTED = Gauge("pipeline_source_connections", "Open exchange WebSocket connections")
SOURCE_RECONNECTS = Counter("pipeline_source_reconnects_total", "Exchange WebSocket reconnects")
GAPS_FOUND = Counter("pipeline_gaps_found_total", "Trade id gaps detected", ["symbol"])
TRADES_BACKFILLED = Counter(
    "pipeline_trades_backfilled_total", "Trades fetched from REST to fill gaps", ["symbol"]
)
EXCHANGE_GAPS = Counter(
    "pipeline_exchange_gaps_total", "Trade ids the exchange's REST API does not have", ["symbol"]
)
STREAM_CLIENTS = Gauge("pipeline_stream_clients", "Push-feed clients connected (SSE and WebSocket)")
STREAM_EVENTS_SENT = Counter(
    "pipeline_stream_events_sent_total", "Trades queued for push-feed clients", ["kind"]
)
STREAM_CLIENTS_DROPPED = Counter(
    "pipeline_stream_clients_dropped_total",
    "Push-feed clients the server disconnected (slow: their buffer overflowed)",
    ["reason"],
)
STREAM_FANOUT_LAG = Histogram(
    "pipeline_stream_fanout_lag_seconds",
    "Kafka record timestamp to fan-out to the push-feed clients",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TASK_RESTARTS = Counter("pipeline_task_restarts_total", "Background role restarts", ["role"])
SYMBOLS_SKIPPED = Counter(
    "pipeline_symbols_skipped_total",
    "Symbol names not matching ^[A-Z0-9]{2,20}$, skipped (each name counted once per process)",
    ["origin"],  # exchange (listed by exchangeInfo) or registry (a row in tracked_symbols)
)

HISTORY_TRADES = Counter(
    "pipeline_history_trades_total",
    "Trades fetched by history jobs (POST /backfills) and published",
    ["symbol"],
)
HISTORY_JOBS = Gauge(
    "pipeline_history_jobs", "History jobs in the backfill_jobs table by state", ["state"]
)
HISTORY_JOBS_RUNNING = Gauge(
    "pipeline_history_jobs_running", "History jobs this instance is running"
)
REST_WEIGHT = Counter(
    "pipeline_rest_weight_total",
    "Exchange REST request weight spent: foreground (gap filling, symbol checks) or "
    "background (history jobs)",
    ["priority"],
)


# Bound methods, held weakly: a hook goes away with its object (a source replaced, a test's).
_collect_hooks: list[weakref.WeakMethod[Callable[[], None]]] = []
# Two expositions at once (from two threads) must not move a count into its counter twice.
_collect_lock = threading.Lock()


def on_collect(hook: Callable[[], None]) -> None:
    """Run `hook` (a bound method that adds its pending counts to their counters) before every
    `exposition()`, for as long as its object lives."""
    with _collect_lock:
        _collect_hooks.append(weakref.WeakMethod(hook))


def collect_pending() -> None:
    """Run the live on_collect hooks now."""
    with _collect_lock:
        live = [hook for ref in _collect_hooks if (hook := ref()) is not None]
        _collect_hooks[:] = [weakref.WeakMethod(hook) for hook in live]
        for hook in live:
            hook()


def exposition() -> bytes:
    """This process's Prometheus exposition, pending counts included."""
    collect_pending()
    return generate_latest(REGISTRY)


# Per-process families that would mean nothing summed over processes: the API process's own.
_PER_PROCESS_PREFIXES = ("process_", "python_")


def merge_expositions(texts: list[str]) -> bytes:
    """One exposition from several processes' (the API's first): samples with the same name and
    labels are added up.

    Every pipeline metric is a counter or histogram (adding up is the aggregate) or a gauge only
    one role sets (the others report 0), so a sum is right for all of them. process_* and
    python_* describe one process: only the first text's are kept.
    """
    merged: dict[str, tuple[Metric, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for index, text in enumerate(texts):
        for family in text_string_to_metric_families(text):
            if index > 0 and family.name.startswith(_PER_PROCESS_PREFIXES):
                continue
            if family.name not in merged:
                merged[family.name] = (Metric(family.name, family.documentation, family.type), {})
            values = merged[family.name][1]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_created"):
                    # A creation time: the earliest one, not a sum.
                    values[key] = min(values.get(key, sample.value), sample.value)
                else:
                    values[key] = values.get(key, 0.0) + sample.value
    for metric, values in merged.values():
        for (sample_name, labels), value in values.items():
            metric.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([metric for metric, _ in merged.values()]))
    return generate_latest(registry)


class _Families(Collector):
    """Metric families built already, for generate_latest()."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
