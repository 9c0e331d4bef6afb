"""Per-symbol progress under backpressure: a trade whose publish is cancelled (its connection
closed while the publisher was full) is fetched again, whichever reader moved on meanwhile."""

from __future__ import annotations

import asyncio
from typing import cast

from pipeline.core.settings import BinanceSettings
from pipeline.core.trades import TradeEvent
from pipeline.exchange.client import ExchangeClient
from pipeline.exchange.source import BinanceSource
from tests.factories import CollectingPublisher
from tests.unit.exchange.test_source_frames import FakeExchange, frame, settle


class GatedPublisher(CollectingPublisher):
    """Accepts a trade only while the gate is open: a closed gate is a full producer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish(self, event: TradeEvent) -> None:
        await self.gate.wait()
        await super().publish(event)


def make_source() -> tuple[BinanceSource, GatedPublisher, FakeExchange]:
    publisher, exchange = GatedPublisher(), FakeExchange()
    source = BinanceSource(BinanceSettings(), publisher, cast(ExchangeClient, exchange))
    return source, publisher, exchange


async def held(source: BinanceSource, trade_id: int) -> asyncio.Task[object]:
    """A reader that took `trade_id` and now waits for room in the publisher."""
    reader = asyncio.create_task(source.handle_frame(frame("BTCUSDT", trade_id)))
    await asyncio.sleep(0.01)
    assert not reader.done()
    return reader


async def closed(reader: asyncio.Task[object]) -> None:
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)


async def test_trade_held_by_a_closed_connection_is_in_the_next_trades_gap() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 100))
    publisher.gate.clear()
    await closed(await held(source, 101))
    assert source.status().symbols["BTCUSDT"].last_trade_id == 100
    publisher.gate.set()
    await source.handle_frame(frame("BTCUSDT", 103))
    await settle(source)
    assert exchange.calls == [("BTCUSDT", 101, 2)]
    assert publisher.unique_ids("BTCUSDT") == set(range(100, 104))


async def test_rotation_under_backpressure_backfills_the_old_readers_trade() -> None:
    # The old socket's reader holds 101; the new socket's reader takes 105 (its gap starts at
    # 102) before the old reader is cancelled.
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 100))
    publisher.gate.clear()
    old_reader = await held(source, 101)
    new_reader = await held(source, 105)
    await closed(old_reader)
    publisher.gate.set()
    await new_reader
    await settle(source)
    assert sorted(exchange.calls) == [("BTCUSDT", 101, 1), ("BTCUSDT", 102, 3)]
    assert publisher.unique_ids("BTCUSDT") == set(range(100, 106))
    assert source.status().symbols["BTCUSDT"].last_trade_id == 105


async def test_cancelled_replay_of_a_taken_id_asks_rest_for_nothing() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    for trade_id in (100, 101):
        await source.handle_frame(frame("BTCUSDT", trade_id))
    publisher.gate.clear()
    await closed(await held(source, 100))
    publisher.gate.set()
    await settle(source)
    assert exchange.calls == []
    assert source.status().symbols["BTCUSDT"].last_trade_id == 101


async def test_held_trade_of_a_symbol_removed_meanwhile_is_not_backfilled() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 100))
    publisher.gate.clear()
    old_reader = await held(source, 101)
    new_reader = await held(source, 102)
    await source.set_symbols([])
    await closed(old_reader)
    publisher.gate.set()
    await new_reader
    await settle(source)
    assert exchange.calls == []
