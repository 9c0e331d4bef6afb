"""Starting an aiokafka client so that cutting the start short leaves no connection open."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

# A broker that is up answers the bootstrap's metadata request within milliseconds.
BOOTSTRAP_GRACE_S = 1.0


async def start_within(start: Coroutine[Any, Any, object], timeout_s: float) -> None:
    """Await `start` (a client's start() or bootstrap()) within `timeout_s`.

    aiokafka leaks the bootstrap connection when it is cancelled while its first metadata
    request is in flight (aiokafka #715, `AIOKafkaClient.bootstrap`): the socket stays open
    until the event loop is gone, and garbage collection then warns. So `start` runs as a task
    of its own; when our timeout or a cancellation from above cuts it short, it gets
    BOOTSTRAP_GRACE_S to finish before it is cancelled, and the caller's error is raised.
    Either way the caller stops the client. A broker slower than the grace can still leave
    that one socket to the garbage collector.
    """
    starting = asyncio.ensure_future(start)
    try:
        await asyncio.wait_for(asyncio.shield(starting), timeout_s)
    except BaseException:
        if not starting.done():
            await asyncio.wait({starting}, timeout=BOOTSTRAP_GRACE_S)
        if not starting.done():
            starting.cancel()
            await asyncio.wait({starting})
        if not starting.cancelled():
            starting.exception()  # retrieved, so never logged: the caller's error is raised
        raise
