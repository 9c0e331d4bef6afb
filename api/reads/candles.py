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


def bucket_start(epoch_ms: int, interval_ms: int) -> int:
    return epoch_ms - epoch_ms % interval_ms
