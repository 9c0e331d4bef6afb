"""Stored trades: latest per symbol, history pages and OHLCV candles, all computed in SQL."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import select

from api import queries
from api.deps import ConnectionDep
from api.queries import Cursor
from api.schemas import (
    INTERVAL_MS,
    MAX_EPOCH_MS,
    CandleOut,
    CandlesOut,
    ErrorOut,
    Interval,
    LatestPricesOut,
    SymbolInput,
    TradeOut,
    TradePageOut,
)
from pipeline.db import tracked_symbols

router = APIRouter(prefix="/prices", tags=["prices"])

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

SymbolPath = Annotated[
    SymbolInput,
    Path(description="symbol, case-insensitive", openapi_examples={"btc": {"value": "BTCUSDT"}}),
]
StartQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_EPOCH_MS,
        description="oldest trade_time to include, epoch ms",
        examples=[1764085200000],
    ),
]
EndQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_EPOCH_MS,
        description="newest trade_time to include, epoch ms",
        examples=[1764088800000],
    ),
]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page (1..1000)")]

DB_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorOut, "description": "PostgreSQL unavailable"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown symbol, or no trades stored yet"}
}


def _query_error(name: str, message: str, value: object) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _check_range(start: int | None, end: int | None) -> None:
    if start is not None and end is not None and start > end:
        raise _query_error("start", "start must not be after end", start)


def _trade(row: Any) -> TradeOut:
    return TradeOut.model_validate(row._mapping)


@router.get(
    "",
    summary="Latest trade of every tracked symbol",
    description="One row per tracked symbol that has stored trades (an index probe each).",
    responses=DB_ERRORS,
)
async def latest_prices(connection: ConnectionDep) -> LatestPricesOut:
    result = await connection.execute(queries.latest_trades())
    return LatestPricesOut(items=[_trade(row) for row in result])


@router.get(
    "/{symbol}",
    summary="Latest trade of one symbol",
    responses={**NOT_FOUND, **DB_ERRORS},
)
async def latest_price(symbol: SymbolPath, connection: ConnectionDep) -> TradeOut:
    row = (await connection.execute(queries.latest_trade(symbol))).first()
    if row is not None:
        return _trade(row)
    tracked = await connection.scalar(
        select(tracked_symbols.c.symbol).where(tracked_symbols.c.symbol == symbol)
    )
    reason = "is tracked but has no trades yet" if tracked else "is not tracked and has no trades"
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"{symbol} {reason}")


@router.get(
    "/{symbol}/history",
    summary="Trades in a time range, newest first, paginated",
    description=(
        "Trades with `start <= trade_time <= end` (either bound optional), newest first, "
        "`limit` per page. Pass `next_cursor` back as `cursor` (with the same start/end) for "
        "the next, older page; it is null on the last page."
    ),
    responses={**DB_ERRORS},
)
async def price_history(
    symbol: SymbolPath,
    connection: ConnectionDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=64, description="`next_cursor` of the previous page (opaque)"),
    ] = None,
) -> TradePageOut:
    _check_range(start, end)
    after = None
    if cursor is not None:
        try:
            after = Cursor.decode(cursor)
        except ValueError:
            raise _query_error(
                "cursor", "invalid cursor: pass a next_cursor value as is", cursor
            ) from None
    result = await connection.execute(queries.history(symbol, start, end, after, limit + 1))
    items = [_trade(row) for row in result]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = Cursor(items[-1].trade_time, items[-1].trade_id).encode()
    return TradePageOut(items=items, next_cursor=next_cursor)


@router.get(
    "/{symbol}/candles",
    summary="OHLCV candles per interval, computed in SQL",
    description=(
        "Open/high/low/close/volume and trade count per `interval` bucket "
        "(bucket = trade_time - trade_time % interval), newest first; intervals without "
        "trades are omitted. Without `start`, the `limit` intervals ending at `end` "
        "(default: the latest trade) are covered."
    ),
    responses={**DB_ERRORS},
)
async def price_candles(
    symbol: SymbolPath,
    connection: ConnectionDep,
    interval: Annotated[Interval, Query(description="bucket size")] = "1m",
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> CandlesOut:
    _check_range(start, end)
    interval_ms = INTERVAL_MS[interval]
    if end is None:
        end = await connection.scalar(queries.newest_trade_time(symbol))
        if end is None:
            return CandlesOut(symbol=symbol, interval=interval, items=[])
        if start is not None and end < start:
            return CandlesOut(symbol=symbol, interval=interval, items=[])
    if start is None:
        start = max(queries.bucket_start(end, interval_ms) - (limit - 1) * interval_ms, 0)
    result = await connection.execute(queries.candles(symbol, interval_ms, start, end, limit))
    items = [CandleOut.model_validate(row._mapping) for row in result]
    return CandlesOut(symbol=symbol, interval=interval, items=items)
