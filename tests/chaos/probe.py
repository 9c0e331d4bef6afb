"""ApiProber: reads every GET endpoint in a loop while a fault is on, and keeps every answer.

While a dependency is down the contract allows 503 (with `{"detail": ...}`), never 500: the API
tells a client "retry later", not "bug".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import httpx

from tests.chaos.service import ServiceProcess

PATHS = (
    "/health",
    "/ready",
    "/symbols",
    "/prices",
    "/prices/BTCUSDT",
    "/prices/BTCUSDT/history?limit=10",
    "/prices/BTCUSDT/candles?interval=1m",
    "/consumer/lag",
    "/pipeline/status",
    "/metrics",
)
# Cheap reads that go to PostgreSQL: probed fast while it restarts.
DATABASE_PATHS = ("/symbols", "/prices/BTCUSDT")
ALLOWED = frozenset({200, 404, 503})


class ApiProber:
    def __init__(
        self, service: ServiceProcess, paths: tuple[str, ...] = PATHS, interval: float = 0.25
    ) -> None:
        self.service = service
        self.paths = paths
        self.interval = interval
        self.answers: Counter[tuple[str, int]] = Counter()
        self.unexpected: list[tuple[str, int, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ApiProber:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            for path in self.paths:
                try:
                    response = await self.service.get(path, timeout=10)
                except httpx.HTTPError as exc:
                    self.answers[(path, 0)] += 1
                    self.unexpected.append((path, 0, f"{type(exc).__name__}: {exc}"))
                    continue
                self.answers[(path, response.status_code)] += 1
                if response.status_code not in ALLOWED:
                    self.unexpected.append((path, response.status_code, response.text[:300]))
                elif response.status_code == 503 and "detail" not in response.json():
                    self.unexpected.append((path, 503, response.text[:300]))
                await asyncio.sleep(self.interval)

    @property
    def requests(self) -> int:
        return sum(self.answers.values())

    def assert_no_server_error(self) -> None:
        assert self.requests > 0, "the prober made no request"
        assert not self.unexpected, (
            f"{len(self.unexpected)} answers outside {sorted(ALLOWED)}: {self.unexpected[:3]}"
        )
