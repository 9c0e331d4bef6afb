"""Pacing primitives for talking to the exchange without tripping its limits.

- `Pacer`: evenly spaced outgoing messages (Binance closes a connection sending > 5 messages/s).
- `AttemptWindow`: at most N connection attempts per sliding window (Binance: 300 per 5 min).
- `WeightBudget`: REST request weight per minute, a token bucket that callers reserve from.
- `MinuteWindow`: REST weight per clock minute, as the exchange counts it.
- `RestBudget`: both, in two priorities: gap filling first, history jobs with what is left.

All take a clock so their arithmetic can be tested without sleeping. Reconnect delays are not
exchange-specific: they follow the common retry policy, `pipeline.core.retry.Backoff`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from pipeline.core import metrics

Clock = Callable[[], float]
# How often a background spender looks again while it waits for weight.
BACKGROUND_POLL_S = 0.25


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

    def wait_for(self, weight: int, keep: float = 0.0) -> float:
        """How long until `weight` can be taken leaving `keep` in the bucket (no debt, no
        pause); 0 when it can be taken now. Takes nothing: see `take()`."""
        now = self._clock()
        tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        short = weight + keep - tokens
        return max(short / self._rate if short > 0 else 0.0, self._paused_until - now)

    def take(self, weight: int) -> None:
        """Spend `weight` now (after `wait_for()` said 0, in the same step of the event loop)."""
        self.reserve(weight)


class MinuteWindow:
    """Weight per clock minute, as the exchange counts it (`X-MBX-USED-WEIGHT-1M`).

    The token bucket alone may spend up to twice its size in one clock minute (a full bucket
    and a minute of refill); this keeps every clock minute within `limit` as well. The
    exchange's own count (the header) is folded in, so weight spent by other processes of the
    same IP counts too.
    """

    def __init__(self, limit: int, clock: Clock = time.time) -> None:
        self._limit = limit
        self._clock = clock
        self._minute = -1
        self._used = 0

    def _current(self) -> float:
        now = self._clock()
        minute = int(now // 60)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        return now

    def wait_for(self, weight: int, limit: int | None = None) -> float:
        """0 when this minute has room for `weight` under `limit` (default: the whole limit),
        else the seconds until the next minute starts."""
        now = self._current()
        if self._used + weight <= (self._limit if limit is None else limit):
            return 0.0
        return 60.0 - now % 60 + 0.01

    def take(self, weight: int) -> None:
        self._current()
        self._used += weight

    def observe(self, used: int) -> None:
        """The exchange says this minute has used `used` weight so far."""
        self._current()
        self._used = max(self._used, used)


class RestBudget:
    """The REST weight every request of one client spends, in two priorities.

    Foreground requests (gap filling, symbol checks) take their weight as soon as the bucket
    and the minute allow. Background requests (history jobs) only take weight nobody waits
    for: while a foreground request is waiting they wait, and they leave `1 - background_share`
    of the bucket and of every minute untouched, so a gap found during a long history job is
    fetched at once. Live data first: a history job can always wait.
    """

    def __init__(
        self,
        per_minute: int,
        background_share: float = 1.0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.bucket = WeightBudget(per_minute, clock)
        self.minute = MinuteWindow(per_minute, wall_clock)
        self._background_limit = max(1, int(per_minute * background_share))
        self._keep = per_minute - self._background_limit
        self._foreground_waiting = 0
        self.spent = {"foreground": 0, "background": 0}

    def reserve(self, weight: int) -> float:
        """Take `weight` as a foreground request does; how long to wait before using it."""
        delay = max(self.bucket.reserve(weight), self.minute.wait_for(weight))
        self.minute.take(weight)
        return delay

    def pause_until(self, deadline: float) -> None:
        self.bucket.pause_until(deadline)

    def observe_used(self, used: int) -> None:
        self.minute.observe(used)

    async def spend(self, weight: int, *, background: bool = False) -> None:
        if background:
            await self._spend_background(weight)
            return
        self._foreground_waiting += 1
        try:
            await self.bucket.spend(weight)
            while True:
                delay = self.minute.wait_for(weight)
                if delay <= 0:
                    break
                await asyncio.sleep(delay)  # until the next clock minute
            self.minute.take(weight)
        finally:
            self._foreground_waiting -= 1
        self.spent["foreground"] += weight
        metrics.REST_WEIGHT.labels("foreground").inc(weight)

    async def _spend_background(self, weight: int) -> None:
        while True:
            delay = max(
                self.bucket.wait_for(weight, self._keep),
                self.minute.wait_for(weight, self._background_limit),
                BACKGROUND_POLL_S if self._foreground_waiting else 0.0,
            )
            if delay <= 0:
                self.bucket.take(weight)
                self.minute.take(weight)
                self.spent["background"] += weight
                metrics.REST_WEIGHT.labels("background").inc(weight)
                return
            # Look again soon: foreground requests may come and go meanwhile.
            await asyncio.sleep(min(delay, BACKGROUND_POLL_S))
