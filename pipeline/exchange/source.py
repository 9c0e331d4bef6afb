"""BinanceSource: live trades of the tracked symbols, validated, in id order per symbol, complete.

Symbols are spread over combined-stream connections (`StreamConnection`), at most
`max_streams_per_connection` each; `set_symbols()` changes them live. Every frame goes through
`handle_frame()`: parse, validate into a TradeEvent (or dead-letter it), check the trade id
against the symbol's last one, publish. A jump in ids queues a backfill of the missing ones
(`Backfiller`, in the background — the receive loop never waits for REST).

The per-frame path is the hot one (tens of thousands of frames/s): no logging, no tasks, O(1)
bookkeeping; everything else (status, metrics labels) is prepared per symbol in advance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from pipeline.core import metrics
from pipeline.core.errors import InvalidTrade
from pipeline.core.ports import TradePublisher
from pipeline.core.settings import BinanceSettings
from pipeline.core.status import SourceStatus, SymbolStatus
from pipeline.core.trade_checks import normalize_symbol, trade_stream
from pipeline.core.trades import TradeEvent, trade_from_binance, trade_from_frame
from pipeline.exchange.backfill import Backfiller
from pipeline.exchange.client import ExchangeClient
from pipeline.exchange.connection import StreamConnection, stream_name, symbol_of
from pipeline.exchange.pacing import AttemptWindow

logger = logging.getLogger(__name__)

WS_SOURCE = "ws"
# A Binance trade frame is ~250 bytes (combined wrapper included); a much larger one is not a
# trade, whatever fields it also carries: dead-lettered (its trade id is then backfilled).
MAX_TRADE_FRAME_BYTES = 4096


class _SymbolState:
    __slots__ = ("last_id", "last_time", "valid", "valid_metric", "valid_reported")

    def __init__(self, symbol: str, last_id: int | None) -> None:
        self.last_id = last_id
        self.last_time: int | None = None
        # Valid trades, counted here per frame and added to valid_metric (the labelled child,
        # looked up once) by `report_valid()`: an inc() per frame would take a lock per frame.
        self.valid = 0
        self.valid_metric = metrics.TRADES_VALID.labels(symbol)
        self.valid_reported = 0

    def report_valid(self) -> None:
        valid = self.valid
        self.valid_metric.inc(valid - self.valid_reported)
        self.valid_reported = valid


def assign_streams(
    loads: Mapping[str, int], new: Sequence[str], capacity: int
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Place `new` streams: first into the connections (name → streams held) with room, in
    order, then into as few new connections of `capacity` as needed."""
    fills: dict[str, list[str]] = {}
    placed = 0
    for name, load in loads.items():
        room = min(capacity - load, len(new) - placed)
        if room > 0:
            fills[name] = list(new[placed : placed + room])
            placed += room
    groups = [list(new[i : i + capacity]) for i in range(placed, len(new), capacity)]
    return fills, groups


