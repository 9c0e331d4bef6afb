"""`Subscriber`: one WS connection's streams, outbox and request-rate accounting.

Trades are pushed into a bounded outbox by the exchange's fan-out (synchronous, never blocks) and
written to the socket by the subscriber's own `write()` task, in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from websockets import ConnectionClosed
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import State

# Binance allows 5 incoming messages/s; we close only at twice that so timer jitter never trips
# a well-behaved client. Ping/pong frames are not counted (websockets answers them internally).
MAX_MESSAGES_PER_SECOND = 10
_WRITE_BATCH = 512  # frames per socket write


class Subscriber:
    """One WS connection: its streams, its combined flag and an outbox drained by `write()`."""

    def __init__(self, ws: ServerConnection, combined: bool, max_pending: int) -> None:
        self.ws = ws
        self.combined = combined  # frames wrapped as {"stream":…,"data":…}
        self.streams: dict[str, None] = {}  # an ordered set, for LIST_SUBSCRIPTIONS
        self.drained = asyncio.Event()  # set whenever the outbox is empty
        self.drained.set()
        self._outbox: deque[bytes] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._overflowed = False
        self._closing: asyncio.Task[None] | None = None
        self._arrivals: deque[float] = deque(maxlen=MAX_MESSAGES_PER_SECOND)

    def push(self, frame: bytes) -> None:
        """Queue a frame. A subscriber more than `max_pending` frames behind is cut off with
        close code 1013 (try again later) and its backlog dropped, so memory stays bounded."""
        if self._overflowed:
            return
        if len(self._outbox) >= self._max_pending:
            self._overflowed = True
            self._outbox.clear()
            self.drained.set()
            # A task, not an await: push() runs inside the trade fan-out, which must not block.
            self._closing = asyncio.create_task(
                self.ws.close(CloseCode.TRY_AGAIN_LATER, "outbox overflow: client too slow")
            )
            return
        self._outbox.append(frame)
        self.drained.clear()
        self._wake.set()

    def over_rate(self, now: float) -> bool:
        """Record one incoming message at `now` (monotonic seconds); True when it is more than
        MAX_MESSAGES_PER_SECOND within the last second."""
        arrivals = self._arrivals
        full = len(arrivals) == arrivals.maxlen and now - arrivals[0] < 1.0
        arrivals.append(now)
        return full

    async def write(self) -> None:
        """Send queued frames until the connection closes."""
        ws, outbox = self.ws, self._outbox
        with contextlib.suppress(ConnectionClosed):
            while True:
                while outbox:
                    # One syscall per batch instead of one per frame (~60 % less CPU under
                    # flood): all but the last frame are framed here and written straight to
                    # the transport; the last goes through send(), which checks the connection
                    # is open and applies flow control to the whole batch.
                    batch = [outbox.popleft() for _ in range(min(len(outbox), _WRITE_BATCH))]
                    if len(batch) > 1 and ws.state is State.OPEN:
                        ws.transport.write(b"".join(map(_text_frame, batch[:-1])))
                    await ws.send(batch[-1], text=True)
                self.drained.set()
                self._wake.clear()
                await self._wake.wait()


def _text_frame(payload: bytes) -> bytes:
    """RFC 6455 text frame as a server sends it: FIN, unmasked, no extension (the server turns
    compression off), i.e. byte for byte what send(payload, text=True) writes."""
    n = len(payload)
    if n < 126:
        return b"\x81%c%b" % (n, payload)
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload
