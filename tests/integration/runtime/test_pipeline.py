"""The whole path on real services: simulator → source → producer → Kafka → consumer → PostgreSQL.

The simulator's clock is off (rate 0): trades happen only when a test emits them, so its tape
is the exact ground truth of what the table must hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import devtools.simulator.server as simulator_server
from devtools.simulator import BinanceSimulator, SimulatorConfig
from devtools.simulator.market import Trade
from pipeline.core.settings import Settings
from pipeline.exchange.client import ExchangeClient
from pipeline.kafka.admin import consumer_lag
from pipeline.runtime.pipeline import Pipeline
from pipeline.storage.tables import create_engine
from tests.services import dead_letters
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(symbols=[*SYMBOLS, "ADAUSDT"], rate_per_symbol=0.0, seed=11)
    async with BinanceSimulator(config, port=0) as sim:
        yield sim


@pytest.fixture
def pipeline_settings(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> Settings:
    return make_settings(
        BINANCE_WS_URL=simulator.ws_url,
        BINANCE_REST_URL=simulator.rest_url,
        SYMBOLS=",".join(SYMBOLS),
        BINANCE__RECONNECT_MIN_S="0.1",
    )


@contextlib.asynccontextmanager
async def running_pipeline(settings: Settings) -> AsyncIterator[Pipeline]:
    engine = create_engine(settings.database)
    exchange = ExchangeClient(settings.binance)
    pipeline = Pipeline(settings, engine, exchange)
    await pipeline.start()
    try:
        yield pipeline
    finally:
        await pipeline.stop()
        await exchange.close()
        await engine.dispose()


async def stored(settings: Settings) -> dict[str, set[int]]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch("SELECT symbol, trade_id FROM crypto_prices")
    finally:
        await connection.close()
    found: dict[str, set[int]] = {}
    for row in rows:
        found.setdefault(row["symbol"], set()).add(row["trade_id"])
    return found


def emitted(simulator: BinanceSimulator, symbols: list[str]) -> dict[str, set[int]]:
    tape = simulator.trades_emitted()
    return {symbol: tape[symbol] for symbol in symbols if tape[symbol]}


async def subscribed(simulator: BinanceSimulator, symbols: list[str]) -> None:
    async def all_streams_open() -> bool:
        streams = {stream for connection in simulator.subscriptions() for stream in connection}
        return streams == {f"{s.lower()}@trade" for s in symbols}

    await wait_until(all_streams_open, 10, "all_streams_open")


async def settled(settings: Settings, simulator: BinanceSimulator, symbols: list[str]) -> None:
    """Wait until the table holds every trade of the tape and the consumer has no lag."""
    expected = emitted(simulator, symbols)

    async def table_matches_tape() -> bool:
        table = await stored(settings)
        return {symbol: table.get(symbol, set()) for symbol in expected} == expected

    async def no_lag() -> bool:
        return (await consumer_lag(settings.kafka)).total_lag == 0

    await wait_until(table_matches_tape, 60, "table_matches_tape")
    await wait_until(no_lag, 30, "no_lag")


async def test_trades_from_the_exchange_are_stored_exactly_once_with_exact_prices(
    pipeline_settings: Settings, simulator: BinanceSimulator, engine: AsyncEngine
) -> None:
    simulator.config.duplicate_ratio = 0.05
    async with running_pipeline(pipeline_settings):
        await subscribed(simulator, SYMBOLS)
        for _ in range(10):
            simulator.emit(200, SYMBOLS)
            await asyncio.sleep(0.05)
        await settled(pipeline_settings, simulator, SYMBOLS)

    connection = await asyncpg.connect(pipeline_settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch(
            "SELECT trade_id, price, quantity FROM crypto_prices WHERE symbol = 'ETHUSDT' "
            "ORDER BY trade_id LIMIT 1000"
        )
        total = await connection.fetchval("SELECT count(*) FROM crypto_prices")
        distinct = await connection.fetchval(
            "SELECT count(DISTINCT (symbol, trade_id)) FROM crypto_prices"
        )
    finally:
        await connection.close()
    assert total == distinct == 3 * 2_000
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        response = await client.get(
            "/api/v3/historicalTrades",
            params={"symbol": "ETHUSDT", "fromId": rows[0]["trade_id"], "limit": 1000},
        )
    tape = {item["id"]: item for item in response.json()}
    for row in rows:
        assert str(row["price"]) == tape[row["trade_id"]]["price"]
        assert row["quantity"] == Decimal(tape[row["trade_id"]]["qty"])


async def test_disconnect_in_the_middle_is_backfilled_without_a_hole(
    pipeline_settings: Settings, simulator: BinanceSimulator
) -> None:
    async with running_pipeline(pipeline_settings) as pipeline:
        await subscribed(simulator, SYMBOLS)
        simulator.emit(300, SYMBOLS)
        await settled(pipeline_settings, simulator, SYMBOLS)
        await simulator.disconnect_all(abrupt=True)
        simulator.emit(300, SYMBOLS)  # happens while the source is reconnecting

        async def reconnected() -> bool:
            source = pipeline.status().source
            return source is not None and source.reconnects >= 1 and simulator.connections == 1

        await wait_until(reconnected, 10, "reconnected")
        await subscribed(simulator, SYMBOLS)
        simulator.emit(50, SYMBOLS)  # reveals the gap
        await settled(pipeline_settings, simulator, SYMBOLS)
        status = pipeline.status().source
    assert status is not None and status.reconnects >= 1
    for symbol in SYMBOLS:
        ids = (await stored(pipeline_settings))[symbol]
        assert ids == set(range(min(ids), max(ids) + 1))


async def test_symbols_added_and_removed_at_runtime_change_what_arrives_within_2s(
    pipeline_settings: Settings, simulator: BinanceSimulator
) -> None:
    async with running_pipeline(pipeline_settings) as pipeline:
        await subscribed(simulator, SYMBOLS)
        assert await pipeline.registry.add("ADAUSDT")
        started = asyncio.get_running_loop().time()
        await subscribed(simulator, [*SYMBOLS, "ADAUSDT"])
        assert asyncio.get_running_loop().time() - started <= 2.0
        simulator.emit(100, ["ADAUSDT"])
        await settled(pipeline_settings, simulator, [*SYMBOLS, "ADAUSDT"])

        assert await pipeline.registry.remove("ADAUSDT")
        await subscribed(simulator, SYMBOLS)
        simulator.emit(100, ["ADAUSDT"])
        simulator.emit(10, ["BTCUSDT"])
        await asyncio.sleep(1.0)
        await settled(pipeline_settings, simulator, SYMBOLS)
    ada = (await stored(pipeline_settings))["ADAUSDT"]
    assert len(ada) == 100


async def test_restart_backfills_trades_that_happened_while_the_service_was_down(
    pipeline_settings: Settings, simulator: BinanceSimulator
) -> None:
    async with running_pipeline(pipeline_settings):
        await subscribed(simulator, SYMBOLS)
        simulator.emit(200, SYMBOLS)
        await settled(pipeline_settings, simulator, SYMBOLS)
    simulator.emit(500, SYMBOLS)  # the service is down: nobody receives these
    async with running_pipeline(pipeline_settings) as pipeline:
        await subscribed(simulator, SYMBOLS)
        simulator.emit(5, SYMBOLS)
        await settled(pipeline_settings, simulator, SYMBOLS)
        source = pipeline.status().source
        assert source is not None and source.trades_backfilled >= 3 * 500


async def test_whole_market_mode_tracks_every_trading_symbol_the_exchange_lists(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = make_settings(
        BINANCE_WS_URL=simulator.ws_url, BINANCE_REST_URL=simulator.rest_url, SYMBOLS="ALL"
    )
    listed = [*SYMBOLS, "ADAUSDT"]
    async with running_pipeline(settings) as pipeline:
        await subscribed(simulator, listed)
        assert await pipeline.registry.symbols() == set(listed)
        simulator.emit(50, listed)
        await settled(settings, simulator, listed)


async def tape(simulator: BinanceSimulator, symbol: str) -> dict[int, tuple[str, str, int]]:
    """The exchange's own record of a symbol's trades (REST historicalTrades, under 1000), the
    decimals with their digits as written."""
    first = min(simulator.trades_emitted()[symbol])
    async with httpx.AsyncClient(base_url=simulator.rest_url) as client:
        response = await client.get(
            "/api/v3/historicalTrades", params={"symbol": symbol, "fromId": first, "limit": 1000}
        )
    return {
        item["id"]: (str(Decimal(item["price"])), str(Decimal(item["qty"])), item["time"])
        for item in response.json()
    }


async def table_rows(settings: Settings, symbol: str) -> dict[int, tuple[str, str, int]]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch(
            "SELECT trade_id, price, quantity, trade_time FROM crypto_prices WHERE symbol = $1",
            symbol,
        )
    finally:
        await connection.close()
    return {r["trade_id"]: (str(r["price"]), str(r["quantity"]), r["trade_time"]) for r in rows}


async def test_trades_out_of_bounds_go_to_the_dlq_and_every_valid_trade_is_stored(
    pipeline_settings: Settings, simulator: BinanceSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exchange sends a trade dated in the year 5000, another market's trade on BTCUSDT's
    stream and a price with 19 decimals: each frame is in the DLQ with its reason, nothing of
    them is in the table, and the table holds exactly the exchange's trades (those three
    included, recovered from REST with their real values)."""
    sent: dict[bytes, str] = {}  # the bad frames as the source receives them → their kind
    malform = simulator_server.malform

    def recording(kind: str, raw: bytes, trade: Trade) -> bytes:
        bad = malform(kind, raw, trade)
        sent[b'{"stream":"btcusdt@trade","data":' + bad + b"}"] = kind
        return bad

    monkeypatch.setattr(simulator_server, "malform", recording)
    reasons = {
        "future_time": "event_time: Input should be at most",
        "other_symbol": "symbol ETHUSDT does not match stream btcusdt@trade",
        "excess_decimals": "price: Decimal input should have no more than 18 digits after the "
        "point, not 19",
    }
    async with running_pipeline(pipeline_settings):
        await subscribed(simulator, SYMBOLS)
        simulator.emit(20, SYMBOLS)
        simulator.config.malformed_ratio = 1.0
        for kind in reasons:
            monkeypatch.setattr(simulator_server, "MALFORMED_KINDS", (kind,))
            simulator.emit(1, ["BTCUSDT"])
            simulator.config.malformed_ratio = 0.0
            simulator.emit(10, SYMBOLS)  # valid trades around each bad one
            simulator.config.malformed_ratio = 1.0
        simulator.config.malformed_ratio = 0.0
        simulator.emit(20, SYMBOLS)
        await settled(pipeline_settings, simulator, SYMBOLS)

    assert sorted(sent.values()) == sorted(reasons)
    for symbol in SYMBOLS:
        assert await table_rows(pipeline_settings, symbol) == await tape(simulator, symbol)
    got = {
        record.value: dict(record.headers) for record in await dead_letters(pipeline_settings, 3)
    }
    assert set(got) == set(sent)
    for frame, kind in sent.items():
        assert got[frame]["error"].decode().startswith(reasons[kind]), got[frame]["error"]
