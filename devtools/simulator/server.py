"""`BinanceSimulator`: one port serving Binance's WS streams and the REST endpoints we use.

WS: `/ws/<stream>` (raw payloads), `/ws` (subscribe later), `/stream?streams=a/b` and `/stream`
(combined `{"stream":…,"data":…}` wrapper); live SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS,
SET_PROPERTY/GET_PROPERTY "combined"; server pings every `ping_interval_s`.
REST: see `rest.py`, answered from websockets' `process_request` hook on the same port.
Listings: exchangeInfo shows the markets (TRADING, BREAK once delisted) and odd names with no
market; `add_listing`, `delist`, `add_odd_listing` change them at runtime, and the config's
`listing_changes` over time.

Connection policy, after Binance's published limits:
* more than `MAX_MESSAGES_PER_SECOND` (10) incoming messages within one second → close 1008
  (policy violation);
* more than `max_pending_frames` frames waiting for a slow reader → close 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Coroutine, Iterable
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from websockets import ConnectionClosed
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from devtools.simulator import history, rest
from devtools.simulator.config import SimulatorConfig
from devtools.simulator.market import (
    MALFORMED_KINDS,
    STREAM_RE,
    SYMBOL_RE,
    TRADE_SUFFIX,
    Market,
    Pending,
    Trade,
    malform,
)
from devtools.simulator.subscriber import Subscriber
from devtools.simulator.weights import WeightMeter

_TICK_S = 0.02  # clock resolution: trades due since the last tick are produced together
_FLOOD_CHUNK = 256  # trades executed between two backpressure checks in flood()
_CLOSE_TIMEOUT_S = 2.0  # keeps stop() and disconnects quick even with a stuck client
_PING_TIMEOUT_S = 60.0  # Binance drops a connection that has not answered a ping in a minute
_WRITE_LIMIT = 2**18  # a deeper socket write buffer means fewer drain pauses under flood()
_METHODS = "`SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`"


class BinanceSimulator:
    """A Binance-compatible exchange on one port. Trades happen on every listed symbol at
    `rate_per_symbol` whether or not anyone listens; `trades_emitted()` is that tape."""

    def __init__(self, config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config
        self.host = host
        self._requested_port = port
        self._rng = random.Random(config.seed)
        self._markets: dict[str, Market] = {}
        # What exchangeInfo shows, name → status, in listing order: the markets (TRADING, or
        # BREAK once delisted) and the odd listings (no market behind them).
        self._listed: dict[str, str] = {}
        self._tapes: dict[str, history.Tape] = {}  # past and live, as aggTrades sees them
        self._history_end_ms = config.history_end_ms or _now_ms()
        self.rest_weight = WeightMeter(config.rest_weight_limit)
        for symbol in config.symbols:
            self.add_listing(symbol)
        for name in config.odd_listings:
            self.add_odd_listing(name)
        self._listing_changes = sorted(config.listing_changes, key=lambda change: change.at_s)
        self._clients: set[Subscriber] = set()
        self._subscribers: dict[str, set[Subscriber]] = {}  # symbol -> clients on <symbol>@trade
        self._paused = False
        self._prepared: list[Pending] = []
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen and start the clock."""
        self._server = await serve(
            self._serve_connection,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            compression=None,  # Binance does not negotiate permessage-deflate; it costs CPU
            ping_interval=self.config.ping_interval_s,
            ping_timeout=_PING_TIMEOUT_S,
            close_timeout=_CLOSE_TIMEOUT_S,
            write_limit=_WRITE_LIMIT,
        )
        self._spawn(self._run_clock())

    async def stop(self) -> None:
        """Stop the clock and close every connection (1001 going away)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        return int(next(iter(self._server.sockets)).getsockname()[1])

    @property
    def ws_url(self) -> str:
        """Base WS URL, the value for BINANCE_WS_URL."""
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """Base REST URL, the value for BINANCE_REST_URL."""
        return f"http://{self.host}:{self.port}"

    # -- control and observation ----------------------------------------------------------

    def pause(self) -> None:
        """Stop the clock's trades (and bursts); emit() and flood() still work."""
        self._paused = True

    def resume(self) -> None:
        """Restart the clock's trades."""
        self._paused = False

    def add_listing(self, symbol: str) -> None:
        """List a new symbol (or a delisted one again): it appears in exchangeInfo as TRADING
        and starts trading at once (a relisted one continues its trade ids)."""
        if not SYMBOL_RE.fullmatch(symbol):
            raise ValueError(f"{symbol!r} is not an upper-case Binance symbol")
        if symbol not in self._markets:
            cfg = self.config
            market = Market(symbol, cfg.start_trade_id, cfg.history_size)
            past = history.PastTape(
                market,
                cfg.seed,
                cfg.start_trade_id,
                cfg.history_days,
                cfg.history_rate_per_s,
                self._history_end_ms,
            )
            market.first_id = market.next_id = past.next_id  # live trades follow the past
            self._markets[symbol] = market
            self._tapes[symbol] = history.Tape(past, market)
        self._listed[symbol] = rest.TRADING

    def delist(self, symbol: str, *, status: str | None = rest.DELISTED) -> None:
        """Stop a listed symbol's trading: exchangeInfo shows it with `status` (Binance keeps
        delisted symbols as BREAK), or no longer at all when `status` is None. Its history
        stays (historicalTrades answers); the clock and emit() without symbols skip it."""
        if symbol not in self._markets:
            raise ValueError(f"{symbol!r} is not listed")
        if status is None:
            self._listed.pop(symbol, None)
        else:
            self._listed[symbol] = status

    def add_odd_listing(self, name: str, status: str = rest.TRADING) -> None:
        """List a name that is not a valid symbol (see ODD_LISTINGS): exchangeInfo shows it,
        nothing trades on it, and a strict client must skip it."""
        if name in self._markets:
            raise ValueError(f"{name!r} is a market; delist it instead")
        self._listed[name] = status

    def listings(self) -> dict[str, str]:
        """What exchangeInfo shows now: name → status."""
        return dict(self._listed)

    def trading(self) -> list[str]:
        """The markets trading now (listed as TRADING)."""
        return [s for s in self._markets if self._listed.get(s) == rest.TRADING]

    @property
    def history_end_ms(self) -> int:
        """Where the past tape ends and the live one begins (epoch ms)."""
        return self._history_end_ms

    def history_trades(self, symbol: str, start_ms: int, end_ms: int) -> list[Trade]:
        """Ground truth of a time window: every trade of `symbol` with start_ms <= time <=
        end_ms, from the past tape and the live one (as far as its history keeps)."""
        return self._tapes[symbol].trades_between(start_ms, end_ms)

    def history_ids(self, symbol: str, start_ms: int, end_ms: int) -> range:
        """The ids of `history_trades(symbol, start_ms, end_ms)`, computed in a few steps."""
        return self._tapes[symbol].ids_between(start_ms, end_ms)

    def trades_emitted(self) -> dict[str, set[int]]:
        """Ground truth: every trade id that happened per symbol, delivered or not."""
        return {symbol: set(m.executed_ids()) for symbol, m in self._markets.items()}

    @property
    def connections(self) -> int:
        """Number of open WS connections."""
        return len(self._clients)

    def subscriptions(self) -> list[list[str]]:
        """Each open connection's streams, as LIST_SUBSCRIPTIONS would answer."""
        return [list(client.streams) for client in self._clients]

    async def disconnect_all(self, *, abrupt: bool = False) -> None:
        """Drop every WS connection now: a close frame 1001 or, if abrupt, a bare TCP reset
        (what a network failure looks like). Trades keep happening meanwhile."""
        clients = list(self._clients)
        if abrupt:
            for client in clients:
                client.ws.transport.abort()
        else:
            reason = "simulated disconnect"
            await asyncio.gather(*(c.ws.close(CloseCode.GOING_AWAY, reason) for c in clients))

    def emit(self, n_per_symbol: int, symbols: Iterable[str] | None = None) -> None:
        """Make `n_per_symbol` trades happen now on each of `symbols` (default: all trading)."""
        self._execute(self._generate(n_per_symbol, symbols), _now_ms())

    def prepare(self, n_per_symbol: int, symbols: Iterable[str] | None = None) -> int:
        """Pre-render trades for flood(), interleaved across symbols; returns how many are
        prepared. Ids and timestamps are assigned when flood() executes them."""
        self._prepared.extend(self._generate(n_per_symbol, symbols))
        return len(self._prepared)

    async def flood(self) -> int:
        """Execute the prepared trades as fast as subscribers read them, honouring the
        duplicate and malformed ratios; returns how many trades were executed. Waits for each
        connection's outbox to drain between chunks, so flood() never trips the slow-consumer
        cut-off: the pace is the slowest subscriber's."""
        batch, self._prepared = self._prepared, []
        for start in range(0, len(batch), _FLOOD_CHUNK):
            self._execute(batch[start : start + _FLOOD_CHUNK], _now_ms())
            await asyncio.sleep(0)  # let writers run even when nobody is behind
            for client in list(self._clients):
                await client.drained.wait()
        return len(batch)

    # -- trades ---------------------------------------------------------------------------

    def _generate(self, n: int, symbols: Iterable[str] | None) -> list[Pending]:
        names = self.trading() if symbols is None else symbols
        per_market = [self._markets[s].generate(n, self._rng) for s in names]
        return [p for round_ in zip(*per_market, strict=True) for p in round_]

    def _execute(self, batch: Iterable[Pending], now_ms: int) -> None:
        cfg = self.config
        rng = self._rng
        for pending in batch:
            market = pending.market
            trade, raw = market.execute(pending, now_ms)
            subscribers = self._subscribers.get(market.symbol)
            if not subscribers:
                continue
            if cfg.malformed_ratio and rng.random() < cfg.malformed_ratio:
                raw = malform(rng.choice(MALFORMED_KINDS), raw, trade)
            copies = 2 if cfg.duplicate_ratio and rng.random() < cfg.duplicate_ratio else 1
            combined = market.combined_prefix + raw + b"}"
            for client in subscribers:
                frame = combined if client.combined else raw
                for _ in range(copies):
                    client.push(frame)

    async def _run_clock(self) -> None:
        loop = asyncio.get_running_loop()
        started = last = last_burst = last_drop = loop.time()
        while True:
            await asyncio.sleep(_TICK_S)
            now = loop.time()
            elapsed, last = now - last, now
            cfg = self.config
            self._apply_listing_changes(now - started)
            if not self._paused:
                for market in self._markets.values():
                    if self._listed.get(market.symbol) != rest.TRADING:
                        continue
                    market.due += cfg.rate_per_symbol * elapsed
                    n = int(market.due)
                    if n:
                        market.due -= n
                        self._execute(market.generate(n, self._rng), _now_ms())
                if cfg.burst_every_s and now - last_burst >= cfg.burst_every_s:
                    last_burst = now
                    self.emit(cfg.burst_size)
            if cfg.disconnect_every_s and now - last_drop >= cfg.disconnect_every_s:
                last_drop = now
                self._spawn(self.disconnect_all())

    def _apply_listing_changes(self, since_start_s: float) -> None:
        while self._listing_changes and self._listing_changes[0].at_s <= since_start_s:
            change = self._listing_changes.pop(0)
            if change.action == "list":
                self.add_listing(change.symbol)
            elif change.symbol in self._markets:
                self.delist(change.symbol)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections ----------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer REST paths here; let WS paths with valid streams through to the handshake."""
        path = urlsplit(request.path).path
        if path.startswith("/api/"):
            answer = (
                self.rest_weight.charge(request.path)
                or history.answer(request.path, self._tapes)
                or rest.answer(
                    request.path, self._markets, self._listed, rest_lag_s=self.config.rest_lag_s
                )
            )
            if answer is None:
                return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
            return _json_response(*answer, rest_weight=self.rest_weight)
        if path in ("/ws", "/stream") or path.startswith("/ws/"):
            try:
                _parse_ws_target(request.path)
            except ValueError as exc:
                return _json_response(400, {"code": 2, "msg": f"Invalid request: {exc}"})
            return None
        return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")

    async def _serve_connection(self, ws: ServerConnection) -> None:
        assert ws.request is not None  # set once the handshake is done
        streams, combined = _parse_ws_target(ws.request.path)
        client = Subscriber(ws, combined, self.config.max_pending_frames)
        self._clients.add(client)
        self._subscribe(client, streams)
        writer = asyncio.create_task(client.write())
        try:
            async for message in ws:
                if client.over_rate(time.monotonic()):
                    await ws.close(CloseCode.POLICY_VIOLATION, "Too many requests")
                    break
                client.push(self._reply(client, message))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            self._unsubscribe(client, list(client.streams))
            client.drained.set()  # a flood() waiting on this client must not hang
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _subscribe(self, client: Subscriber, streams: Iterable[str]) -> None:
        traded: list[str] = []
        for stream in streams:
            client.streams[stream] = None
            if stream.endswith(TRADE_SUFFIX):
                symbol = stream.removesuffix(TRADE_SUFFIX).upper()
                self._subscribers.setdefault(symbol, set()).add(client)
                if symbol in self._markets:
                    traded.append(symbol)
        if self.config.trade_on_subscribe and traded:
            self.emit(1, traded)

    def _unsubscribe(self, client: Subscriber, streams: Iterable[str]) -> None:
        for stream in streams:
            client.streams.pop(stream, None)
            if stream.endswith(TRADE_SUFFIX):
                symbol = stream.removesuffix(TRADE_SUFFIX).upper()
                self._subscribers.get(symbol, set()).discard(client)

    def _reply(self, client: Subscriber, message: str | bytes) -> bytes:
        """Answer one live request with Binance's reply or error frame."""
        try:
            request = orjson.loads(message)
        except orjson.JSONDecodeError:
            return _error(3, "Invalid JSON: expected value at line 1 column 1", None)
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(2, "Invalid request: missing field `method`", None)
        rid = request.get("id")
        if not _valid_id(rid):
            return _error(2, "Invalid request: request ID must be an unsigned integer", None)
        method, params = request["method"], request.get("params", [])
        if not isinstance(params, list):
            return _error(2, "Invalid request: too many parameters", rid)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not all(isinstance(s, str) and STREAM_RE.match(s) for s in params):
                return _error(2, "Invalid request: invalid stream", rid)
            if method == "SUBSCRIBE":
                self._subscribe(client, params)
            else:
                self._unsubscribe(client, params)
            return _result(None, rid)
        if method == "LIST_SUBSCRIPTIONS":
            return _result(list(client.streams), rid)
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            if not params or not isinstance(params[0], str):
                return _error(2, "Invalid request: property name must be a string", rid)
            if params[0] != "combined":
                return _error(0, "Unknown property", rid)
            if method == "GET_PROPERTY":
                return _result(client.combined, rid)
            if len(params) != 2 or not isinstance(params[1], bool):
                return _error(1, "Invalid value type: expected Boolean", rid)
            client.combined = params[1]
            return _result(None, rid)
        return _error(
            2, f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}", rid
        )


