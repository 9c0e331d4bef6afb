"""Helpers for the API tests: the app started by its own lifespan, and fast test data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from pipeline.core.settings import Settings
from pipeline.storage.tables import crypto_prices

LOOPBACK = "127.0.0.1"
T = TypeVar("T")


@asynccontextmanager
async def serve(
    settings: Settings | None, *, client_host: str = LOOPBACK, **create_kwargs: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app (lifespan and all) and yield a client talking to it in-process."""
    app = create_app(settings, **create_kwargs)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=(client_host, 50_000))
        # A loopback Host, as a local client sends: mutations without API_KEY need one.
        base_url = f"http://{LOOPBACK}"
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


def trade_row(
    symbol: str,
    trade_id: int,
    trade_time: int,
    price: str = "100.00",
    quantity: str = "1.00",
) -> dict[str, Any]:
    return {
        "symbol": symbol,
        "trade_id": trade_id,
        "price": Decimal(price),
        "quantity": Decimal(quantity),
        "event_time": trade_time + 1,
        "trade_time": trade_time,
        "is_buyer_maker": trade_id % 2 == 0,
        "processed_at": trade_time + 5,
    }


async def insert_trades(engine: AsyncEngine, rows: Iterable[dict[str, Any]]) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(crypto_prices), list(rows))


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll `probe` until it returns something other than None (or fail after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(interval)
