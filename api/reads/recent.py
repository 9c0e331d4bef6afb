"""The latest answers kept briefly: reused while fresh, refreshed ahead, fetched once for all."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RecentAnswers(Generic[T]):
    """A symbol's answer reused for `ttl_s`, and fetched once for all the requests waiting on it.

    The hot read is one symbol asked a thousand times a second: each asking PostgreSQL costs the
    database and the event loop far more than the answer changes. Only found answers are kept
    (the symbols with trades, a bounded set), so requests for unknown symbols cannot grow it.

    Refreshed ahead: a request that finds its answer past half its life starts the next fetch
    in the background and still gets the kept answer, so while the symbol is asked for, no
    request waits for PostgreSQL (under full ingest a fetch takes milliseconds, and every
    request arriving meanwhile used to wait for it). An answer is still never older than
    `ttl_s`: past that, requests wait for the fetch, as the first one does.
    """

    def __init__(self, fetch: Callable[[str], Awaitable[T | None]], ttl_s: float) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        # symbol → (monotonic time of the fetch, the answer)
        self._answers: dict[str, tuple[float, T]] = {}
        self._fetching: dict[str, asyncio.Task[T | None]] = {}

    async def get(self, symbol: str) -> T | None:
        if self._ttl_s <= 0:
            return await self._fetch(symbol)
        kept = self._fresh(symbol)
        if kept is not None:
            return kept
        # Shielded: a client that goes away must not cancel the fetch the others wait for.
        return await asyncio.shield(self._refreshing(symbol))

    def _fresh(self, symbol: str) -> T | None:
        kept = self._answers.get(symbol)
        if kept is None:
            return None
        fetched_at, answer = kept
        age = time.monotonic() - fetched_at
        if age >= self._ttl_s:
            return None
        if age >= self._ttl_s / 2 and symbol not in self._fetching:
            self._refreshing(symbol).add_done_callback(_retrieve)
        return answer

    def _refreshing(self, symbol: str) -> asyncio.Task[T | None]:
        """The symbol's fetch in progress, started if there is none."""
        task = self._fetching.get(symbol)
        if task is None:
            task = asyncio.create_task(self._refresh(symbol))
            self._fetching[symbol] = task
        return task

    async def _refresh(self, symbol: str) -> T | None:
        started = time.monotonic()
        try:
            answer = await self._fetch(symbol)
        finally:
            del self._fetching[symbol]
        if answer is not None:
            self._answers[symbol] = (started, answer)
        else:
            self._answers.pop(symbol, None)
        return answer


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A refresh ahead that failed (database down): the kept answer expires, and the requests
    after it wait for a fetch of their own, which reports the error."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("refresh ahead failed: %s", task.exception())
