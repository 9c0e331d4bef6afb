"""GET /stream and WS /ws on the real services: the simulator's trades, through the whole
pipeline and Kafka, pushed to clients — exactly once each, across reconnects and backfills.

The simulator's clock is off (rate 0): trades happen only when a test emits them, so its tape is
the exact ground truth of what every client must end up with.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import orjson
import pytest

from api.reads.trades import TRADE_COLUMNS
from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import Settings
from tests.stream_clients import Received, SseStream, WsStream, served
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
WATCHED = ["BTCUSDT", "ETHUSDT"]
KEY = "stream-key"


@pytest.fixture
async def simulator() -> AsyncIterator[BinanceSimulator]:
    config = SimulatorConfig(symbols=SYMBOLS, rate_per_symbol=0.0, seed=17)
    async with BinanceSimulator(config, port=0) as sim:
        yield sim


@pytest.fixture
def service_settings(
    make_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> Callable[..., Settings]:
    def build(**overrides: str) -> Settings:
        return make_settings(
            BINANCE_WS_URL=simulator.ws_url,
            BINANCE_REST_URL=simulator.rest_url,
            SYMBOLS=",".join(SYMBOLS),
            PIPELINE_ISOLATION="task",
            BINANCE__RECONNECT_MIN_S="0.1",
            BINANCE__REST_WEIGHT_PER_MINUTE="6000",
            **overrides,
        )

    return build


async def subscribed(simulator: BinanceSimulator) -> None:
    async def all_streams_open() -> bool:
        streams = {stream for connection in simulator.subscriptions() for stream in connection}
        return streams == {f"{s.lower()}@trade" for s in SYMBOLS}

    await wait_until(all_streams_open, 20, "the service subscribed to every symbol")


def tape(simulator: BinanceSimulator, symbols: list[str] = WATCHED) -> dict[str, set[int]]:
    emitted = simulator.trades_emitted()
    return {symbol: set(emitted[symbol]) for symbol in symbols}


def since(simulator: BinanceSimulator, before: dict[str, set[int]]) -> dict[str, list[int]]:
    """The trade ids that happened after `before`, per symbol, in id order."""
    now = tape(simulator, list(before))
    return {symbol: sorted(now[symbol] - before[symbol]) for symbol in before}


def complete(expected: dict[str, list[int]]) -> Callable[[Received], bool]:
    def check(received: Received) -> bool:
        return all(set(expected[s]) <= set(received.ids(s)) for s in expected)

    return check


async def emit(simulator: BinanceSimulator, rounds: int, per_symbol: int) -> None:
    for _ in range(rounds):
        simulator.emit(per_symbol, SYMBOLS)
        await asyncio.sleep(0.05)


async def stored_rows(settings: Settings, symbol: str) -> dict[int, dict[str, object]]:
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        rows = await connection.fetch(
            f"SELECT {TRADE_COLUMNS} FROM crypto_prices WHERE symbol = $1", symbol
        )
    finally:
        await connection.close()
    return {row["trade_id"]: orjson.loads(orjson.dumps(dict(row))) for row in rows}


async def table_holds(settings: Settings, expected: dict[str, list[int]]) -> None:
    async def holds() -> bool:
        for symbol, ids in expected.items():
            if not set(ids) <= set(await stored_rows(settings, symbol)):
                return False
        return True

    await wait_until(holds, 60, "every trade of the tape stored")


async def test_a_stream_pushes_exactly_the_trades_of_its_symbols_in_id_order_as_stored(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = service_settings()
    simulator.config.duplicate_ratio = 0.1  # the topic carries every tenth trade twice
    async with served(settings) as url:
        await subscribed(simulator)
        before = tape(simulator)
        async with SseStream(url, {"symbols": "btcusdt,ETHUSDT,BTCUSDT"}) as stream:
            await stream.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            await emit(simulator, 5, 100)
            expected = since(simulator, before)
            await stream.wait_for(complete(expected), 30, "every trade of the tape")
            await asyncio.sleep(0.5)  # nothing else may follow
        await table_holds(settings, expected)
        stored = {symbol: await stored_rows(settings, symbol) for symbol in WATCHED}
    received = stream.received
    ready = received.kinds("ready")[0]
    assert ready.id == "BTCUSDT:-1,ETHUSDT:-1"
    assert ready.data["symbols"] == WATCHED and ready.data["resumed"] is False
    for symbol in WATCHED:
        assert received.ids(symbol) == expected[symbol]
        for event in received.trades(symbol):
            assert event.kind == "trade"
            assert event.data == stored[symbol][event.data["trade_id"]]
    assert {e.data["symbol"] for e in received.trades()} == set(WATCHED)
    last = received.trades()[-1]
    assert last.id == ",".join(f"{s}:{received.ids(s)[-1]}" for s in WATCHED)


async def test_a_client_that_reconnects_with_last_event_id_gets_every_trade_exactly_once(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    params = {"symbols": ",".join(WATCHED)}
    received = Received()
    async with served(service_settings()) as url:
        await subscribed(simulator)
        before = tape(simulator)
        async with SseStream(url, params, received=received) as first:
            await first.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            await emit(simulator, 4, 100)
            await first.wait_for(lambda r: len(r.trades()) >= 150, 30, "150 trades")
        # Gone in the middle of the stream; trades go on meanwhile.
        last_id = received.last_id
        assert last_id is not None
        await emit(simulator, 3, 100)
        headers = {"Last-Event-ID": last_id}
        async with SseStream(url, params, headers, received) as second:
            await second.wait_for(lambda r: len(r.kinds("ready")) == 2, 30, "the second ready")
            await emit(simulator, 2, 50)
            expected = since(simulator, before)
            await second.wait_for(complete(expected), 60, "every trade of the tape")
            await asyncio.sleep(0.5)
    resumed = received.kinds("ready")[1]
    assert resumed.id == last_id and resumed.data["resumed"] is True
    for symbol in WATCHED:
        assert received.ids(symbol) == expected[symbol]  # in order, none twice, none missing


async def test_backfilled_trades_reach_live_clients_marked_and_a_resume_fills_the_holes(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    params = {"symbols": ",".join(WATCHED)}
    away = Received()
    # Hangs up right after an event whose position has holes: trades it lacks.
    has_holes = lambda event: "~" in (event.id or "")  # noqa: E731
    settings = service_settings()
    async with served(settings) as url:
        await subscribed(simulator)
        before = tape(simulator)
        async with (
            SseStream(url, params) as live,
            SseStream(url, params, received=away, until=has_holes) as leaving,
        ):
            await live.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            await leaving.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            await emit(simulator, 1, 5)  # whole frames first: the source knows where it is
            await asyncio.sleep(0.5)
            # A corrupted frame is dead-lettered; the next trade reveals the gap and the source
            # fetches the missing trade from REST later, after newer ones: a backfill.
            simulator.config.malformed_ratio = 0.02
            for _ in range(40):
                await emit(simulator, 1, 50)
                if leaving.ended:
                    break
            holes_when_gone = away.last_id
            assert holes_when_gone is not None and "~" in holes_when_gone
            await emit(simulator, 3, 50)
            simulator.config.malformed_ratio = 0.0  # whole frames last: every gap is revealed
            await emit(simulator, 1, 5)
            expected = since(simulator, before)
            await table_holds(settings, expected)
            returned = len(away.events)
            async with SseStream(url, params, {"Last-Event-ID": holes_when_gone}, away) as back:
                await emit(simulator, 1, 20)
                expected = since(simulator, before)
                await back.wait_for(complete(expected), 60, "every trade after the resume")
                await live.wait_for(complete(expected), 60, "every trade on the live stream")
                await asyncio.sleep(0.5)
    for received in (live.received, away):
        for symbol in WATCHED:
            ids = received.ids(symbol)
            assert sorted(ids) == expected[symbol]  # every trade, none twice
            newest = -1
            for event in received.trades(symbol):
                trade_id = event.data["trade_id"]
                assert event.kind == ("trade" if trade_id > newest else "backfill"), event
                newest = max(newest, trade_id)
    assert live.received.kinds("backfill"), "no trade arrived after a newer one"
    after_return = Received(away.events[returned:])
    assert after_return.kinds("backfill"), "the resume sent none of the holes' trades"


async def test_a_client_far_behind_catches_up_in_pages_over_as_many_connections_as_it_takes(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    settings = service_settings(STREAM__CLIENT_BUFFER="200", STREAM__MAX_RESUME_TRADES="1000")
    params = {"symbols": "BTCUSDT"}
    received = Received()
    async with served(settings) as url:
        await subscribed(simulator)
        before = tape(simulator, ["BTCUSDT"])
        async with SseStream(url, params, received=received) as first:
            await first.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            await emit(simulator, 1, 10)
            await first.wait_for(lambda r: len(r.trades()) == 10, 30, "10 trades")
        await emit(simulator, 25, 100)  # 2,500 trades while it is away
        await table_holds(settings, since(simulator, before))
        connections = 1
        while len(received.trades()) < 2_510:
            last_id = received.last_id
            assert last_id is not None and connections < 10
            closes = len(received.kinds("close"))
            async with SseStream(url, params, {"Last-Event-ID": last_id}, received) as again:
                connections += 1
                await again.wait_for(
                    lambda r, closes=closes: (
                        len(r.kinds("close")) > closes or len(r.trades()) >= 2_510
                    ),
                    60,
                    "a close or every trade",
                )
    assert received.ids("BTCUSDT") == since(simulator, before)["BTCUSDT"]
    assert [e.data["reason"] for e in received.kinds("close")] == ["resume_limit"] * 2
    assert connections == 4  # 1,000 stored trades per connection at most


async def test_a_client_that_stops_reading_is_dropped_while_ingest_and_others_go_on(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    # Small buffers, written as soon as there is something: a client either keeps up or not.
    settings = service_settings(STREAM__CLIENT_BUFFER="300", STREAM__FLUSH_MS="0")
    async with served(settings) as url:
        await subscribed(simulator)
        before = tape(simulator)
        port = int(url.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /stream?symbols=BTCUSDT,ETHUSDT HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            async with SseStream(url, {"symbols": ",".join(WATCHED)}) as reader:
                await reader.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")

                async def dropped_as_slow() -> bool:
                    await emit(simulator, 1, 50)
                    async with httpx.AsyncClient(base_url=url) as http:
                        text = (await http.get("/metrics")).text
                    return bool(
                        re.search(
                            r'pipeline_stream_clients_dropped_total\{reason="slow"\} 1\.0', text
                        )
                    )

                await wait_until(dropped_as_slow, 60, "the stalled client dropped", interval=0.1)
                await emit(simulator, 2, 100)
                expected = since(simulator, before)
                await reader.wait_for(complete(expected), 60, "every trade on the reading stream")
                await asyncio.sleep(0.3)
            await table_holds(settings, expected)
        finally:
            stalled.close()
    for symbol in WATCHED:
        assert reader.received.ids(symbol) == expected[symbol]
    assert not reader.received.kinds("close")


async def test_the_websocket_stream_resumes_exactly_after_a_reconnect(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    received = Received()
    async with served(service_settings()) as url:
        await subscribed(simulator)
        before = tape(simulator, ["ETHUSDT"])
        async with WsStream(url, "symbols=ethusdt") as first:
            await first.wait_for(lambda r: r.kinds("ready"), 30, "the ready message")
            await emit(simulator, 3, 100)
            await first.wait_for(lambda r: len(r.trades()) >= 100, 30, "100 trades")
        received.events += first.received.events
        last_id = received.last_id
        await emit(simulator, 2, 100)
        async with WsStream(url, f"symbols=ETHUSDT&after={last_id}") as second:
            await second.wait_for(lambda r: r.kinds("ready"), 30, "the ready message")
            expected = since(simulator, before)
            earlier = received.events

            def with_earlier(now: Received) -> bool:
                return complete(expected)(Received(earlier + now.events))

            await second.wait_for(with_earlier, 60, "every trade of the tape")
            await asyncio.sleep(0.3)
        received.events += second.received.events
    assert received.ids("ETHUSDT") == expected["ETHUSDT"]
    assert second.received.kinds("ready")[0].data["resumed"] is True


async def test_a_conflated_stream_sends_at_most_one_update_per_symbol_per_interval(
    service_settings: Callable[..., Settings], simulator: BinanceSimulator
) -> None:
    async with served(service_settings()) as url:
        await subscribed(simulator)
        params = {"symbols": ",".join(WATCHED), "conflate": "500ms"}
        async with SseStream(url, params) as stream:
            await stream.wait_for(lambda r: r.kinds("ready"), 30, "the ready event")
            started = asyncio.get_running_loop().time()
            await emit(simulator, 20, 20)
            newest = {s: max(ids) for s, ids in tape(simulator).items()}

            def newest_shown(received: Received) -> bool:
                return all(received.ids(s)[-1:] == [newest[s]] for s in WATCHED)

            await stream.wait_for(newest_shown, 30, "the newest trade of each symbol")
            elapsed = asyncio.get_running_loop().time() - started
    for symbol in WATCHED:
        ids = stream.received.ids(symbol)
        assert ids == sorted(set(ids))
        assert len(ids) <= elapsed / 0.5 + 2, (len(ids), elapsed)
    assert stream.received.kinds("ready")[0].data["conflate_ms"] == 500


async def test_limits_answer_429_and_422_over_sse_and_close_codes_over_websocket(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        PIPELINE_ROLES="none", STREAM__MAX_CLIENTS="1", STREAM__MAX_SYMBOLS="2"
    )
    async with served(settings) as url, httpx.AsyncClient(base_url=url) as http:
        too_many_symbols = await http.get("/stream", params={"symbols": "AAAA,BBBB,CCCC"})
        bad_position = await http.get(
            "/stream", params={"symbols": "BTCUSDT"}, headers={"Last-Event-ID": "BTCUSDT:x"}
        )
        bad_interval = await http.get("/stream", params={"symbols": "BTCUSDT", "conflate": "5ms"})
        async with SseStream(url, {"symbols": "BTCUSDT"}) as first:
            assert first.status == 200
            second = await http.get("/stream", params={"symbols": "BTCUSDT"})
            async with WsStream(url, "symbols=BTCUSDT") as refused:
                assert await refused.closed() == 4429
        async with WsStream(url, "symbols=AAAA,BBBB,CCCC") as invalid:
            assert await invalid.closed() == 4422
            assert "at most 2 symbols" in invalid.close_reason
    assert too_many_symbols.status_code == 422
    assert "at most 2 symbols" in too_many_symbols.json()["detail"][0]["msg"]
    assert bad_position.status_code == 422
    assert bad_position.json()["detail"][0]["loc"] == ["header", "Last-Event-ID"]
    assert bad_interval.status_code == 422
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert "stream.max_clients" in second.json()["detail"]


async def test_streams_need_the_key_only_with_api_key_and_stream_requires_key(
    make_settings: Callable[..., Settings],
) -> None:
    guarded = make_settings(PIPELINE_ROLES="none", API_KEY=KEY, STREAM_REQUIRES_KEY="true")
    async with served(guarded) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.get("/stream", params={"symbols": "BTCUSDT"})
        wrong = await http.get(
            "/stream", params={"symbols": "BTCUSDT"}, headers={"X-API-Key": "nope"}
        )
        async with SseStream(url, {"symbols": "BTCUSDT"}, {"X-API-Key": KEY}) as allowed:
            assert allowed.status == 200
        async with WsStream(url, "symbols=BTCUSDT") as socket_refused:
            assert await socket_refused.closed() == 4401
        async with WsStream(url, "symbols=BTCUSDT", {"X-API-Key": KEY}) as socket_allowed:
            await asyncio.sleep(0.3)
            assert socket_allowed.close_code is None
    assert refused.status_code == 401 and wrong.status_code == 401
    assert refused.json() == {"detail": "missing or invalid X-API-Key header"}

    open_reads = make_settings(PIPELINE_ROLES="none", API_KEY=KEY)
    async with served(open_reads) as url, SseStream(url, {"symbols": "BTCUSDT"}) as keyless:
        assert keyless.status == 200
