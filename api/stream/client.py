"""StreamClient: one connected stream — its subscription, its position, its bounded buffer.

The hub puts events in (never waiting: a client cannot slow the fan-out), the connection's
transport takes them out and writes them. When more than `client_buffer` events wait, the client
is closed as too slow: what waits is dropped (the client resumes from the last event it
received) and a final `close` event says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from api.stream.events import Chunk, FeedEvent, Framing
from api.stream.positions import NO_TRADE, Kind, SymbolPosition


class CloseReason(StrEnum):
    SLOW = "slow"
    FEED_RESET = "feed_reset"
    FEED_UNAVAILABLE = "feed_unavailable"
    RESUME_UNAVAILABLE = "resume_unavailable"
    RESUME_LIMIT = "resume_limit"
    SHUTDOWN = "shutdown"
    GONE = "gone"  # the client went away: nothing more to say to it


# What a client should do about each; the `detail` of the close event.
CLOSE_DETAILS: dict[CloseReason, str] = {
    CloseReason.SLOW: (
        "more than {buffer} events waited for this client; reconnect with the last event id to "
        "resume, or ask for ?conflate= to get at most one update per symbol per interval"
    ),
    CloseReason.FEED_RESET: (
        "the server lost its place in the feed; reconnect with the last event id to resume"
    ),
    CloseReason.FEED_UNAVAILABLE: "the feed (Kafka) cannot be read now; try again later",
    CloseReason.RESUME_UNAVAILABLE: (
        "the stored trades do not reach the feed's position yet (sink behind or database "
        "unavailable); reconnect with the last event id to try again"
    ),
    CloseReason.RESUME_LIMIT: (
        "sent {limit} stored trades on this connection; reconnect with the last event id to go on"
    ),
    CloseReason.SHUTDOWN: "the server is shutting down; reconnect with the last event id",
    CloseReason.GONE: "",
}

# WebSocket close codes (4000-4999: this application's own).
CLOSE_CODES: dict[CloseReason, int] = {
    CloseReason.SLOW: 4001,
    CloseReason.FEED_RESET: 4002,
    CloseReason.RESUME_LIMIT: 4003,
    CloseReason.FEED_UNAVAILABLE: 1013,  # try again later
    CloseReason.RESUME_UNAVAILABLE: 1013,
    CloseReason.SHUTDOWN: 1001,  # going away
    CloseReason.GONE: 1000,
}
# Reasons whose queued events are still sent before the close event.
_DRAINED = frozenset({CloseReason.RESUME_LIMIT, CloseReason.SHUTDOWN, CloseReason.FEED_RESET})


class StreamClient:
    def __init__(
        self,
        symbols: tuple[str, ...],
        framing: Framing,
        *,
        buffer: int,
        flush_s: float = 0.0,
        conflate_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.symbols = symbols
        self.framing = framing
        self.buffer = buffer
        self.flush_s = flush_s
        self.conflate_s = conflate_s
        self._index = {symbol: i for i, symbol in enumerate(symbols)}
        self.positions = [SymbolPosition() for _ in symbols]
        self._fragments = [f"{symbol}:{NO_TRADE}" for symbol in symbols]
        self._single = len(symbols) == 1
        # Events of the feed since the client registered, until it goes live (the seam): None
        # once live, or while the hub has stopped collecting them after an overflow.
        self.pending: list[FeedEvent] | None = []
        self.overflowed = False
        self.seam: dict[int, int] = {}
        self.live = False
        self._out: list[Chunk] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self.closed: CloseReason | None = None
        self._close_detail = ""
        self._close_sent = False
        self.last_write = time.monotonic()
        self.task: asyncio.Task[Any] | None = None  # the connection's, cancelled by abort()
        self.catch_up: asyncio.Task[None] | None = None
        self.aborted = False
        self.sampled = False  # in a conflation sampler
        self.on_close: Callable[[StreamClient, CloseReason], None] | None = None
        self._details = details or {}

    # -- positions ----------------------------------------------------------------------------

    def start_at(self, positions: dict[str, SymbolPosition]) -> None:
        for symbol, position in positions.items():
            index = self._index.get(symbol)
            if index is not None:
                self.positions[index] = position
                self._fragments[index] = position.encode(symbol)

    def event_id(self) -> str:
        return ",".join(self._fragments)

    # -- filling (the hub) ----------------------------------------------------------------------

    def offer(self, event: FeedEvent) -> Kind | None:
        """Queue a trade if the client lacks it; its kind, or None (a duplicate, or closed)."""
        if self.closed is not None:
            return None
        index = self._index[event.symbol]
        position = self.positions[index]
        kind = position.accept(event.trade_id)
        if kind is None:
            return None
        if len(self._out) >= self.buffer:
            self.close(CloseReason.SLOW)
            return None
        self._fragments[index] = position.encode(event.symbol) if position.holes else event.fragment
        ident = self._fragments[index] if self._single else ",".join(self._fragments)
        self._out.append(self.framing.event(kind, ident, event))
        self._wake.set()
        return kind

    def offer_latest(self, event: FeedEvent) -> bool:
        """A conflated client's update: queued if newer than what it has."""
        if self.closed is not None:
            return False
        index = self._index[event.symbol]
        position = self.positions[index]
        if not position.accept_latest(event.trade_id):
            return False
        if len(self._out) >= self.buffer:
            self.close(CloseReason.SLOW)
            return False
        self._fragments[index] = event.fragment
        ident = self._fragments[index] if self._single else ",".join(self._fragments)
        self._out.append(self.framing.event("trade", ident, event))
        self._wake.set()
        return True

    def collect(self, event: FeedEvent) -> bool:
        """Keep an event that arrived before the seam. On overflow stop keeping them and return
        True: the hub then moves the seam (what was dropped will be read from the table)."""
        pending = self.pending
        if pending is None:
            return False
        if len(pending) >= self.buffer:
            self.pending = None
            self.overflowed = True
            return True
        pending.append(event)
        return False

    def ready(self, resumed: bool) -> None:
        info = {
            "symbols": list(self.symbols),
            "resumed": resumed,
            "conflate_ms": None if self.conflate_s is None else round(self.conflate_s * 1000),
        }
        self.push(self.framing.ready(self.event_id(), info))

    def push(self, chunk: Chunk) -> None:
        if self.closed is None:
            self._out.append(chunk)
            self._wake.set()

    def queued(self) -> int:
        return len(self._out)

    async def room(self, timeout: float) -> bool:
        """Wait until at most half the buffer is in use; False if it did not happen in time."""
        deadline = time.monotonic() + timeout
        while len(self._out) > self.buffer // 2 and self.closed is None:
            self._room.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                async with asyncio.timeout(remaining):
                    await self._room.wait()
            except TimeoutError:
                return False
        return True

    def heartbeat(self, now: float, every_s: float) -> None:
        if (
            self.framing.heartbeat is not None
            and not self._out
            and now - self.last_write >= every_s
        ):
            self.push(self.framing.heartbeat)

    # -- closing ---------------------------------------------------------------------------------

    def close(self, reason: CloseReason, detail: str | None = None) -> bool:
        """End the stream with `reason` (the first reason wins); whether this call closed it."""
        if self.closed is not None:
            return False
        self.closed = reason
        self._close_detail = (
            detail if detail is not None else CLOSE_DETAILS[reason].format(**self._details)
        )
        if reason not in _DRAINED:
            self._out = []
        self._wake.set()
        self._room.set()
        if self.on_close is not None:
            self.on_close(self, reason)
        return True

    def abort(self) -> None:
        """Stop the connection's task: it is stuck writing to a client that does not read."""
        task = self.task
        if task is not None and not task.done():
            self.aborted = True
            task.cancel()

    # -- draining (the transport) -----------------------------------------------------------------

    async def next_chunks(self) -> list[Chunk] | None:
        """What to write next (all that waits, at most once per flush interval); the close
        event once closed and drained; None when there is nothing more to write."""
        while not self._out:
            if self.closed is not None:
                if self._close_sent or self.closed is CloseReason.GONE:
                    return None
                self._close_sent = True
                return [self.framing.close(self.closed.value, self._close_detail)]
            self._wake.clear()
            await self._wake.wait()
        if self.flush_s:
            wait = self.last_write + self.flush_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        chunks, self._out = self._out, []
        self.last_write = time.monotonic()
        self._room.set()
        return chunks

    @property
    def close_code(self) -> int:
        return CLOSE_CODES[self.closed or CloseReason.GONE]

    @property
    def close_detail(self) -> str:
        return self._close_detail
