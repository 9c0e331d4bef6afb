"""REST request weight, counted per clock minute as Binance does (`X-MBX-USED-WEIGHT-1M`).

Weights are Binance's spot values for the endpoints the simulator serves. Over the limit
(`SimulatorConfig.rest_weight_limit`) a request is refused with 429, Binance's -1003 body and a
Retry-After up to the next minute, and is not counted. Tests read `by_minute` (the weight of
every minute so far), `refused` and `log` (the requests counted) to check what a client asked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

Answer = tuple[int, object]

WEIGHTS = {
    "/api/v3/ping": 1,
    "/api/v3/time": 1,
    "/api/v3/exchangeInfo": 20,
    "/api/v3/historicalTrades": 25,
    "/api/v3/trades": 25,
    "/api/v3/aggTrades": 4,
}
EXCHANGE_INFO_ONE_SYMBOL = 2


def request_weight(target: str) -> int:
    url = urlsplit(target)
    if url.path == "/api/v3/exchangeInfo" and "symbol" in dict(parse_qsl(url.query)):
        return EXCHANGE_INFO_ONE_SYMBOL
    return WEIGHTS.get(url.path, 1)


class WeightMeter:
    """The weight used per clock minute (epoch seconds // 60), and the requests refused."""

    def __init__(self, limit: int | None, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.by_minute: dict[int, int] = {}
        self.refused = 0
        self.log: list[str] = []  # every request target counted, in order
        self._clock = clock

    def used(self) -> int:
        """Weight used in the current minute."""
        return self.by_minute.get(int(self._clock() // 60), 0)

    def charge(self, target: str) -> Answer | None:
        """Count the request's weight; a 429 answer instead when it would exceed the limit."""
        weight = request_weight(target)
        minute = int(self._clock() // 60)
        used = self.by_minute.get(minute, 0)
        if self.limit is not None and used + weight > self.limit:
            self.refused += 1
            return 429, {
                "code": -1003,
                "msg": f"Too much request weight used; current limit is {self.limit} request "
                "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid "
                "polling the API.",
            }
        self.by_minute[minute] = used + weight
        self.log.append(target)
        return None

    def retry_after_s(self) -> int:
        """Whole seconds until the next minute starts."""
        now = self._clock()
        return max(1, math.ceil(60 - now % 60))

    def total(self) -> int:
        return sum(self.by_minute.values())
