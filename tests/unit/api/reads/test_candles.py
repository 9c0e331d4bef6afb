"""Candle buckets: aligned to multiples of the interval."""

from __future__ import annotations

from api.reads.candles import bucket_start


def test_buckets_start_at_a_multiple_of_the_interval() -> None:
    assert bucket_start(1_764_000_061_999, 60_000) == 1_764_000_060_000
    assert bucket_start(1_764_000_060_000, 60_000) == 1_764_000_060_000
