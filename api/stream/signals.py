"""Hearing of the server's shutdown in time to end the open streams."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any


def on_exit_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` on the event loop when SIGTERM/SIGINT arrives, then pass the signal on to
    whatever handled it so far (uvicorn's exit); returns the undo.

    uvicorn waits for open responses before the lifespan ends, and an event stream never ends
    by itself: it must hear of the shutdown first. The callback is scheduled, not called: a
    signal handler runs between any two bytecodes of the loop's work."""
    loop = asyncio.get_running_loop()
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            loop.call_soon_threadsafe(callback)
        earlier = previous.get(signum)
        if callable(earlier):
            earlier(signum, frame)
        elif earlier == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: nothing to hook
            break

    def undo() -> None:
        for signum, earlier in previous.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(signum) is handler:
                    signal.signal(signum, earlier)

    return undo
