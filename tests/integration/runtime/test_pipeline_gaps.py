"""Gaps on the whole path (simulator → source → producer → Kafka → consumer → PostgreSQL) in the
two places they used to be lost: an exchange whose REST view lags its stream while the WebSocket
drops, and a connection rotated while the producer's buffer is full.

The simulator's clock is off (rate 0): trades happen only when a test (or a subscription, with
`trade_on_subscribe`) makes them, so its tape is the exact ground truth of what the table holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import Settings
from pipeline.core.status import SourceStatus
from pipeline.exchange.client import ExchangeClient
from pipeline.exchange.source import BinanceSource
from pipeline.kafka.admin import consumer_lag
from pipeline.kafka.producer import EventProducer
from pipeline.runtime.pipeline import Pipeline
from tests.integration.runtime.test_pipeline import running_pipeline, settled, stored, subscribed
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
REST_LAG_S = 3.0
DROPS = 3


def source_of(pipeline: Pipeline) -> SourceStatus:
    source = pipeline.status().source
    assert source is not None
    return source


async def test_gaps_rest_has_not_caught_up_with_are_filled_once_it_has(
    make_settings: Callable[..., Settings],
) -> None:
    config = SimulatorConfig(symbols=SYMBOLS, rate_per_symbol=0.0, rest_lag_s=REST_LAG_S)
    async with BinanceSimulator(config, port=0) as simulator:
        settings = make_settings(
            BINANCE_WS_URL=simulator.ws_url,
            BINANCE_REST_URL=simulator.rest_url,
            SYMBOLS=",".join(SYMBOLS),
            BINANCE__RECONNECT_MIN_S="0.1",
        )
        async with running_pipeline(settings) as pipeline:
            await subscribed(simulator, SYMBOLS)
            for drop in range(1, DROPS + 1):
                simulator.emit(100, SYMBOLS)
                await asyncio.sleep(0.2)
                await simulator.disconnect_all(abrupt=True)
                simulator.emit(100, SYMBOLS)  # while the source reconnects: a gap of 100

                async def reconnected(drops: int = drop) -> bool:
                    source = source_of(pipeline)
                    return source.reconnects >= drops and all(
                        c.state == "connected" for c in source.connections
                    )

                await wait_until(reconnected, 10, "reconnected")
                await subscribed(simulator, SYMBOLS)
                # Reveals the gap at once: its trades are younger than REST's lag, so the first
                # pages come back empty.
                simulator.emit(10, SYMBOLS)

            async def backfilled() -> bool:
                source = source_of(pipeline)
                return source.gaps_found >= DROPS * len(SYMBOLS) and not source.backfill_in_progress

            await wait_until(backfilled, 30, "backfilled")
            source = source_of(pipeline)
            assert (source.exchange_gap_trades, source.exchange_gaps) == (0, ())
            await settled(settings, simulator, SYMBOLS)
            assert source_of(pipeline).trades_backfilled >= DROPS * len(SYMBOLS) * 100
        table = await stored(settings)
        assert {(s, i) for s in SYMBOLS for i in table[s]} == {
            (s, i) for s, ids in simulator.trades_emitted().items() for i in ids
        }


async def test_rotations_while_the_producer_buffer_is_full_lose_no_trade(
    make_settings: Callable[..., Settings],
) -> None:
    # Each rotation's new socket has a trade waiting the moment it opens (a busy market): its
    # reader takes it while the old socket's reader still holds the one before, blocked on the
    # full buffer, until the rotation cancels it.
    config = SimulatorConfig(symbols=["BTCUSDT"], rate_per_symbol=0.0, trade_on_subscribe=True)
    async with BinanceSimulator(config, port=0) as simulator:
        settings = make_settings(
            BINANCE_WS_URL=simulator.ws_url,
            BINANCE_REST_URL=simulator.rest_url,
            SYMBOLS="BTCUSDT",
            PIPELINE_ROLES="consumer",  # the producer side is wired below
            KAFKA__QUEUE_SIZE="1",
            BINANCE__CONNECTION_MAX_AGE_S="0.5",
        )
        consumer = Pipeline(settings)
        await consumer.start()
        producer = EventProducer(settings.kafka)
        exchange = ExchangeClient(settings.binance)
        source = BinanceSource(settings.binance, producer, exchange)
        tasks = [asyncio.create_task(source.run(["BTCUSDT"]))]
        try:
            # Kafka is out of reach (the producer's sender is not running yet): the first trade
            # fills the buffer and every later one waits in publish().
            async def rotated_three_times() -> bool:
                return len(simulator.trades_emitted()["BTCUSDT"]) >= 4

            await wait_until(rotated_three_times, 15, "rotated_three_times")
            tasks.append(asyncio.create_task(producer.run()))  # Kafka is back
            simulator.emit(5, ["BTCUSDT"])
            tape = simulator.trades_emitted()["BTCUSDT"]

            async def drained() -> bool:
                return (
                    max(tape) in (await stored(settings)).get("BTCUSDT", set())
                    and not source.status().backfill_in_progress
                    and (await consumer_lag(settings.kafka)).total_lag == 0
                )

            await wait_until(drained, 30, "drained")
            assert (await stored(settings))["BTCUSDT"] == tape
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await consumer.stop()
            await exchange.close()
