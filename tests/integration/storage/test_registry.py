"""SymbolRegistry.resume_points: where a restarted source picks the stream up again."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.storage.registry import SymbolRegistry
from tests.api_harness import insert_trades, trade_row

pytestmark = pytest.mark.integration

T0 = 1_795_000_000_000


async def store(engine: AsyncEngine, symbol: str, ids: range | list[int]) -> None:
    await insert_trades(engine, [trade_row(symbol, i, T0 + i) for i in ids])


async def test_without_holes_a_source_resumes_after_the_newest_stored_trade(
    engine: AsyncEngine,
) -> None:
    await store(engine, "BTCUSDT", range(1, 501))
    points = await SymbolRegistry(engine).resume_points(["BTCUSDT", "ETHUSDT"], window=1_000)
    assert points == {"BTCUSDT": 500}  # nothing stored for ETHUSDT: nothing to resume from


async def test_a_hole_left_by_a_crash_mid_backfill_is_fetched_again(engine: AsyncEngine) -> None:
    # 101..199 were being backfilled when the process died; live trades 200.. were stored.
    await store(engine, "BTCUSDT", [*range(1, 101), *range(150, 160), *range(200, 301)])
    points = await SymbolRegistry(engine).resume_points(["BTCUSDT"], window=1_000)
    assert points == {"BTCUSDT": 100}


async def test_holes_older_than_the_backfill_window_are_left_alone(engine: AsyncEngine) -> None:
    await store(engine, "BTCUSDT", [*range(1, 11), *range(20, 1_001)])
    points = await SymbolRegistry(engine).resume_points(["BTCUSDT"], window=500)
    assert points == {"BTCUSDT": 1_000}
