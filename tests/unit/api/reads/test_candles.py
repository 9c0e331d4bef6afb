"""Candle buckets: aligned to multiples of the interval; ranges bounded per interval."""

from __future__ import annotations

from api.reads.candles import MAX_SPAN_MS, bucket_start, describe_span
from api.routes.prices import MAX_LIMIT
from api.schemas.prices import INTERVAL_MS


def test_buckets_start_at_a_multiple_of_the_interval() -> None:
    assert bucket_start(1_764_000_061_999, 60_000) == 1_764_000_060_000
    assert bucket_start(1_764_000_060_000, 60_000) == 1_764_000_060_000


def test_every_interval_has_a_bounded_span_that_holds_its_default_window() -> None:
    """Without `start` a request covers `limit` (≤ MAX_LIMIT) intervals: never beyond the bound."""
    assert MAX_SPAN_MS.keys() == INTERVAL_MS.keys()
    for interval, span in MAX_SPAN_MS.items():
        assert MAX_LIMIT * INTERVAL_MS[interval] <= span, interval
        assert span // INTERVAL_MS[interval] <= 25_000, interval  # buckets one query may build


def test_spans_read_as_hours_or_days() -> None:
    assert describe_span(MAX_SPAN_MS["1s"]) == "6 h"
    assert describe_span(MAX_SPAN_MS["1m"]) == "7 days"
    assert describe_span(90 * 60_000) == "1.5 h"
