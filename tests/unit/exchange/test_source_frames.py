"""What BinanceSource does with each frame: validate, publish or dead-letter, detect id gaps."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.core import metrics
from pipeline.core.settings import BinanceSettings
from pipeline.exchange.client import ExchangeClient
from pipeline.exchange.source import BinanceSource
from tests.factories import CollectingPublisher


class FakeExchange:
    """historicalTrades over a contiguous tape of ids per symbol."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, int]] = []

    async def historical_trades(
        self, symbol: str, from_id: int | None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        self.calls.append((symbol, from_id, limit))
        start = from_id or 0
        now = time.time_ns() // 1_000_000
        return [rest_item(i, now) for i in range(start, start + limit)]


def rest_item(trade_id: int, time_ms: int) -> dict[str, Any]:
    return {
        "id": trade_id,
        "price": "100.5",
        "qty": "0.1",
        "time": time_ms,
        "isBuyerMaker": False,
        "isBestMatch": True,
    }


def trade(symbol: str, trade_id: int, **changes: Any) -> dict[str, Any]:
    now = time.time_ns() // 1_000_000
    data = {
        "e": "trade",
        "E": now,
        "s": symbol,
        "t": trade_id,
        "p": "65000.10",
        "q": "0.002",
        "T": now,
        "m": True,
        "M": True,
    }
    data.update(changes)
    return data


def frame(symbol: str, trade_id: int, stream: str | None = None, **changes: Any) -> bytes:
    data = trade(symbol, trade_id, **changes)
    return orjson.dumps({"stream": stream or f"{symbol.lower()}@trade", "data": data})


def make_source(
    resume_from: dict[str, int] | None = None, **settings: Any
) -> tuple[BinanceSource, CollectingPublisher, FakeExchange]:
    publisher, exchange = CollectingPublisher(), FakeExchange()
    source = BinanceSource(
        BinanceSettings(**settings),
        publisher,
        cast(ExchangeClient, exchange),
        resume_from=resume_from,
    )
    return source, publisher, exchange


async def settle(source: BinanceSource) -> None:
    """Wait until no backfill is running."""
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not source.status().backfill_in_progress:
            return
    raise AssertionError("backfill did not finish")


async def test_combined_stream_trade_is_validated_and_published() -> None:
    source, publisher, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    assert await source.handle_frame(frame("BTCUSDT", 7)) is None
    [event] = publisher.events
    assert (event.symbol, event.trade_id, str(event.price)) == ("BTCUSDT", 7, "65000.10")
    assert event.processed_at >= event.trade_time


async def test_raw_stream_payload_without_wrapper_is_accepted() -> None:
    source, publisher, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(orjson.dumps(trade("BTCUSDT", 7)))
    assert publisher.ids("BTCUSDT") == [7]


async def test_subscription_replies_are_returned_and_not_published() -> None:
    source, publisher, _ = make_source()
    for reply in ({"result": None, "id": 3}, {"error": {"code": 2, "msg": "bad"}, "id": 4}):
        assert await source.handle_frame(orjson.dumps(reply)) == reply
    assert publisher.events == [] and publisher.dead == []
    assert source.status().received == 0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"stream":"btcusdt@trade","data":{"e":"trade",}', "invalid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"hello":"world"}', "neither `data` nor an event type"),
        (frame("BTCUSDT", 1, p="-3"), "price"),
        (frame("BTCUSDT", 1, t={"id": 1}), "trade_id"),
        (frame("BTCUSDT", 1, e="tradeV9"), "unknown event type"),
        (orjson.dumps({"stream": "x", "data": "text"}), "must be a JSON object"),
        (frame("BTCUSDT", 1, T=95_617_584_000_000), "trade_time: Input should be at most"),
        (frame("BTCUSDT", 1, E=1_498_867_199_999), "event_time: Input should be greater"),
        (frame("BTCUSDT", 1, p="65000.1000000000000000000"), "price: Decimal input should"),
        (frame("BTCUSDT", 1, q="1E-20000"), "quantity: Decimal input should"),
        (frame("ETHUSDT", 1, "btcusdt@trade"), "symbol ETHUSDT does not match stream btcusdt"),
        (frame("BTCUSDT", 1, "BTCUSDT@trade"), "symbol BTCUSDT does not match stream BTCUSDT"),
        (
            orjson.dumps({"data": trade("BTCUSDT", 1)}),
            "symbol BTCUSDT does not match stream None",
        ),
    ],
    ids=[
        "bad-json",
        "not-an-object",
        "no-data",
        "negative-price",
        "wrong-type",
        "unknown-event",
        "data-not-object",
        "year-5000",
        "before-2017-07",
        "19-decimals",
        "scale-20000",
        "symbol-not-the-streams",
        "stream-upper-case",
        "no-stream",
    ],
)
async def test_malformed_frames_go_to_dead_letter_with_reason(raw: bytes, reason: str) -> None:
    source, publisher, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(raw)
    assert publisher.events == []
    [(dead_raw, dead_reason, origin)] = publisher.dead
    assert dead_raw == raw
    assert reason in dead_reason
    assert origin == "ws"


