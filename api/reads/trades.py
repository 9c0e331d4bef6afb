"""The trade queries behind /prices: plain SQL for asyncpg.

Every query reads one symbol newest-first, so each one is a range scan of the
(symbol, trade_time DESC) index; ties on trade_time are ordered by trade_id, which makes the
order total (pagination neither skips nor repeats a row). Decimals are cast to text in SQL, so
the API returns exactly the stored digits.

The statements are fixed strings with `$n` parameters: asyncpg prepares each one once per
connection and reuses it (its statement cache), so a read costs no SQL building or compiling.
Selected columns are named and ordered as the response models' fields (api.schemas), which is
what lets the reads encode rows to JSON directly; a test holds the two together.
"""

from __future__ import annotations

from api.reads.cursor import Cursor

# TradeOut's fields, in its order.
TRADE_COLUMNS = (
    "symbol, trade_id, price::text AS price, quantity::text AS quantity, is_buyer_maker, "
    "event_time, trade_time, processed_at"
)
NEWEST_FIRST = "trade_time DESC, trade_id DESC"

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


# The push feed's resume (api.stream): a symbol's trades in trade-id order, from the primary key.

# $1 symbol, $2 first trade_id, $3 last trade_id (both inclusive), $4 limit; oldest id first
TRADES_BY_ID = (
    f"SELECT {TRADE_COLUMNS} FROM crypto_prices "
    "WHERE symbol = $1 AND trade_id >= $2::bigint AND trade_id <= $3::bigint "
    "ORDER BY trade_id LIMIT $4::bigint"
)

# $1 symbol: the trade with the highest id
NEWEST_TRADE_BY_ID = (
    f"SELECT {TRADE_COLUMNS} FROM crypto_prices WHERE symbol = $1 ORDER BY trade_id DESC LIMIT 1"
)

# $1 symbols: the highest stored trade_id of each (NULL when it has none); one probe per symbol
NEWEST_TRADE_IDS = """
    SELECT s.symbol,
           (SELECT c.trade_id FROM crypto_prices c WHERE c.symbol = s.symbol
            ORDER BY c.trade_id DESC LIMIT 1) AS trade_id
    FROM unnest($1::text[]) AS s(symbol)
"""
