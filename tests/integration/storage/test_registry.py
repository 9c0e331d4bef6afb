"""SymbolRegistry: the tracked symbols and where each came from, the names a source may be
given, and where a restarted source picks the stream up again."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.storage.registry import SymbolRegistry
from pipeline.storage.tables import tracked_symbols
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


async def sources(registry: SymbolRegistry) -> dict[str, str]:
    return {row.symbol: row.source for row in await registry.list()}


async def insert_rows(engine: AsyncEngine, rows: dict[str, str]) -> None:
    """Rows as anyone could have written them (an older version, a hand-made INSERT)."""
    async with engine.begin() as connection:
        await connection.execute(
            insert(tracked_symbols), [{"symbol": k, "source": v} for k, v in rows.items()]
        )


def skipped_total(origin: str) -> float:
    return REGISTRY.get_sample_value("pipeline_symbols_skipped_total", {"origin": origin}) or 0.0


async def test_track_adds_only_missing_symbols_and_keeps_who_added_them_first(
    engine: AsyncEngine,
) -> None:
    registry = SymbolRegistry(engine)
    assert await registry.add("ADAUSDT")  # source api
    added = await registry.track(["SOLUSDT", "ADAUSDT", "BTCUSDT", "SOLUSDT"], "exchange")
    assert added == ["SOLUSDT", "BTCUSDT"]
    assert await sources(registry) == {
        "ADAUSDT": "api",
        "BTCUSDT": "exchange",
        "SOLUSDT": "exchange",
    }
    with pytest.raises(ValueError, match="not a symbol"):
        await registry.track(["BTC-USDT"], "exchange")


async def test_release_drops_the_named_symbols_and_says_which_were_tracked(
    engine: AsyncEngine,
) -> None:
    registry = SymbolRegistry(engine)
    await registry.track([f"S{i:04d}USDT" for i in range(2_500)], "exchange")  # > one chunk
    released = await registry.release(["NOPEUSDT", *(f"S{i:04d}USDT" for i in range(1, 2_500))])
    assert len(released) == 2_499 and "NOPEUSDT" not in released
    assert await registry.symbols() == {"S0000USDT"}


async def test_apply_settings_tracks_every_named_symbol_and_keeps_api_additions(
    engine: AsyncEngine,
) -> None:
    registry = SymbolRegistry(engine)
    await registry.track(["BTCUSDT"], "settings")
    await registry.add("ADAUSDT")
    await registry.track(["ETHUSDT", "XRPUSDT"], "exchange")  # whole-market mode ran before
    await insert_rows(engine, {"DOGEUSDT": "exchangeInfo"})  # ... an older version's name for it

    applied = await registry.apply_settings(["BTCUSDT", "ETHUSDT", "SOLUSDT"])

    assert applied.added == ["SOLUSDT"]
    assert applied.released == ["DOGEUSDT", "XRPUSDT"]  # only whole-market mode wanted them
    assert await sources(registry) == {
        "ADAUSDT": "api",
        "BTCUSDT": "settings",
        "ETHUSDT": "settings",  # named by SYMBOLS now: no longer the exchange's to release
        "SOLUSDT": "settings",
    }
    again = await registry.apply_settings(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    assert (again.added, again.released) == ([], [])


async def test_invalid_names_in_the_table_are_skipped_and_reported_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    bad = {"BTC-USDT": "exchangeInfo", "btcusdt": "api", "BAD\nNAME": "exchangeInfo", "": "api"}
    await insert_rows(engine, {"ETHUSDT": "settings", **bad})
    registry = SymbolRegistry(engine)
    before = skipped_total("registry")
    with caplog.at_level(logging.WARNING, logger="pipeline.core.symbol_names"):
        first = await registry.symbols()
        second = await registry.symbols()
        rows = await registry.tracked()
        follow = registry.follow()
        followed = await anext(follow)
        await follow.aclose()

    assert first == second == followed == {"ETHUSDT"}
    assert [row.symbol for row in rows] == ["ETHUSDT"]
    assert len(await registry.list()) == 5, "skipped, not deleted: the table is reported as is"
    reported = [r.getMessage() for r in caplog.records if "symbol skipped" in r.getMessage()]
    assert len(reported) == len(bad) == skipped_total("registry") - before
    assert len(registry.skipped) == len(bad)
    assert all("\n" not in line for line in reported), "a name cannot forge a log line"
    assert await registry.remove("BTC-USDT"), "a bad row can still be deleted"
