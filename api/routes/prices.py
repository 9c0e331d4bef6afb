"""Stored trades: latest per symbol, history pages and OHLCV candles, all computed in SQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from api.deps import ReadsDep
from api.reads import candles
from api.reads.cursor import Cursor
from api.reads.prices import ReadTimedOut
from api.schemas.common import MAX_EPOCH_MS, ErrorOut, SymbolInput
from api.schemas.prices import (
    INTERVAL_MS,
    CandlesOut,
    Interval,
    LatestPricesOut,
    TradeOut,
    TradePageOut,
)

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
    503: {
        "model": ErrorOut,
        "description": "PostgreSQL unavailable, or the read took longer than "
        "`api.read_timeout_ms` (5 s by default) and was cancelled",
    }
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown symbol, or no trades stored yet"}
}


class OrjsonResponse(Response):
    """`application/json`, encoded by orjson: the same bytes as FastAPI's for these shapes
    (compact separators; keys in insertion order; strings, ints, bools and null only)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _query_error(name: str, message: str, value: object) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def _check_range(start: int | None, end: int | None) -> None:
    if start is not None and end is not None and start > end:
        raise _query_error("start", "start must not be after end", start)


def _check_span(interval: str, start: int, end: int, end_given: bool) -> None:
    """422 when [start, end] is wider than candles of `interval` may cover."""
    limit_ms = candles.MAX_SPAN_MS[interval]
    if end - start <= limit_ms:
        return
    to = "end" if end_given else "the latest trade (end)"
    raise _query_error(
        "start",
        f"{interval} candles cover at most {candles.describe_span(limit_ms)} ({limit_ms} ms) "
        f"per request; start is {end - start} ms before {to}: narrow start/end or use a "
        "longer interval",
        start,
    )


@contextmanager
def _in_time() -> Iterator[None]:
    """A read past api.read_timeout_ms: 503 with the reason, never a 500."""
    try:
        yield
    except ReadTimedOut as exc:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}
        ) from None


@router.get(
    "",
    summary="Latest trade of every tracked symbol",
    description="One row per tracked symbol that has stored trades (an index probe each).",
    response_model=LatestPricesOut,
    responses=DB_ERRORS,
)
async def latest_prices(reads: ReadsDep) -> Response:
    with _in_time():
        return OrjsonResponse({"items": await reads.latest_trades()})


@router.get(
    "/{symbol}",
    summary="Latest trade of one symbol",
    description=(
        "The newest stored trade of the symbol. Served from a copy at most "
        "`api.latest_cache_ms` (100 ms by default) old: the hot read does not ask PostgreSQL "
        "on every request."
    ),
    response_model=TradeOut,
    responses={**NOT_FOUND, **DB_ERRORS},
)
async def latest_price(symbol: SymbolPath, reads: ReadsDep) -> Response:
    with _in_time():
        trade = await reads.latest_trade(symbol)
        if trade is not None:
            return Response(trade, media_type="application/json")
        tracked = await reads.is_tracked(symbol)
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
    response_model=TradePageOut,
    responses={**DB_ERRORS},
)
async def price_history(
    symbol: SymbolPath,
    reads: ReadsDep,
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(max_length=64, description="`next_cursor` of the previous page (opaque)"),
    ] = None,
) -> Response:
    _check_range(start, end)
    after = None
    if cursor is not None:
        try:
            after = Cursor.decode(cursor)
        except ValueError:
            raise _query_error(
                "cursor", "invalid cursor: pass a next_cursor value as is", cursor
            ) from None
    with _in_time():
        items = await reads.history(symbol, start, end, after, limit + 1)
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = Cursor(items[-1]["trade_time"], items[-1]["trade_id"]).encode()
    return OrjsonResponse({"items": items, "next_cursor": next_cursor})


@router.get(
    "/{symbol}/candles",
    summary="OHLCV candles per interval, computed in SQL",
    description=(
        "Open/high/low/close/volume and trade count per `interval` bucket "
        "(bucket = trade_time - trade_time % interval), newest first; intervals without "
        "trades are omitted. Without `start`, the `limit` intervals ending at `end` "
        "(default: the latest trade) are covered. One request covers at most "
        + ", ".join(
            f"{candles.describe_span(span)} of {name} candles"
            for name, span in candles.MAX_SPAN_MS.items()
        )
        + " (end - start); a wider range is 422."
    ),
    response_model=CandlesOut,
    responses={**DB_ERRORS},
)
async def price_candles(
    symbol: SymbolPath,
    reads: ReadsDep,
    interval: Annotated[Interval, Query(description="bucket size")] = "1m",
    start: StartQuery = None,
    end: EndQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
) -> Response:
    _check_range(start, end)
    interval_ms = INTERVAL_MS[interval]
    end_given = end is not None
    if start is not None and end is not None:
        _check_span(interval, start, end, end_given)
    items: list[dict[str, Any]] = []
    with _in_time():
        if end is None:
            end = await reads.newest_trade_time(symbol)
        if end is not None and (start is None or start <= end):
            if start is None:
                window = (limit - 1) * interval_ms
                start = max(candles.bucket_start(end, interval_ms) - window, 0)
            else:
                _check_span(interval, start, end, end_given)
            items = await reads.candles(symbol, interval_ms, start, end, limit)
    return OrjsonResponse({"symbol": symbol, "interval": interval, "items": items})
