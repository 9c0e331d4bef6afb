"""BinanceSource against the Binance-compatible simulator (WS + REST): no Kafka needed, a
collecting publisher stands in for the producer. The simulator's `trades_emitted()` is the
ground truth the collected trade ids are compared with, exactly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import BinanceSettings
from pipeline.exchange.client import ExchangeClient
from pipeline.exchange.source import BinanceSource
from tests.factories import CollectingPublisher

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT"]


class CountingExchange(ExchangeClient):
    """The real client, counting historicalTrades requests."""

    calls = 0

    async def historical_trades(
        self, symbol: str, from_id: int | None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        self.calls += 1
        return await super().historical_trades(symbol, from_id, limit)


@dataclass
class Running:
    source: BinanceSource
    publisher: CollectingPublisher
    exchange: CountingExchange


@pytest.fixture
async def sim() -> AsyncIterator[BinanceSimulator]:
    async with BinanceSimulator(
        SimulatorConfig(symbols=list(SYMBOLS), rate_per_symbol=50.0), port=0
    ) as simulator:
        yield simulator


def settings_for(simulator: BinanceSimulator, **overrides: Any) -> BinanceSettings:
    values: dict[str, Any] = {
        "ws_url": simulator.ws_url,
        "rest_url": simulator.rest_url,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        "rest_weight_per_minute": 600_000,
    }
    return BinanceSettings(**(values | overrides))


@asynccontextmanager
async def running(
    settings: BinanceSettings,
    symbols: Iterable[str],
    resume_from: Mapping[str, int] | None = None,
) -> AsyncIterator[Running]:
    publisher = CollectingPublisher()
    async with CountingExchange(settings) as exchange:
        source = BinanceSource(settings, publisher, exchange, resume_from=resume_from)
        task = asyncio.create_task(source.run(symbols))
        try:
            yield Running(source, publisher, exchange)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll `condition`; return the seconds it took or fail after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def connected(source: BinanceSource, count: int = 1) -> bool:
    states = [c.state for c in source.status().connections]
    return len(states) == count and all(state == "connected" for state in states)


def streaming(source: BinanceSource, simulator: BinanceSimulator) -> bool:
    """Every connection is up on both ends (the exchange sends to it)."""
    count = len(source.status().connections)
    return connected(source, count) and simulator.connections == count


def backfill_idle(source: BinanceSource) -> bool:
    return not source.status().backfill_in_progress


async def finish_and_settle(simulator: BinanceSimulator, run: Running, symbols: list[str]) -> None:
    """Stop the clock, then one last trade per symbol reveals any gap still open; wait until
    it and every backfill arrived."""
    simulator.pause()
    await wait_until(lambda: streaming(run.source, simulator))
    simulator.emit(1, symbols)
    emitted = simulator.trades_emitted()
    await wait_until(
        lambda: (
            all(max(emitted[s]) in run.publisher.unique_ids(s) for s in symbols)
            and backfill_idle(run.source)
        )
    )


def expected_since(simulator: BinanceSimulator, symbol: str, first_id: int) -> set[int]:
    return {i for i in simulator.trades_emitted()[symbol] if i >= first_id}


async def test_trades_of_all_subscribed_symbols_arrive(sim: BinanceSimulator) -> None:
    symbols = SYMBOLS[:3]
    async with running(settings_for(sim), symbols) as run:
        await wait_until(lambda: all(len(run.publisher.unique_ids(s)) >= 10 for s in symbols))
        await finish_and_settle(sim, run, symbols)
        for symbol in symbols:
            ids = run.publisher.unique_ids(symbol)
            assert ids == expected_since(sim, symbol, min(ids))
        assert {e.symbol for e in run.publisher.events} == set(symbols)
        status = run.source.status()
        assert status.gaps_found == 0 and status.invalid == 0
        assert status.symbols["BTCUSDT"].last_trade_id == max(sim.trades_emitted()["BTCUSDT"])
        assert sim.subscriptions() == [[f"{s.lower()}@trade" for s in sorted(symbols)]]


async def test_subscribe_at_runtime_delivers_new_symbol_within_2s(sim: BinanceSimulator) -> None:
    async with running(settings_for(sim), ["BTCUSDT"]) as run:
        await wait_until(lambda: connected(run.source))
        await run.source.set_symbols(["BTCUSDT", "ETHUSDT"])
        took = await wait_until(lambda: bool(run.publisher.unique_ids("ETHUSDT")), timeout=2.0)
        assert took < 2.0
        assert sim.connections == 1  # subscribed on the open connection


async def test_unsubscribe_stops_symbol(sim: BinanceSimulator) -> None:
    async with running(settings_for(sim), ["BTCUSDT", "ETHUSDT"]) as run:
        await wait_until(lambda: bool(run.publisher.unique_ids("ETHUSDT")))
        await run.source.set_symbols(["BTCUSDT"])
        await wait_until(lambda: sim.subscriptions() == [["btcusdt@trade"]], timeout=2.0)
        await asyncio.sleep(0.1)  # frames already in flight
        eth_before, btc_before = (
            len(run.publisher.unique_ids("ETHUSDT")),
            len(run.publisher.unique_ids("BTCUSDT")),
        )
        await asyncio.sleep(0.3)
        assert len(run.publisher.unique_ids("ETHUSDT")) == eth_before
        assert len(run.publisher.unique_ids("BTCUSDT")) > btc_before
        assert run.source.symbols == frozenset({"BTCUSDT"})


async def test_removing_every_symbol_closes_the_connection(sim: BinanceSimulator) -> None:
    async with running(settings_for(sim), ["BTCUSDT"]) as run:
        await wait_until(lambda: connected(run.source))
        await run.source.set_symbols([])
        await wait_until(lambda: sim.connections == 0)
        assert run.source.status().connections == ()
        await run.source.set_symbols(["ETHUSDT"])
        await wait_until(lambda: bool(run.publisher.unique_ids("ETHUSDT")), timeout=2.0)


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-frame", "tcp-reset"])
async def test_disconnect_gap_is_backfilled_from_rest_without_holes(
    sim: BinanceSimulator, abrupt: bool
) -> None:
    symbols = SYMBOLS[:2]
    async with running(settings_for(sim, reconnect_min_s=0.3), symbols) as run:
        await wait_until(lambda: all(run.publisher.unique_ids(s) for s in symbols))
        first = {s: min(run.publisher.unique_ids(s)) for s in symbols}
        await sim.disconnect_all(abrupt=abrupt)  # ~15 trades per symbol happen while away
        await wait_until(lambda: run.source.status().gaps_found >= len(symbols))
        await finish_and_settle(sim, run, symbols)
        for symbol in symbols:
            assert run.publisher.unique_ids(symbol) == expected_since(sim, symbol, first[symbol])
        status = run.source.status()
        assert status.reconnects >= 1
        assert status.trades_backfilled > 0
        assert status.exchange_gap_trades == 0


async def test_malformed_frames_go_to_dead_letter_with_reason(sim: BinanceSimulator) -> None:
    symbols = SYMBOLS[:2]
    async with running(settings_for(sim), symbols) as run:
        await wait_until(lambda: all(run.publisher.unique_ids(s) for s in symbols))
        first = {s: min(run.publisher.unique_ids(s)) for s in symbols}
        sim.config.malformed_ratio = 0.3
        await wait_until(lambda: len(run.publisher.dead) >= 10)
        sim.config.malformed_ratio = 0.0
        await finish_and_settle(sim, run, symbols)
        assert all(reason and origin == "ws" for _, reason, origin in run.publisher.dead)
        assert run.source.status().invalid == len(run.publisher.dead)
        # The trades behind the bad frames are still on the exchange: backfill recovers them.
        for symbol in symbols:
            assert run.publisher.unique_ids(symbol) == expected_since(sim, symbol, first[symbol])


async def test_restart_resumes_from_last_stored_id(sim: BinanceSimulator) -> None:
    settings = settings_for(sim)
    async with running(settings, ["BTCUSDT"]) as first_run:
        await wait_until(lambda: len(first_run.publisher.unique_ids("BTCUSDT")) >= 5)
    stored = first_run.publisher.unique_ids("BTCUSDT")
    sim.emit(200, ["BTCUSDT"])  # happens while the service is down
    async with running(settings, ["BTCUSDT"], resume_from={"BTCUSDT": max(stored)}) as run:
        await wait_until(lambda: run.source.status().gaps_found >= 1)
        await finish_and_settle(sim, run, ["BTCUSDT"])
        assert stored | run.publisher.unique_ids("BTCUSDT") == expected_since(
            sim, "BTCUSDT", min(stored)
        )
        assert run.source.status().trades_backfilled >= 200


async def test_restart_backfill_keeps_only_the_newest_backfill_max_trades(
    sim: BinanceSimulator,
) -> None:
    sim.pause()
    last_stored = max(sim.trades_emitted()["BTCUSDT"], default=999_999)
    sim.emit(300, ["BTCUSDT"])
    settings = settings_for(sim, backfill_max_trades=100)
    async with running(settings, ["BTCUSDT"], resume_from={"BTCUSDT": last_stored}) as run:
        await wait_until(lambda: connected(run.source))
        await finish_and_settle(sim, run, ["BTCUSDT"])
        newest = max(sim.trades_emitted()["BTCUSDT"])
        assert run.publisher.unique_ids("BTCUSDT") == set(range(newest - 100, newest + 1))
        assert run.source.status().trades_skipped == 200


async def test_exchange_gap_is_recorded_not_retried_forever() -> None:
    config = SimulatorConfig(symbols=["BTCUSDT"], rate_per_symbol=0.0, history_size=20)
    async with (
        BinanceSimulator(config, port=0) as simulator,
        running(settings_for(simulator, reconnect_min_s=0.2), ["BTCUSDT"]) as run,
    ):
        await wait_until(lambda: connected(run.source))
        simulator.emit(1)
        await wait_until(lambda: bool(run.publisher.unique_ids("BTCUSDT")))
        seen = max(run.publisher.unique_ids("BTCUSDT"))
        await simulator.disconnect_all(abrupt=True)
        simulator.emit(100)  # while disconnected; REST keeps only the newest 20
        await wait_until(lambda: run.source.status().reconnects == 1)
        await wait_until(lambda: streaming(run.source, simulator))
        simulator.emit(1)
        await wait_until(lambda: run.source.status().gaps_found == 1 and backfill_idle(run.source))
        calls = run.exchange.calls
        await asyncio.sleep(0.5)
        assert run.exchange.calls == calls == 1  # asked once, never again
        status = run.source.status()
        assert status.exchange_gap_trades == 81  # 100 missed, 19 of them still on REST
        [gap] = status.exchange_gaps
        assert (gap.symbol, gap.first_id, gap.last_id) == ("BTCUSDT", seen + 1, seen + 81)
        assert run.publisher.unique_ids("BTCUSDT") == set(range(seen, seen + 102)) - set(
            range(seen + 1, seen + 82)
        )


async def test_symbols_beyond_stream_limit_use_more_connections(sim: BinanceSimulator) -> None:
    settings = settings_for(sim, max_streams_per_connection=2)
    async with running(settings, SYMBOLS[:5]) as run:
        await wait_until(lambda: connected(run.source, 3) and sim.connections == 3)
        await wait_until(lambda: all(run.publisher.unique_ids(s) for s in SYMBOLS[:5]))
        assert sorted(len(streams) for streams in sim.subscriptions()) == [1, 2, 2]
        await run.source.set_symbols(SYMBOLS[:6])  # fills the connection that has room
        await wait_until(lambda: bool(run.publisher.unique_ids(SYMBOLS[5])), timeout=2.0)
        assert sorted(len(streams) for streams in sim.subscriptions()) == [2, 2, 2]


async def test_silent_connection_is_reconnected_by_watchdog(sim: BinanceSimulator) -> None:
    async with running(settings_for(sim, silence_timeout_s=0.3), ["BTCUSDT"]) as run:
        await wait_until(lambda: bool(run.publisher.unique_ids("BTCUSDT")))
        sim.pause()
        await wait_until(lambda: run.source.status().reconnects >= 1, timeout=3.0)
        sim.resume()
        before = len(run.publisher.unique_ids("BTCUSDT"))
        await wait_until(lambda: len(run.publisher.unique_ids("BTCUSDT")) > before + 5)


async def test_old_connection_is_replaced_before_max_age_without_losing_trades(
    sim: BinanceSimulator,
) -> None:
    async with running(settings_for(sim, connection_max_age_s=0.5), ["BTCUSDT"]) as run:
        await wait_until(lambda: bool(run.publisher.unique_ids("BTCUSDT")))
        first = min(run.publisher.unique_ids("BTCUSDT"))
        await asyncio.sleep(1.6)  # about three rotations
        await finish_and_settle(sim, run, ["BTCUSDT"])
        assert run.publisher.unique_ids("BTCUSDT") == expected_since(sim, "BTCUSDT", first)
        assert run.source.status().reconnects == 0  # rotations are not failures
        assert sim.connections == 1


async def test_frame_above_max_size_costs_a_reconnect_not_the_source(
    sim: BinanceSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import devtools.simulator.server as server

    monkeypatch.setattr(server, "MALFORMED_KINDS", ("oversized",))  # a ~100 kB frame
    async with running(settings_for(sim, max_frame_bytes=20_000), ["BTCUSDT"]) as run:
        await wait_until(lambda: bool(run.publisher.unique_ids("BTCUSDT")))
        first = min(run.publisher.unique_ids("BTCUSDT"))
        sim.config.malformed_ratio = 1.0
        await wait_until(lambda: run.source.status().reconnects >= 1)
        sim.config.malformed_ratio = 0.0
        await finish_and_settle(sim, run, ["BTCUSDT"])
        assert run.publisher.unique_ids("BTCUSDT") == expected_since(sim, "BTCUSDT", first)
