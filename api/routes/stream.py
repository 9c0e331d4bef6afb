"""Live trades pushed to clients: GET /stream (Server-Sent Events) and WS /ws, resumable exactly.

The rules of positions, resume and backfill are api.stream's; this module checks a request
(symbols, position, conflation, key, limits) and hands the connection to the hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, HTTPException, Query, Request, WebSocket, status
from fastapi.exceptions import RequestValidationError
from starlette.responses import Response

from api.deps import AppState
from api.schemas.common import ErrorOut
from api.security import API_KEY_HEADER, key_matches
from api.stream.client import StreamClient
from api.stream.events import SseFraming, WsFraming
from api.stream.hub import StreamHub, StreamUnavailable, TooManyClients
from api.stream.positions import MAX_EVENT_ID_LENGTH, SymbolPosition, parse_event_id
from api.stream.transports import EventStreamResponse, serve_websocket
from pipeline.core.settings import Settings
from pipeline.core.trade_checks import normalize_symbol

router = APIRouter(tags=["stream"])

CONFLATE_PATTERN = re.compile(r"(\d{1,6})(ms|s)")
CONFLATE_MIN_S = 0.01
CONFLATE_MAX_S = 60.0

# WebSocket close codes for a refused stream, after the HTTP status they stand for.
WS_UNAUTHORIZED = 4401
WS_INVALID = 4422
WS_TOO_MANY = 4429
WS_UNAVAILABLE = 1013  # try again later

SymbolsQuery = Annotated[
    str,
    Query(
        max_length=22_000,
        description="comma-separated symbols, case-insensitive (at most `stream.max_symbols`)",
        examples=["BTCUSDT,ETHUSDT"],
    ),
]
ConflateQuery = Annotated[
    str | None,
    Query(
        max_length=12,
        description="at most one update per symbol per interval (10ms to 60s), the newest "
        "trade; e.g. `100ms` or `1s`. Without it every trade is sent.",
        examples=["100ms"],
    ),
]
AfterQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_EVENT_ID_LENGTH,
        description="an event id: resume after it (Last-Event-ID wins when both are given)",
        examples=["BTCUSDT:123,ETHUSDT:456"],
    ),
]

STREAM_DESCRIPTION = """\
One event per trade of the given symbols, as it reaches Kafka: `event: trade` with the same JSON
as `GET /prices/{symbol}`, or `event: backfill` for an older trade the exchange source filled in
later. The first event is `ready`; the last, when the server ends the stream, is `close` with the
reason (`slow`: the client fell more than `stream.client_buffer` events behind).

