"""Which symbols the pipeline streams, on real services: SYMBOLS applied at every start, and
whole-market mode following exchangeInfo through odd names, new listings and delistings.

The simulator's clock is off (rate 0): trades happen only when a test emits them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert

from devtools.simulator import ODD_LISTINGS, BinanceSimulator, SimulatorConfig
from pipeline.core.settings import Settings
from pipeline.exchange.client import ExchangeClient
from pipeline.runtime.pipeline import Pipeline
from pipeline.runtime.symbols import ListingsFollower
from pipeline.storage.registry import SymbolRegistry
from pipeline.storage.tables import create_engine, tracked_symbols
from tests.integration.runtime.test_pipeline import (
    running_pipeline,
    settled,
    stored,
    subscribed,
)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
LISTED = [*SYMBOLS, "ADAUSDT"]
POLL_S = 1.0


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(
        symbols=LISTED, odd_listings=list(ODD_LISTINGS), rate_per_symbol=0.0, seed=14
    )
    async with BinanceSimulator(config, port=0) as sim:
        yield sim


@pytest.fixture
def settings_with(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> Callable[[str], Settings]:
    def build(symbols: str) -> Settings:
        return make_settings(
            BINANCE_WS_URL=simulator.ws_url,
            BINANCE_REST_URL=simulator.rest_url,
            SYMBOLS=symbols,
            BINANCE__LISTINGS_POLL_S=str(POLL_S),
            BINANCE__RECONNECT_MIN_S="0.1",
        )

    return build


def skipped_total(origin: str) -> float:
    return REGISTRY.get_sample_value("pipeline_symbols_skipped_total", {"origin": origin}) or 0.0


async def sources(pipeline: Pipeline) -> dict[str, str]:
    return {row.symbol: row.source for row in await pipeline.registry.list()}


async def insert_rows(settings: Settings, rows: dict[str, str]) -> None:
    """Rows written before the pipeline starts (by the API, or by an older version, which
    seeded exchangeInfo's names unchecked)."""
    engine = create_engine(settings.database)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(tracked_symbols), [{"symbol": k, "source": v} for k, v in rows.items()]
            )
    finally:
        await engine.dispose()


def restarts(pipeline: Pipeline) -> dict[str, int]:
    return {task.name: task.restarts for task in pipeline.tasks()}


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


