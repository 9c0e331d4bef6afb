"""The read queries behind /prices (plain SQL for asyncpg), and the opaque history cursor.

Every query reads one symbol newest-first, so each one is a range scan of the
(symbol, trade_time DESC) index; ties on trade_time are ordered by trade_id, which makes the
order total (pagination neither skips nor repeats a row). Decimals are cast to text in SQL, so
the API returns exactly the stored digits.

The statements are fixed strings with `$n` parameters: asyncpg prepares each one once per
connection and reuses it (its statement cache), so a read costs no SQL building or compiling.
Selected columns are named and ordered as the response models' fields (api.schemas), which is
what lets api.reads encode rows to JSON directly; a test holds the two together.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from api.schemas import MAX_EPOCH_MS, MAX_TRADE_ID

# TradeOut's fields, in its order.
TRADE_COLUMNS = (
    "symbol, trade_id, price::text AS price, quantity::text AS quantity, is_buyer_maker, "
    "event_time, trade_time, processed_at"
)
NEWEST_FIRST = "trade_time DESC, trade_id DESC"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Position after the last row of a page: the next page holds strictly older rows."""

    trade_time: int
    trade_id: int

    def encode(self) -> str:
        raw = f"{self.trade_time},{self.trade_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor:
        """Parse a cursor from a client; ValueError when it is not one this API issued."""
        if not value or len(value) > 64 or not value.isascii():
            raise ValueError("invalid cursor")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raise ValueError("invalid cursor") from None
        time_part, sep, id_part = raw.partition(",")
        if not sep or not time_part.isdigit() or not id_part.isdigit():
            raise ValueError("invalid cursor")
        cursor = cls(int(time_part), int(id_part))
        if cursor.trade_time > MAX_EPOCH_MS or cursor.trade_id > MAX_TRADE_ID:
            raise ValueError("invalid cursor")
        if cursor.encode() != value:  # one spelling per position: no lookalike cursors
            raise ValueError("invalid cursor")
        return cursor


# $1 symbol
LATEST_TRADE = (
    f"SELECT {TRADE_COLUMNS} FROM crypto_prices WHERE symbol = $1 ORDER BY {NEWEST_FIRST} LIMIT 1"
)

# The newest trade of each tracked symbol: one index probe per symbol (LATERAL).
LATEST_TRADES = f"""
    SELECT newest.*
    FROM tracked_symbols AS tracked
    CROSS JOIN LATERAL (
        SELECT {TRADE_COLUMNS}
        FROM crypto_prices
        WHERE crypto_prices.symbol = tracked.symbol
        ORDER BY {NEWEST_FIRST}
        LIMIT 1
    ) AS newest
    ORDER BY tracked.symbol
"""

# $1 symbol
IS_TRACKED = "SELECT EXISTS (SELECT 1 FROM tracked_symbols WHERE symbol = $1)"

# $1 symbol
NEWEST_TRADE_TIME = (
    f"SELECT trade_time FROM crypto_prices WHERE symbol = $1 ORDER BY {NEWEST_FIRST} LIMIT 1"
)


def history(
    symbol: str, start: int | None, end: int | None, after: Cursor | None, limit: int
) -> tuple[str, list[object]]:
    """Trades in [start, end], newest first, older than `after`; `limit` rows.

    The SQL and its arguments; each combination of given bounds is its own (cached) statement,
    so every bound that is present can narrow the index range.
    """
    args: list[object] = [symbol]

    def arg(value: int) -> str:
        args.append(value)
        return f"${len(args)}::bigint"

    conditions = ["symbol = $1"]
    if start is not None:
        conditions.append(f"trade_time >= {arg(start)}")
    if end is not None:
        conditions.append(f"trade_time <= {arg(end)}")
    if after is not None:
        # The plain bound is what the index range uses; the OR breaks ties on trade_time.
        time, trade_id = arg(after.trade_time), arg(after.trade_id)
        conditions.append(f"trade_time <= {time}")
        conditions.append(
            f"(trade_time < {time} OR (trade_time = {time} AND trade_id < {trade_id}))"
        )
    sql = (
        f"SELECT {TRADE_COLUMNS} FROM crypto_prices WHERE {' AND '.join(conditions)} "
        f"ORDER BY {NEWEST_FIRST} LIMIT {arg(limit)}"
    )
    return sql, args


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