Each event's `id` is the position in every subscribed symbol (`BTCUSDT:123,ETHUSDT:456`; ids
not received yet follow `~` as distances below it: `BTCUSDT:123~23-13` lacks 100 to 110).
Reconnecting with `Last-Event-ID` (which EventSource sends by itself) or `?after=` resumes
exactly: every trade missed, from the table, then live — no gap, no repeat, per symbol in
trade-id order. `WS /ws` (not in this schema) serves the same stream over a WebSocket.
"""


@dataclass(frozen=True)
class StreamRequest:
    symbols: tuple[str, ...]
    conflate_s: float | None
    resume: dict[str, SymbolPosition] | None


class InvalidStreamRequest(ValueError):
    def __init__(self, field: str, message: str, value: object) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.value = value


def parse_request(
    settings: Settings, symbols: str, conflate: str | None, after: str | None
) -> StreamRequest:
    """The stream a client asks for; InvalidStreamRequest naming the parameter otherwise."""
    names: list[str] = []
    for part in symbols.split(","):
        if not part.strip():
            continue
        try:
            names.append(normalize_symbol(part))
        except ValueError as exc:
            raise InvalidStreamRequest("symbols", str(exc), symbols) from None
    unique = tuple(dict.fromkeys(names))
    if not unique:
        raise InvalidStreamRequest("symbols", "at least one symbol", symbols)
    limit = settings.stream.max_symbols
    if len(unique) > limit:
        raise InvalidStreamRequest(
            "symbols", f"at most {limit} symbols per stream (stream.max_symbols)", symbols
        )
    conflate_s = None
    if conflate is not None:
        match = CONFLATE_PATTERN.fullmatch(conflate.strip())
        value = int(match[1]) / (1000 if match[2] == "ms" else 1) if match else None
        if value is None or not CONFLATE_MIN_S <= value <= CONFLATE_MAX_S:
            raise InvalidStreamRequest(
                "conflate", "an interval from 10ms to 60s, e.g. 100ms or 1s", conflate
            )
        conflate_s = value
    resume = None
    if after is not None:
        try:
            resume = parse_event_id(after.strip())
        except ValueError as exc:
            raise InvalidStreamRequest(
                "after", f"not an event id of this stream: {exc}", after
            ) from None
    return StreamRequest(unique, conflate_s, resume)


def may_stream(settings: Settings, given_key: str | None) -> bool:
    """Streams are open like every read, unless API_KEY is set and STREAM_REQUIRES_KEY is true."""
    expected = settings.api.api_key
    if expected is None or not settings.stream.requires_key:
        return True
    return key_matches(given_key, expected)


def _state(connection: Request | WebSocket) -> AppState:
    return cast(AppState, connection.scope["state"])


def _client(settings: Settings, wanted: StreamRequest, framing: Any) -> StreamClient:
    return StreamClient(
        wanted.symbols,
        framing,
        buffer=settings.stream.client_buffer,
        flush_s=settings.stream.flush_ms / 1000,
        conflate_s=wanted.conflate_s,
        details={
            "buffer": settings.stream.client_buffer,
            "limit": settings.stream.max_resume_trades,
        },
    )


@router.get(
    "/stream",
    summary="Live trades as Server-Sent Events, resumable with Last-Event-ID",
    description=STREAM_DESCRIPTION,
    response_class=EventStreamResponse,
    status_code=200,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the event stream"},
        401: {
            "model": ErrorOut,
            "description": "API_KEY and STREAM_REQUIRES_KEY are set and X-API-Key is wrong",
        },
        429: {"model": ErrorOut, "description": "too many streams open (stream.max_clients)"},
        503: {"model": ErrorOut, "description": "streaming is off or the server is stopping"},
    },
)
async def stream(
    request: Request,
    symbols: SymbolsQuery,
    conflate: ConflateQuery = None,
    after: AfterQuery = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=MAX_EVENT_ID_LENGTH,
            description="the id of the last event received (EventSource sends it on reconnect)",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        Header(
            alias=API_KEY_HEADER,
            description="needed when the service runs with API_KEY and STREAM_REQUIRES_KEY",
        ),
    ] = None,
) -> Response:
    state = _state(request)
    settings = state["settings"]
    if not may_stream(settings, api_key):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"missing or invalid {API_KEY_HEADER} header"
        )
    try:
        wanted = parse_request(settings, symbols, conflate, last_event_id or after)
    except InvalidStreamRequest as exc:
        where = "header" if exc.field == "after" and last_event_id else "query"
        name = "Last-Event-ID" if where == "header" else exc.field
        raise RequestValidationError(
            [{"type": "value_error", "loc": (where, name), "msg": exc.message, "input": exc.value}]
        ) from None
    hub = state.get("stream")
    if hub is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "streaming is off (stream.enabled)"
        )
    client = _client(settings, wanted, SseFraming())
    try:
        hub.admit(client)
    except TooManyClients as exc:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS, str(exc), {"Retry-After": "1"}
        ) from None
    except StreamUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    return EventStreamResponse(hub, client, wanted.resume)


@router.websocket("/ws")
async def websocket_stream(websocket: WebSocket) -> None:
    """The same stream over a WebSocket: `/ws?symbols=A,B[&after=<event id>][&conflate=100ms]`.

    Refusals close the socket right after accepting it, with a code after the HTTP status:
    4401 (key), 4422 (invalid request), 4429 (too many streams), 1013 (try again later).
    """
    await websocket.accept()
    state = _state(websocket)
    settings = state["settings"]
    query = websocket.query_params
    if not may_stream(settings, websocket.headers.get(API_KEY_HEADER)):
        await websocket.close(WS_UNAUTHORIZED, f"missing or invalid {API_KEY_HEADER} header")
        return
    try:
        wanted = parse_request(
            settings, query.get("symbols", ""), query.get("conflate"), query.get("after")
        )
    except InvalidStreamRequest as exc:
        await websocket.close(WS_INVALID, _reason(str(exc)))
        return
    hub: StreamHub | None = state.get("stream")
    if hub is None:
        await websocket.close(WS_UNAVAILABLE, "streaming is off")
        return
    client = _client(settings, wanted, WsFraming())
    try:
        hub.admit(client)
    except TooManyClients:
        await websocket.close(WS_TOO_MANY, "too many streams open")
        return
    except StreamUnavailable:
        await websocket.close(WS_UNAVAILABLE, "the server is stopping")
        return
    await serve_websocket(websocket, hub, client, wanted.resume)


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes."""
    encoded = text.encode()
    return text if len(encoded) <= 123 else encoded[:120].decode(errors="ignore") + "…"
