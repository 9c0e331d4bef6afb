"""The one retry policy: jittered exponential delays between a minimum and a maximum.

Every loop that waits before trying again (reconnects, restarts, retries while a dependency is
down) takes its delays from a `Backoff`, so they all grow, cap and spread out the same way.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


class Backoff:
    """Delays min_s, then up to min_s·2ⁿ (capped at max_s), each drawn uniformly at random.

    The first delay is exactly min_s; the n-th is uniform in [min_s, min(max_s, min_s·2ⁿ⁻¹)],
    so retries stay prompt and clients that failed together do not retry in step. `reset()`
    after a success (or a healthy period) starts over from min_s.
    """

    def __init__(
        self, min_s: float, max_s: float, rng: Callable[[], float] = random.random
    ) -> None:
        self.min_s = min_s
        self.max_s = max(min_s, max_s)
        self._rng = rng
        self.attempt = 0

    def next_delay(self) -> float:
        # The exponent is bounded so that a long outage cannot overflow the float.
        cap = min(self.max_s, self.min_s * 2.0 ** min(self.attempt, 62))
        self.attempt += 1
        return self.min_s + self._rng() * (cap - self.min_s)

    def reset(self) -> None:
        self.attempt = 0

    async def pause(self) -> float:
        """Sleep the next delay and return it; a cancellation ends the sleep at once."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay
