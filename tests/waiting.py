"""Polling for a condition in tests, with a deadline and a message naming what never happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> float:
    """Poll `condition` until true; the seconds it took. AssertionError naming `what` otherwise."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not reached within {timeout:.0f} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started
