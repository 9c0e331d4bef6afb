"""Pacing primitives for talking to the exchange without tripping its limits.

- `Pacer`: evenly spaced outgoing messages (Binance closes a connection sending > 5 messages/s).
- `AttemptWindow`: at most N connection attempts per sliding window (Binance: 300 per 5 min).
- `WeightBudget`: REST request weight per minute, a token bucket that callers reserve from.

All take a clock so their arithmetic can be tested without sleeping. Reconnect delays are not
exchange-specific: they follow the common retry policy, `pipeline.core.retry.Backoff`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

Clock = Callable[[], float]


class Pacer:
    """Spaces calls to `wait()` at least 1/rate seconds apart (slots are reserved, so concurrent
    callers queue up instead of bursting)."""

    def __init__(self, rate_per_s: float, clock: Clock = time.monotonic) -> None:
        self._interval = 1.0 / rate_per_s
        self._clock = clock
        self._next = float("-inf")

    def reserve(self) -> float:
        """Take the next slot; return how long to wait for it."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        return slot - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class AttemptWindow:
    """At most `limit` attempts in any `window_s` seconds, shared by every connection."""

    def __init__(self, limit: int, window_s: float, clock: Clock = time.monotonic) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._attempts: deque[float] = deque()

    def reserve(self) -> float:
        """Record an attempt at the earliest allowed time; return how long to wait for it."""
        now = self._clock()
        while self._attempts and self._attempts[0] <= now - self._window:
            self._attempts.popleft()
        at = now
        if len(self._attempts) >= self._limit:
            # The attempt `limit` places back must leave the window first.
            at = max(now, self._attempts[-self._limit] + self._window)
        self._attempts.append(at)
        return at - now

    async def acquire(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


class WeightBudget:
    """A token bucket of request weight refilled at `per_minute`/60 per second.

    Callers reserve weight up front (the balance may go negative) and sleep off the debt, so
    concurrent callers are served in order without a lock. `pause_until` blocks everyone, for
    the exchange's Retry-After or when its used-weight header says we are at the limit.
    """

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._clock = clock
        self._tokens = float(per_minute)
        self._updated = clock()
        self._paused_until = float("-inf")

    def reserve(self, weight: int) -> float:
        """Spend `weight`; return how long to wait before using it."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= weight
        debt = -self._tokens / self._rate if self._tokens < 0 else 0.0
        return max(debt, self._paused_until - now)

    def pause_until(self, deadline: float) -> None:
        """No request before `deadline` (a time of this budget's clock)."""
        self._paused_until = max(self._paused_until, deadline)

    async def spend(self, weight: int) -> None:
        delay = self.reserve(weight)
        if delay > 0:
            await asyncio.sleep(delay)
