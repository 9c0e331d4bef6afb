"""Starting an aiokafka client so that cutting the start short leaves no connection open."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# A broker that is up answers the bootstrap's metadata request within milliseconds.
BOOTSTRAP_GRACE_S = 1.0


async def start_within(start: Coroutine[Any, Any, object], timeout_s: float) -> None:
    """Await `start` (a client's start() or bootstrap()); TimeoutError if it takes too long.

    aiokafka leaks the bootstrap connection when it is cancelled while its first metadata
    request is in flight (aiokafka #715, `AIOKafkaClient.bootstrap`): the socket stays open
    until the event loop is gone, and garbage collection then warns. So `start` runs as a task
    of its own, and when `timeout_s` or a cancellation from above cuts it short it gets
    BOOTSTRAP_GRACE_S to finish before it is cancelled. A start that finishes within the grace
    after the timeout counts as started (slow, not failed: a retry must not start the same
    client twice). On any error the caller stops the client. A broker slower than the grace
    can still leave that one socket to the garbage collector.
    """
    starting = asyncio.ensure_future(start)
    try:
        await asyncio.wait({starting}, timeout=timeout_s)
    except asyncio.CancelledError:
        await _settle(starting)
        if not starting.cancelled():
            starting.exception()  # retrieved, so never logged: the cancellation is what counts
        raise
    if not starting.done():
        await _settle(starting)
        if starting.cancelled():
            raise TimeoutError(f"not started within {timeout_s + BOOTSTRAP_GRACE_S:g} s")
    starting.result()  # the start's own error, if it failed


async def _settle(starting: asyncio.Future[object]) -> None:
    """Give a start that was cut short the grace to finish; cancel it if it has not by then."""
    await asyncio.wait({starting}, timeout=BOOTSTRAP_GRACE_S)
    if not starting.done():
        starting.cancel()
        await asyncio.wait({starting})
