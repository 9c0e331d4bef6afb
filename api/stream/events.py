"""A trade as the push feed sends it, and how SSE and WebSocket frame what a client receives.

Every trade's JSON is the body GET /prices/{symbol} answers for it: the same fields in the same
order (api.schemas.prices.TradeOut), decimals as the exact strings PostgreSQL stores. A trade read
from Kafka holds Decimals; PostgreSQL prints a numeric in plain notation with its scale
("0.00000010", never "1.0E-7"), which `format(value, "f")` reproduces digit for digit.

A trade is rendered once, however many clients receive it; per client only the event id differs.

SSE (text/event-stream):

    retry: 2000                                  (first message only)
    id: BTCUSDT:-1,ETHUSDT:456                   event `ready`: the starting position
    event: ready
    data: {"symbols":["BTCUSDT","ETHUSDT"],"resumed":false,"conflate_ms":null}

    id: BTCUSDT:123,ETHUSDT:456                  one event per trade: `trade` or `backfill`
    event: trade
    data: {"symbol":"BTCUSDT","trade_id":123,"price":"67123.45000000",...}

    event: close                                 the last one when the server ends the stream
    data: {"reason":"slow","detail":"..."}       (no id: Last-Event-ID stays the last trade's)

    : keep-alive                                 a comment when nothing was sent for a while

WebSocket: one text message per event, `{"event":"trade","id":"BTCUSDT:123","data":{...}}`,
`{"event":"ready","id":…,"symbols":…}`, then `{"event":"close","reason":…,"detail":…}` and the
close frame (api.stream.client.CLOSE_CODES).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Protocol

import orjson

from api.stream.positions import BACKFILL, Kind
from pipeline.core.trades import Row

RETRY_MS = 2_000  # how long an EventSource waits before reconnecting on its own


class FeedEvent:
    """One trade, rendered once for every client that gets it."""

    __slots__ = ("_sse", "_ws", "body", "fragment", "symbol", "trade_id")

    def __init__(self, symbol: str, trade_id: int, body: bytes) -> None:
        self.symbol = symbol
        self.trade_id = trade_id
        self.body = body
        # The symbol's position after this trade when the client has no holes: shared by all.
        self.fragment = f"{symbol}:{trade_id}"
        self._sse: dict[str, bytes] = {}
        self._ws: dict[str, str] = {}

    @classmethod
    def from_row(cls, row: Row) -> FeedEvent:
        """From a trade read from Kafka (pipeline.core.trades.Row)."""
        symbol, trade_id, price, quantity, event_time, trade_time, is_buyer_maker, processed = row
        body = orjson.dumps(
            {
                "symbol": symbol,
                "trade_id": trade_id,
                "price": _numeric_text(price),
                "quantity": _numeric_text(quantity),
                "is_buyer_maker": is_buyer_maker,
                "event_time": event_time,
                "trade_time": trade_time,
                "processed_at": processed,
            }
        )
        return cls(symbol, trade_id, body)

    @classmethod
    def from_stored(cls, row: dict[str, Any]) -> FeedEvent:
        """From a row of api.reads (its columns are TradeOut's fields, decimals as text)."""
        return cls(row["symbol"], row["trade_id"], orjson.dumps(row))

    def sse(self, kind: Kind) -> bytes:
        """The event after its `id:` line."""
        framed = self._sse.get(kind)
        if framed is None:
            framed = b"\nevent: " + kind.encode() + b"\ndata: " + self.body + b"\n\n"
            self._sse[kind] = framed
        return framed

    def ws(self, kind: Kind) -> tuple[str, str]:
        """The message around its id: what goes before and after it."""
        after = self._ws.get(kind)
        if after is None:
            after = '","data":' + self.body.decode() + "}"
            self._ws[kind] = after
        return (_WS_BACKFILL if kind == BACKFILL else _WS_TRADE), after


_WS_TRADE = '{"event":"trade","id":"'
_WS_BACKFILL = '{"event":"backfill","id":"'


def _numeric_text(value: Decimal) -> str:
    return format(value, "f")


Chunk = bytes | str


class Framing(Protocol):
    """How one transport spells the events of a stream."""

    heartbeat: Chunk | None

    def event(self, kind: Kind, ident: str, event: FeedEvent) -> Chunk: ...

    def ready(self, ident: str, info: dict[str, Any]) -> Chunk: ...

    def close(self, reason: str, detail: str) -> Chunk: ...


class SseFraming:
    heartbeat: Chunk | None = b": keep-alive\n\n"

    def event(self, kind: Kind, ident: str, event: FeedEvent) -> Chunk:
        return b"id: " + ident.encode() + event.sse(kind)

    def ready(self, ident: str, info: dict[str, Any]) -> Chunk:
        return (
            f"retry: {RETRY_MS}\nid: {ident}\nevent: ready\ndata: ".encode()
            + orjson.dumps(info)
            + b"\n\n"
        )

    def close(self, reason: str, detail: str) -> Chunk:
        return (
            b"event: close\ndata: " + orjson.dumps({"reason": reason, "detail": detail}) + b"\n\n"
        )


class WsFraming:
    # WebSocket keeps itself alive with ping frames (uvicorn's ws_ping_interval).
    heartbeat: Chunk | None = None

    def event(self, kind: Kind, ident: str, event: FeedEvent) -> Chunk:
        before, after = event.ws(kind)
        return before + ident + after

    def ready(self, ident: str, info: dict[str, Any]) -> Chunk:
        return orjson.dumps({"event": "ready", "id": ident, **info}).decode()

    def close(self, reason: str, detail: str) -> Chunk:
        return orjson.dumps({"event": "close", "reason": reason, "detail": detail}).decode()
