"""The read queries behind /prices, and the opaque history cursor.

Every query reads one symbol newest-first, so each one is a range scan of the
(symbol, trade_time DESC) index; ties on trade_time are ordered by trade_id, which makes the
order total (pagination neither skips nor repeats a row). Decimals are cast to text in SQL, so
the API returns exactly the stored digits.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Select,
    Text,
    TextClause,
    and_,
    bindparam,
    cast,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.sql.elements import ColumnElement

from api.schemas import MAX_EPOCH_MS, MAX_TRADE_ID
from pipeline.db import crypto_prices, tracked_symbols

_c = crypto_prices.c
TRADE_COLUMNS = (
    _c.symbol,
    _c.trade_id,
    cast(_c.price, Text).label("price"),
    cast(_c.quantity, Text).label("quantity"),
    _c.is_buyer_maker,
    _c.event_time,
    _c.trade_time,
    _c.processed_at,
)
NEWEST_FIRST = (_c.trade_time.desc(), _c.trade_id.desc())


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


def latest_trade(symbol: str) -> Select[tuple[object, ...]]:
    return select(*TRADE_COLUMNS).where(_c.symbol == symbol).order_by(*NEWEST_FIRST).limit(1)


def latest_trades() -> Select[tuple[object, ...]]:
    """The newest trade of each tracked symbol: one index probe per symbol (LATERAL)."""
    newest = (
        select(*TRADE_COLUMNS)
        .where(_c.symbol == tracked_symbols.c.symbol)
        .order_by(*NEWEST_FIRST)
        .limit(1)
        .lateral("newest")
    )
    return (
        select(newest)
        .select_from(tracked_symbols.join(newest, true()))
        .order_by(tracked_symbols.c.symbol)
    )


def history(
    symbol: str, start: int | None, end: int | None, after: Cursor | None, limit: int
) -> Select[tuple[object, ...]]:
    """Trades in [start, end], newest first, older than `after`; `limit` rows."""
    conditions: list[ColumnElement[bool]] = [_c.symbol == symbol]
    if start is not None:
        conditions.append(_c.trade_time >= start)
    if end is not None:
        conditions.append(_c.trade_time <= end)
    if after is not None:
        # The plain bound is what the index range uses; the OR breaks ties on trade_time.
        conditions.append(_c.trade_time <= after.trade_time)
        conditions.append(
            or_(
                _c.trade_time < after.trade_time,
                and_(_c.trade_time == after.trade_time, _c.trade_id < after.trade_id),
            )
        )
    return select(*TRADE_COLUMNS).where(*conditions).order_by(*NEWEST_FIRST).limit(limit)


def newest_trade_time(symbol: str) -> Select[tuple[int]]:
    return select(_c.trade_time).where(_c.symbol == symbol).order_by(*NEWEST_FIRST).limit(1)


# open/close: the price of the first/last trade in the bucket, as min/max over
# [trade_time, trade_id, price] arrays — streaming aggregates, no per-bucket sort or array_agg.
CANDLES = text(
    """
    SELECT bucket AS open_time,
           bucket + :interval_ms - 1 AS close_time,
           ((min(ARRAY[trade_time, trade_id, price]))[3])::text AS open,
           max(price)::text AS high,
           min(price)::text AS low,
           ((max(ARRAY[trade_time, trade_id, price]))[3])::text AS close,
           sum(quantity)::text AS volume,
           count(*) AS trades
    FROM (
        SELECT trade_time - trade_time % :interval_ms AS bucket,
               trade_time, trade_id, price, quantity
        FROM crypto_prices
        WHERE symbol = :symbol AND trade_time >= :start AND trade_time <= :end
    ) AS trades
    GROUP BY bucket
    ORDER BY bucket DESC
    LIMIT :limit
    """
)


def candles(symbol: str, interval_ms: int, start: int, end: int, limit: int) -> TextClause:
    """OHLCV per interval for trades in [start, end], newest bucket first."""
    return CANDLES.bindparams(
        bindparam("symbol", symbol, type_=Text),
        bindparam("interval_ms", interval_ms, type_=BigInteger),
        bindparam("start", start, type_=BigInteger),
        bindparam("end", end, type_=BigInteger),
        bindparam("limit", limit, type_=BigInteger),
    )


def bucket_start(epoch_ms: int, interval_ms: int) -> int:
    return epoch_ms - epoch_ms % interval_ms