async def test_a_trade_ahead_of_now_by_more_than_the_allowed_skew_is_dead_lettered() -> None:
    source, publisher, _ = make_source(max_clock_skew_s=60)
    await source.set_symbols(["BTCUSDT"])
    now = time.time_ns() // 1_000_000
    await source.handle_frame(frame("BTCUSDT", 1, T=now + 30_000, E=now + 30_000))
    await source.handle_frame(frame("BTCUSDT", 2, T=now + 90_000))
    await source.handle_frame(frame("BTCUSDT", 3, E=now + 90_000))
    assert publisher.ids("BTCUSDT") == [1]
    assert [reason.split(":")[0] for _, reason, _ in publisher.dead] == ["trade_time", "event_time"]


async def test_a_trade_of_another_symbol_than_its_stream_is_not_published_under_either() -> None:
    source, publisher, _ = make_source()
    await source.set_symbols(["BTCUSDT", "ETHUSDT"])
    await source.handle_frame(frame("ETHUSDT", 5))
    await source.handle_frame(frame("ETHUSDT", 900, "btcusdt@trade"))
    await source.handle_frame(frame("ETHUSDT", 6))
    assert publisher.ids("ETHUSDT") == [5, 6]
    assert publisher.ids("BTCUSDT") == []
    [(_, reason, _)] = publisher.dead
    assert reason == "symbol ETHUSDT does not match stream btcusdt@trade"
    assert source.status().symbols["ETHUSDT"].last_trade_id == 6
    assert source.status().gaps_found == 0


async def test_status_counts_received_valid_and_invalid_frames() -> None:
    source, _, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    for raw in (frame("BTCUSDT", 1), b"{", frame("BTCUSDT", 2), frame("BTCUSDT", 3, q="x")):
        await source.handle_frame(raw)
    status = source.status()
    assert (status.received, status.valid, status.invalid) == (4, 2, 2)
    assert status.symbols["BTCUSDT"].last_trade_id == 2


async def test_id_jump_backfills_exactly_the_missing_ids_from_rest() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 10))
    await source.handle_frame(frame("BTCUSDT", 15))
    await settle(source)
    assert exchange.calls == [("BTCUSDT", 11, 4)]
    assert sorted(publisher.ids("BTCUSDT")) == list(range(10, 16))
    status = source.status()
    assert (status.gaps_found, status.trades_backfilled) == (1, 4)


async def test_receiving_a_gap_does_not_wait_for_rest() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 10))
    await source.handle_frame(frame("BTCUSDT", 20))
    await source.handle_frame(frame("BTCUSDT", 21))
    assert publisher.ids("BTCUSDT") == [10, 20, 21]  # live trades first, backfill after
    assert exchange.calls == []
    await settle(source)
    assert sorted(publisher.ids("BTCUSDT")) == list(range(10, 22))


async def test_duplicates_and_replays_are_published_but_do_not_move_last_id_back() -> None:
    source, publisher, exchange = make_source()
    await source.set_symbols(["BTCUSDT"])
    for trade_id in (5, 6, 6, 4, 7):
        await source.handle_frame(frame("BTCUSDT", trade_id))
    assert publisher.ids("BTCUSDT") == [5, 6, 6, 4, 7]
    assert source.status().symbols["BTCUSDT"].last_trade_id == 7
    assert source.status().gaps_found == 0
    assert exchange.calls == []