class BinanceSource:
    """Streams the trades of the tracked symbols into a TradePublisher; `run()` until cancelled."""

    def __init__(
        self,
        settings: BinanceSettings,
        publisher: TradePublisher,
        exchange: ExchangeClient,
        resume_from: Mapping[str, int] | None = None,
    ) -> None:
        self._settings = settings
        self._max_clock_skew_ms = settings.max_clock_skew_ms
        self._publisher = publisher
        self._backfiller = Backfiller(settings, exchange, publisher)
        # Last stored trade id per symbol, used once: the first live trade backfills from it.
        self._resume = {symbol.upper(): last for symbol, last in (resume_from or {}).items()}
        self._states: dict[str, _SymbolState] = {}
        self._placement: dict[str, str] = {}  # symbol → connection name
        self._connections: dict[str, StreamConnection] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._attempts = AttemptWindow(
            settings.max_connection_attempts, settings.connection_attempt_window_s
        )
        self._lock = asyncio.Lock()
        self._running = False
        self._connection_seq = 0
        self._closed_reconnects = 0
        self._received = 0
        self._valid = 0
        self._invalid = 0
        self._received_metric = metrics.TRADES_RECEIVED.labels(WS_SOURCE)
        self._received_reported = 0
        self._rejected_metric = metrics.TRADES_REJECTED.labels(WS_SOURCE)
        metrics.on_collect(self._report_counts)

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(self._states)

    async def run(self, symbols: Iterable[str]) -> None:
        """Stream `symbols` until cancelled; network errors only ever cause reconnects."""
        if self._running:
            raise RuntimeError("BinanceSource.run() is already running")
        self._running = True
        try:
            await self.set_symbols(symbols)
            await asyncio.Event().wait()
        finally:
            self._running = False
            await self._stop()

    async def set_symbols(self, symbols: Iterable[str]) -> None:
        """Track exactly `symbols` from now on; changes reach the exchange within ~1 s."""
        wanted = {normalize_symbol(symbol) for symbol in symbols}
        async with self._lock:
            removed = sorted(self._states.keys() - wanted)
            added = sorted(wanted - self._states.keys())
            for symbol in removed:
                self._states.pop(symbol).report_valid()
                await self._backfiller.cancel(symbol)
            for symbol in added:
                self._states[symbol] = _SymbolState(symbol, self._resume.pop(symbol, None))
            if self._running:
                await self._reconcile()
        if added or removed:
            logger.info(
                "symbols changed added=%s removed=%s tracked=%d",
                ",".join(added[:20]) + (",..." if len(added) > 20 else ""),
                ",".join(removed[:20]) + (",..." if len(removed) > 20 else ""),
                len(wanted),
            )

    def status(self) -> SourceStatus:
        backfill = self._backfiller.status()
        connections = tuple(c.status() for c in self._connections.values())
        return SourceStatus(
            running=self._running,
            connections=connections,
            symbols={
                symbol: SymbolStatus(state.last_id, state.last_time)
                for symbol, state in sorted(self._states.items())
            },
            received=self._received,
            valid=self._valid,
            invalid=self._invalid,
            reconnects=self._closed_reconnects + sum(c.reconnects for c in connections),
            gaps_found=backfill.gaps_found,
            trades_backfilled=backfill.trades_backfilled,
            trades_skipped=backfill.trades_skipped,
            exchange_gap_trades=backfill.exchange_gap_trades,
            exchange_gaps=backfill.exchange_gaps,
            backfill_in_progress=backfill.in_progress,
        )

    async def handle_frame(self, raw: bytes) -> dict[str, Any] | None:
        """Process one WebSocket frame; return it if it was a reply to a request of ours."""
        processed_at = time.time_ns() // 1_000_000
        latest = processed_at + self._max_clock_skew_ms  # no trade may be dated later
        # Nearly every frame is a valid combined-stream trade: one msgspec decode takes it.
        # Anything else — a reply, a raw-stream frame, an invalid one — goes the general way.
        event = (
            trade_from_frame(raw, processed_at, latest)
            if len(raw) <= MAX_TRADE_FRAME_BYTES
            else None
        )
        if event is None:
            return await self._handle_other_frame(raw, processed_at, latest)
        self._received += 1
        await self._take(event)
        return None

    async def _handle_other_frame(
        self, raw: bytes, processed_at: int, latest: int
    ) -> dict[str, Any] | None:
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._reject(raw, f"invalid JSON: {exc}")
            return None
        try:
            data = message["data"]  # the combined-stream wrapper
            stream = message.get("stream")
        except (KeyError, TypeError, IndexError):
            if type(message) is not dict:
                await self._reject(raw, "frame is not a JSON object")
                return None
            if "e" in message:
                # A raw stream (/ws/<stream>) sends the payload itself, with no stream name to
                # hold its symbol to (our connections are all combined).
                data, stream = message, None
            elif "id" in message:
                return message  # a reply: {"result": ..., "id": n} or {"error": ..., "id": n}
            else:
                await self._reject(raw, "frame has neither `data` nor an event type")
                return None
        self._received += 1
        if len(raw) > MAX_TRADE_FRAME_BYTES:
            reason = f"frame of {len(raw)} bytes, a trade frame has at most {MAX_TRADE_FRAME_BYTES}"
            await self._reject(raw, reason, counted=True)
            return None
        try:
            event = trade_from_binance(data, processed_at, latest)
        except InvalidTrade as exc:
            await self._reject(raw, str(exc), counted=True)
            return None
        if data is not message and stream != trade_stream(event.symbol):
            # Another market's trade under this stream's name, or a trade not its stream's:
            # taken, its id would enter the wrong symbol's sequence (gaps, backfills, the table).
            reason = f"symbol {event.symbol} does not match stream {stream}"
            await self._reject(raw, reason, counted=True)
            return None
        await self._take(event)
        return None

    async def _take(self, event: TradeEvent) -> None:
        """A valid trade: id bookkeeping (a jump schedules a backfill), then publish."""
        self._valid += 1
        advanced = False
        state = self._states.get(event.symbol)
        if state is None:
            # Still in flight after an UNSUBSCRIBE: a valid trade all the same, so publish it.
            metrics.TRADES_VALID.labels(event.symbol).inc()
        else:
            state.valid += 1
            trade_id = event.trade_id
            last = state.last_id
            if last is None or trade_id > last:
                if last is not None and trade_id > last + 1:
                    self._backfiller.schedule(
                        event.symbol, last + 1, trade_id - 1, event.trade_time
                    )
                state.last_id = trade_id
                state.last_time = event.trade_time
                advanced = True
            # trade_id <= last: a duplicate or replay; published (the sink dedupes), last stays.
        try:
            await self._publisher.publish(event)
        except asyncio.CancelledError:
            # A replay's (not advanced) id was taken by an earlier copy; only a new id matters.
            if advanced and state is not None:
                self._unpublished(event, state)
            raise

    def _unpublished(self, event: TradeEvent, state: _SymbolState) -> None:
        """The connection closed (watchdog, rotation, shutdown) while backpressure held `event`:
        it was never accepted, so it must be fetched again."""
        trade_id = event.trade_id
        if state.last_id == trade_id:
            # Still the newest: the next live trade's gap will include it.
            state.last_id = trade_id - 1
        elif (
            state.last_id is not None
            and state.last_id > trade_id
            and self._states.get(event.symbol) is state
        ):
            # Another reader (the new socket of a rotation) has already taken a later trade, and
            # its gap starts after this one: nothing else would ever ask for it.
            self._backfiller.schedule(event.symbol, trade_id, trade_id, event.trade_time)

    async def _reject(self, raw: bytes, reason: str, *, counted: bool = False) -> None:
        if not counted:
            self._received += 1
        self._invalid += 1
        self._rejected_metric.inc()
        if self._invalid == 1 or self._invalid % 1000 == 0:
            # Sampled: a malformed feed must not turn into a log flood.
            logger.warning("frame dead-lettered invalid_total=%d reason=%s", self._invalid, reason)
        await self._publisher.dead_letter(raw, reason, WS_SOURCE)

    def _report_counts(self) -> None:
        """Add the frames and valid trades counted since the last call to their counters (an
        on_collect hook: run before every exposition)."""
        received = self._received
        self._received_metric.inc(received - self._received_reported)
        self._received_reported = received
        for state in list(self._states.values()):
            state.report_valid()

    async def _reconcile(self) -> None:
        """Make the connections carry exactly the tracked symbols."""
        for symbol, name in list(self._placement.items()):
            if symbol not in self._states:
                del self._placement[symbol]
                self._connections[name].remove([stream_name(symbol)])
        # A connection with nothing left to carry is closed.
        await self._stop_connection(*[n for n, c in self._connections.items() if not c.streams])
        unplaced = [stream_name(s) for s in sorted(self._states) if s not in self._placement]
        loads = {name: len(c.streams) for name, c in self._connections.items()}
        fills, groups = assign_streams(loads, unplaced, self._settings.max_streams_per_connection)
        for name, streams in fills.items():
            self._connections[name].add(streams)
            self._place(streams, name)
        for streams in groups:
            self._place(streams, self._start_connection(streams))

    def _place(self, streams: Iterable[str], name: str) -> None:
        for stream in streams:
            self._placement[symbol_of(stream)] = name

    def _start_connection(self, streams: list[str]) -> str:
        self._connection_seq += 1
        name = f"ws-{self._connection_seq}"
        connection = StreamConnection(
            name, self._settings, self.handle_frame, self._attempts, streams
        )
        self._connections[name] = connection
        self._tasks[name] = asyncio.create_task(connection.run(), name=f"source-{name}")
        logger.info("connection added name=%s streams=%d", name, len(streams))
        return name

    async def _stop_connection(self, *names: str) -> None:
        tasks = []
        for name in names:
            self._closed_reconnects += self._connections.pop(name).reconnects
            tasks.append(self._tasks.pop(name))
            tasks[-1].cancel()
            logger.info("connection removed name=%s", name)
        # Concurrently: each may wait for its close handshake.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop(self) -> None:
        async with self._lock:
            await self._stop_connection(*self._connections)
            self._placement.clear()
        self._report_counts()
        await self._backfiller.close()
