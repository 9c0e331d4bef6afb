"""One stream's bounded buffer: events are taken without waiting, a client that lets too many
pile up is closed as slow with a last event saying why (api.stream.client)."""

from __future__ import annotations

import orjson

from api.stream.client import CloseReason, StreamClient
from api.stream.events import FeedEvent, SseFraming, WsFraming
from api.stream.positions import SymbolPosition


def trade(symbol: str, trade_id: int) -> FeedEvent:
    return FeedEvent(symbol, trade_id, orjson.dumps({"symbol": symbol, "trade_id": trade_id}))


def client(*symbols: str, buffer: int = 10) -> StreamClient:
    made = StreamClient(symbols, SseFraming(), buffer=buffer, details={"buffer": buffer})
    made.start_at({symbol: SymbolPosition(0) for symbol in symbols})
    return made


async def test_the_event_id_holds_the_position_in_every_subscribed_symbol() -> None:
    stream = client("BTCUSDT", "ETHUSDT")
    stream.offer(trade("ETHUSDT", 1))
    stream.offer(trade("BTCUSDT", 3))
    stream.offer(trade("BTCUSDT", 2))
    chunks = await stream.next_chunks()
    assert chunks is not None
    ids = [chunk.split(b"\n")[0] for chunk in chunks if isinstance(chunk, bytes)]
    assert ids == [
        b"id: BTCUSDT:0,ETHUSDT:1",
        b"id: BTCUSDT:3~2-1,ETHUSDT:1",
        b"id: BTCUSDT:3~2,ETHUSDT:1",
    ]
    assert b"event: backfill" in chunks[2]


async def test_a_client_that_lets_its_buffer_fill_is_closed_as_slow_and_told_why() -> None:
    stream = client("BTCUSDT", buffer=3)
    for trade_id in range(1, 5):
        stream.offer(trade("BTCUSDT", trade_id))
    assert stream.closed is CloseReason.SLOW
    assert stream.offer(trade("BTCUSDT", 5)) is None
    chunks = await stream.next_chunks()
    assert chunks is not None and len(chunks) == 1  # the queued events are dropped
    assert chunks[0].startswith(b"event: close\ndata: ")
    assert orjson.loads(chunks[0].split(b"data: ")[1])["reason"] == "slow"
    assert await stream.next_chunks() is None


async def test_a_shutdown_sends_what_is_queued_then_the_close_event() -> None:
    stream = StreamClient(("BTCUSDT",), WsFraming(), buffer=10)
    stream.start_at({"BTCUSDT": SymbolPosition(0)})
    stream.offer(trade("BTCUSDT", 1))
    stream.close(CloseReason.SHUTDOWN)
    chunks = await stream.next_chunks()
    assert chunks is not None and orjson.loads(chunks[0])["event"] == "trade"
    final = await stream.next_chunks()
    assert final is not None and orjson.loads(final[0])["reason"] == "shutdown"
    assert stream.close_code == 1001
    assert await stream.next_chunks() is None


async def test_a_client_that_went_away_gets_nothing_more() -> None:
    stream = client("BTCUSDT")
    stream.offer(trade("BTCUSDT", 1))
    stream.close(CloseReason.GONE)
    assert await stream.next_chunks() is None


def test_events_kept_before_the_seam_stop_at_the_buffer_and_say_so() -> None:
    stream = client("BTCUSDT", buffer=2)
    assert [stream.collect(trade("BTCUSDT", i)) for i in (1, 2, 3, 4)] == [
        False,
        False,
        True,
        False,
    ]
    assert stream.pending is None and stream.overflowed