def _parse_ws_target(target: str) -> tuple[list[str], bool]:
    """Streams named by a WS request target, and whether frames use the combined wrapper."""
    url = urlsplit(target)
    path = unquote(url.path)
    if path == "/stream":
        joined = parse_qs(url.query).get("streams", [""])[0]
        names, combined = [s for s in joined.split("/") if s], True
    else:
        names, combined = [s for s in path.removeprefix("/ws").split("/") if s], False
    for name in names:
        if not STREAM_RE.match(name):
            raise ValueError(f"invalid stream {name!r}")
    return names, combined


def _valid_id(rid: object) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return isinstance(rid, str) and len(rid) <= 36 and rid.isascii() and rid.isalnum()


def _result(result: object, rid: object) -> bytes:
    return orjson.dumps({"result": result, "id": rid})


def _error(code: int, msg: str, rid: object) -> bytes:
    return orjson.dumps({"error": {"code": code, "msg": msg}, "id": rid})


def _json_response(status: int, body: object, rest_weight: WeightMeter | None = None) -> Response:
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),  # one request per connection: websockets cannot keep-alive
        ]
    )
    if rest_weight is not None:
        headers["X-MBX-USED-WEIGHT-1M"] = str(rest_weight.used())
        if status == 429:
            headers["Retry-After"] = str(rest_weight.retry_after_s())
    return Response(status, HTTPStatus(status).phrase, headers, data)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