async def test_whole_market_streams_valid_listings_skips_odd_names_and_follows_listing_changes(
    settings_with: Callable[[str], Settings],
    simulator: BinanceSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with("ALL")
    await insert_rows(settings, {"BTC-USDT": "exchangeInfo"})
    before = skipped_total("exchange")
    caplog.set_level(logging.INFO)
    async with running_pipeline(settings) as pipeline:
        await subscribed(simulator, LISTED)
        simulator.emit(50, LISTED)
        await settled(settings, simulator, LISTED)
        await asyncio.sleep(3 * POLL_S)  # more polls, the same odd names
        assert skipped_total("exchange") - before == len(ODD_LISTINGS)
        assert len(messages(caplog, "symbol skipped: exchange")) == len(ODD_LISTINGS)
        assert await sources(pipeline) == dict.fromkeys(LISTED, "exchange")

        simulator.add_listing("PEPEUSDT")
        simulator.delist("ADAUSDT")
        now = [*SYMBOLS, "PEPEUSDT"]
        took = await wait_until(lambda: subscribed_to(simulator, now), 10, "listing followed")
        simulator.emit(50, now)
        simulator.emit(50, ["ADAUSDT"])  # delisted: nobody should be listening
        await settled(settings, simulator, now)
        assert await sources(pipeline) == dict.fromkeys(now, "exchange")
        assert set(restarts(pipeline).values()) == {0}, restarts(pipeline)
    # Registry poll (1 s) after the listings poll (POLL_S), then the SUBSCRIBE round trip.
    assert took <= POLL_S + 2.5
    table = await stored(settings)
    assert len(table["ADAUSDT"]) == 50 and len(table["PEPEUSDT"]) == 50
    released = messages(caplog, "listings changed")
    assert any("released=ADAUSDT(exchange)" in line for line in released), released


async def subscribed_to(simulator: BinanceSimulator, symbols: list[str]) -> bool:
    streams = {stream for connection in simulator.subscriptions() for stream in connection}
    return streams == {f"{s.lower()}@trade" for s in symbols}


async def test_a_bad_name_already_in_the_registry_cannot_stop_the_source(
    settings_with: Callable[[str], Settings],
    simulator: BinanceSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with(",".join(SYMBOLS))
    await insert_rows(settings, {"BTC-USDT": "api", "ÄBCUSDT": "settings"})  # by hand
    with caplog.at_level(logging.WARNING, logger="pipeline.core.symbol_names"):
        async with running_pipeline(settings) as pipeline:
            await subscribed(simulator, SYMBOLS)
            simulator.emit(50, SYMBOLS)
            await settled(settings, simulator, SYMBOLS)
            assert set(restarts(pipeline).values()) == {0}, restarts(pipeline)
            assert pipeline.registry.skipped == ("'BTC-USDT'", "'ÄBCUSDT'")
    assert len(messages(caplog, "symbol skipped: registry")) == 2


async def test_symbols_named_at_start_are_tracked_again_and_api_additions_stay(
    settings_with: Callable[[str], Settings],
    simulator: BinanceSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with(",".join(SYMBOLS))
    async with running_pipeline(settings) as pipeline:
        await subscribed(simulator, SYMBOLS)
        assert await pipeline.registry.remove("ETHUSDT")
        assert await pipeline.registry.remove("SOLUSDT")
        assert await pipeline.registry.add("ADAUSDT")
        await subscribed(simulator, ["BTCUSDT", "ADAUSDT"])

    caplog.set_level(logging.INFO, logger="pipeline.runtime.symbols")
    caplog.clear()  # the restart's log only
    async with running_pipeline(settings) as pipeline:
        await subscribed(simulator, LISTED)
        assert await sources(pipeline) == {**dict.fromkeys(SYMBOLS, "settings"), "ADAUSDT": "api"}
        simulator.emit(20, LISTED)
        await settled(settings, simulator, LISTED)
    (line,) = messages(caplog, "tracked symbols at start")
    assert "count=4 api=ADAUSDT settings=BTCUSDT,ETHUSDT,SOLUSDT" in line
    assert "added now: ETHUSDT,SOLUSDT" in line and "not in SYMBOLS: ADAUSDT" in line


async def test_explicit_symbols_after_whole_market_mode_release_what_only_it_had_added(
    settings_with: Callable[[str], Settings], simulator: BinanceSimulator
) -> None:
    whole_market = settings_with("ALL")
    await insert_rows(whole_market, {"ADAUSDT": "api"})
    async with running_pipeline(whole_market) as pipeline:
        await subscribed(simulator, LISTED)
        assert await sources(pipeline) == {**dict.fromkeys(SYMBOLS, "exchange"), "ADAUSDT": "api"}

    async with running_pipeline(settings_with("BTCUSDT")) as pipeline:
        await subscribed(simulator, ["BTCUSDT", "ADAUSDT"])
        assert await sources(pipeline) == {"BTCUSDT": "settings", "ADAUSDT": "api"}
        assert [task.name for task in pipeline.tasks()].count("listings") == 0


async def test_an_unusable_exchange_info_keeps_the_tracked_set_and_never_stops_the_poll(
    settings_with: Callable[[str], Settings],
    simulator: BinanceSimulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_with("ALL")
    engine = create_engine(settings.database)
    registry = SymbolRegistry(engine)
    try:
        await registry.track(LISTED, "exchange")
        for symbol in LISTED:  # only the odd names are left: a broken answer, not a closed market
            simulator.delist(symbol, status=None)
        async with ExchangeClient(settings.binance) as exchange:
            assert await ListingsFollower(exchange, registry, POLL_S).sync() == ([], [])
        down = settings.binance.model_copy(
            update={"rest_url": "http://127.0.0.1:9", "rest_max_attempts": 1}
        )
        with caplog.at_level(logging.WARNING, logger="pipeline.runtime.symbols"):
            async with ExchangeClient(down) as exchange:
                poll = asyncio.create_task(ListingsFollower(exchange, registry, 0.05).run())
                await asyncio.sleep(0.5)
                assert not poll.done()
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
        assert await registry.symbols() == set(LISTED)
    finally:
        await engine.dispose()
    assert len(messages(caplog, "exchangeInfo unusable, tracked set kept")) >= 2