async def test_restart_backfills_from_last_stored_id() -> None:
    source, publisher, exchange = make_source(resume_from={"btcusdt": 100})
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 150))
    await settle(source)
    assert exchange.calls == [("BTCUSDT", 101, 49)]
    assert sorted(publisher.ids("BTCUSDT")) == list(range(101, 151))


async def test_restart_backfill_is_bounded_by_backfill_max_trades() -> None:
    source, publisher, _ = make_source(resume_from={"BTCUSDT": 100}, backfill_max_trades=10)
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 5000))
    await settle(source)
    assert sorted(publisher.ids("BTCUSDT")) == list(range(4990, 5001))
    assert source.status().trades_skipped == 5000 - 101 - 10


async def test_gap_older_than_backfill_max_age_is_skipped() -> None:
    source, _, exchange = make_source(backfill_max_age_s=60)
    await source.set_symbols(["BTCUSDT"])
    old = time.time_ns() // 1_000_000 - 120_000
    await source.handle_frame(frame("BTCUSDT", 1, T=old))
    await source.handle_frame(frame("BTCUSDT", 9, T=old))
    await settle(source)
    assert exchange.calls == []
    assert source.status().trades_skipped == 7


async def test_symbol_without_resume_entry_does_not_backfill_history() -> None:
    source, publisher, _ = make_source(resume_from={"ETHUSDT": 3})
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 1_000_000))
    assert publisher.ids("BTCUSDT") == [1_000_000]
    assert source.status().gaps_found == 0


async def test_removed_symbol_forgets_its_last_id_and_resume_entry() -> None:
    source, _, _ = make_source(resume_from={"BTCUSDT": 3})
    await source.set_symbols(["BTCUSDT"])
    await source.set_symbols([])
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("BTCUSDT", 50))
    assert source.status().gaps_found == 0
    assert source.symbols == frozenset({"BTCUSDT"})


async def test_trade_of_an_untracked_symbol_is_published_without_tracking() -> None:
    source, publisher, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    await source.handle_frame(frame("ETHUSDT", 1))
    assert publisher.ids("ETHUSDT") == [1]
    assert "ETHUSDT" not in source.status().symbols


async def test_symbols_are_normalised_and_invalid_names_refused() -> None:
    source, _, _ = make_source()
    await source.set_symbols(["btcusdt", " EthUsdt "])
    assert source.symbols == frozenset({"BTCUSDT", "ETHUSDT"})
    with pytest.raises(ValueError, match="must match"):
        await source.set_symbols(["BTC/USDT"])


async def test_set_symbols_before_run_opens_no_connection() -> None:
    source, _, _ = make_source()
    await source.set_symbols(["BTCUSDT"])
    status = source.status()
    assert status.connections == () and not status.running


def _sample(text: bytes, name: str, label: str, value: str) -> float:
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get(label) == value:
                return sample.value
    return 0.0


async def test_frame_counts_are_in_every_exposition() -> None:
    def counts() -> tuple[float, float, float]:
        text = metrics.exposition()
        return (
            _sample(text, "pipeline_trades_received_total", "source", "ws"),
            _sample(text, "pipeline_trades_validated_total", "symbol", "XRPUSDT"),
            _sample(text, "pipeline_trades_rejected_total", "source", "ws"),
        )

    source, _, _ = make_source()
    await source.set_symbols(["XRPUSDT"])
    before = counts()
    for trade_id in (1, 2, 3, 3):
        await source.handle_frame(frame("XRPUSDT", trade_id))
    await source.handle_frame(frame("XRPUSDT", 4, p="-3"))
    after = counts()
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == (5, 4, 1)
    # A symbol dropped keeps its count; counted frames are not counted again.
    await source.handle_frame(frame("XRPUSDT", 5))
    await source.set_symbols([])
    assert counts()[1] - after[1] == 1
    assert counts()[1] - after[1] == 1
