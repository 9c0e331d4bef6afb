"""OHLCV candles of one symbol, computed in SQL from its stored trades."""

from __future__ import annotations

# OHLCV per interval for trades in [start, end], newest bucket first; CandleOut's fields, in
# its order. open/close: the price of the first/last trade in the bucket, as min/max over
# [trade_time, trade_id, price] arrays — streaming aggregates, no per-bucket sort or array_agg.
# $1 symbol, $2 interval_ms, $3 start, $4 end, $5 limit
CANDLES = """
    SELECT bucket AS open_time,
           bucket + $2::bigint - 1 AS close_time,
           ((min(ARRAY[trade_time, trade_id, price]))[3])::text AS open,
           max(price)::text AS high,
           min(price)::text AS low,
           ((max(ARRAY[trade_time, trade_id, price]))[3])::text AS close,
           sum(quantity)::text AS volume,
           count(*) AS trades
    FROM (
        SELECT trade_time - trade_time % $2::bigint AS bucket,
               trade_time, trade_id, price, quantity
        FROM crypto_prices
        WHERE symbol = $1 AND trade_time >= $3::bigint AND trade_time <= $4::bigint
    ) AS trades
    GROUP BY bucket
    ORDER BY bucket DESC
    LIMIT $5::bigint
"""


_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS

# The widest time range one candles request may cover, per interval. A candle query reads
# every trade in its range, so its cost grows with the range, whatever `limit` keeps: without
# a bound, one request for a symbol's whole history of 1s candles scans all of it. These keep
# each request to at most ~20,000 buckets (1s: 21,600) and the short intervals to a range of
# trades a read can aggregate within api.read_timeout_ms; the default window (the `limit`
# intervals up to `end`, ≤ 1,000) is always inside them.
MAX_SPAN_MS: dict[str, int] = {
    "1s": 6 * _HOUR_MS,
    "1m": 7 * _DAY_MS,
    "5m": 30 * _DAY_MS,
    "1h": 366 * _DAY_MS,
    "1d": 5 * 366 * _DAY_MS,
}


def bucket_start(epoch_ms: int, interval_ms: int) -> int:
    return epoch_ms - epoch_ms % interval_ms


def describe_span(span_ms: int) -> str:
    """A span for a message: `6 h`, `7 days`."""
    if span_ms % _DAY_MS == 0:
        return f"{span_ms // _DAY_MS} days"
    return f"{span_ms / _HOUR_MS:g} h"
