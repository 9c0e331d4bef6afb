"""The exchange simulator behaves like Binance spot, field for field, and its knobs do what they say.

Every test drives real websockets/httpx clients against a simulator on 127.0.0.1:0. The clock
runs at rate 0 unless a test says otherwise; trades are made to happen with `emit()`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import ROUND_DOWN, Decimal
from typing import Any

import httpx
import orjson
import pytest
from websockets import ConnectionClosed
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection
from websockets.exceptions import InvalidStatus
from websockets.frames import Close

from devtools.simulator import (
    MAX_MESSAGES_PER_SECOND,
    ODD_LISTINGS,
    BinanceSimulator,
    ListingChange,
    SimulatorConfig,
)
from devtools.simulator.__main__ import parse_args
from devtools.simulator.market import YEAR_5000_MS, Market, Pending, malform

START = 1_000_000  # SimulatorConfig.start_trade_id
TRADE_TYPES = {
    "e": str,
    "E": int,
    "s": str,
    "t": int,
    "p": str,
    "q": str,
    "T": int,
    "m": bool,
    "M": bool,
}
EIGHT_DECIMALS = re.compile(r"^[0-9]+\.[0-9]{8}$")
TOO_MANY_PLACES = re.compile(r"^[0-9]+\.[0-9]{19,}$")

StartExchange = Callable[..., Awaitable[BinanceSimulator]]


@pytest.fixture
async def exchange() -> AsyncIterator[StartExchange]:
    """Start simulators (rate 0 unless overridden); all are stopped after the test."""
    started: list[BinanceSimulator] = []

    async def start(**overrides: Any) -> BinanceSimulator:
        sim = BinanceSimulator(SimulatorConfig(**{"rate_per_symbol": 0.0, **overrides}))
        await sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


async def eventually(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Wait until the server side caught up (e.g. registered a connection)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def subscribe(sim: BinanceSimulator, target: str) -> ClientConnection:
    """Open a WS connection and wait until the simulator routes trades to it."""
    ws = await connect(sim.ws_url + target)
    await eventually(lambda: sim.connections >= 1)
    return ws


async def recv(ws: Connection) -> str:
    frame = await asyncio.wait_for(ws.recv(), 2.0)
    assert isinstance(frame, str), "Binance sends text frames"
    return frame


async def recv_json(ws: Connection) -> Any:
    return orjson.loads(await recv(ws))


async def request(ws: Connection, payload: object) -> Any:
    await ws.send(orjson.dumps(payload).decode())
    return await recv_json(ws)


async def nothing_arrives(ws: Connection, within: float = 0.1) -> bool:
    return not await frames_until_quiet(ws, within)


async def frames_until_quiet(ws: Connection, quiet: float = 0.1) -> list[str]:
    """Every frame that arrives until none has for `quiet` seconds."""
    frames: list[str] = []
    while True:
        try:
            frames.append(await asyncio.wait_for(recv(ws), quiet))
        except TimeoutError:
            return frames


async def close_frame_received(ws: Connection) -> Close | None:
    """Read until the server closes; its close frame (None if the TCP connection just died)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 2.0)
    except ConnectionClosed as exc:
        return exc.rcvd


def rejection(frame: str, raw_stream: str | None = None) -> str | None:
    """A strict consumer's verdict on a stream frame (of `raw_stream` when it has no wrapper):
    None if valid, else why it is rejected."""
    if len(frame) > 4096:
        return "oversized"
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return "invalid json"
    data = message.get("data", message)
    stream = message.get("stream", raw_stream)
    if set(data) != set(TRADE_TYPES):
        return "fields"
    if any(type(data[key]) is not kind for key, kind in TRADE_TYPES.items()):
        return "types"
    if data["e"] != "trade":
        return "event"
    if stream is not None and stream != data["s"].lower() + "@trade":
        return "stream"
    if max(data["E"], data["T"]) > time.time_ns() // 1_000_000 + 300_000:
        return "future"
    if TOO_MANY_PLACES.match(data["p"]) or TOO_MANY_PLACES.match(data["q"]):
        return "places"
    if not (EIGHT_DECIMALS.match(data["p"]) and EIGHT_DECIMALS.match(data["q"])):
        return "decimal"
    return None


# -- stream frames ------------------------------------------------------------------------


async def test_combined_stream_frames_carry_exactly_binance_trade_fields(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    before_ms = time.time_ns() // 1_000_000
    async with await subscribe(sim, "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
        sim.emit(3, ["BTCUSDT", "ETHUSDT"])
        frames = [await recv(ws) for _ in range(6)]

    for frame in frames:
        assert rejection(frame) is None
        message = orjson.loads(frame)
        assert list(message) == ["stream", "data"]
        data = message["data"]
        assert list(data) == list(TRADE_TYPES)  # Binance's key order too
        assert message["stream"] == data["s"].lower() + "@trade"
        assert data["e"] == "trade" and data["M"] is True
        assert data["E"] >= data["T"] >= before_ms
        assert Decimal(data["p"]) > 0 and Decimal(data["q"]) > 0
    assert {orjson.loads(f)["data"]["s"] for f in frames} == {"BTCUSDT", "ETHUSDT"}


async def test_raw_stream_sends_the_bare_trade_payload(exchange: StartExchange) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws/solusdt@trade") as ws:
        sim.emit(1, ["SOLUSDT"])
        data = await recv_json(ws)

    assert set(data) == set(TRADE_TYPES)
    assert data["s"] == "SOLUSDT"


async def test_trade_ids_are_contiguous_per_symbol_with_independent_counters(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    target = "/stream?streams=btcusdt@trade/ethusdt@trade/solusdt@trade"
    async with await subscribe(sim, target) as ws:
        sim.emit(40, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        frames = [(await recv_json(ws))["data"] for _ in range(120)]

    ids: dict[str, list[int]] = defaultdict(list)
    for data in frames:
        ids[data["s"]].append(data["t"])
    assert ids == {s: list(range(START, START + 40)) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")}


async def test_prices_follow_a_random_walk_on_the_symbol_tick(exchange: StartExchange) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        sim.emit(200, ["BTCUSDT"])
        prices = [Decimal((await recv_json(ws))["p"]) for _ in range(200)]

    assert len(set(prices)) > 50, "the price moves"
    assert all(p % Decimal("0.01") == 0 for p in prices), "BTCUSDT's tick is 0.01"
    assert max(prices) / min(prices) < Decimal("1.01"), "small steps, no jumps"


# -- live requests ------------------------------------------------------------------------


async def test_live_subscribe_unsubscribe_and_list_subscriptions(exchange: StartExchange) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws") as ws:
        subscribe_both = {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@trade"]}
        assert await request(ws, {**subscribe_both, "id": 1}) == {"result": None, "id": 1}
        sim.emit(1, ["BTCUSDT", "ETHUSDT"])
        assert {(await recv_json(ws))["s"] for _ in range(2)} == {"BTCUSDT", "ETHUSDT"}

        unsubscribe_eth = {"method": "UNSUBSCRIBE", "params": ["ethusdt@trade"], "id": 2}
        assert await request(ws, unsubscribe_eth) == {"result": None, "id": 2}
        listing = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
        assert listing == {"result": ["btcusdt@trade"], "id": 3}

        sim.emit(1, ["ETHUSDT", "BTCUSDT"])  # ETH first: it would arrive first if still routed
        assert (await recv_json(ws))["s"] == "BTCUSDT"
        assert await nothing_arrives(ws)


async def test_bad_requests_get_binance_error_replies(exchange: StartExchange) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws") as ws:
        await ws.send("not json")
        assert (await recv_json(ws))["error"]["code"] == 3

        upper_case = {"method": "SUBSCRIBE", "params": ["BTCUSDT@trade"], "id": 4}
        reply = await request(ws, upper_case)
        assert reply == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}

        reply = await request(ws, {"method": "SUBSCRIBED", "id": 5})
        assert reply["id"] == 5 and reply["error"]["code"] == 2
        assert reply["error"]["msg"].startswith("Invalid request: unknown variant `SUBSCRIBED`")

        reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": [1]})
        assert reply["error"]["code"] == 2 and reply["id"] is None
        assert sim.subscriptions() == [[]]


async def test_set_property_combined_switches_to_the_wrapped_format(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        get_combined = {"method": "GET_PROPERTY", "params": ["combined"], "id": 1}
        assert await request(ws, get_combined) == {"result": False, "id": 1}
        set_combined = {"method": "SET_PROPERTY", "params": ["combined", True], "id": 2}
        assert await request(ws, set_combined) == {"result": None, "id": 2}
        sim.emit(1, ["BTCUSDT"])
        assert (await recv_json(ws))["stream"] == "btcusdt@trade"


async def test_invalid_stream_in_the_url_is_refused_at_handshake(exchange: StartExchange) -> None:
    sim = await exchange()
    with pytest.raises(InvalidStatus) as refused:
        await connect(sim.ws_url + "/ws/BTCUSDT@trade")
    assert refused.value.response.status_code == 400


async def test_server_sends_ping_frames(exchange: StartExchange) -> None:
    sim = await exchange(ping_interval_s=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        first_byte = await asyncio.wait_for(reader.readexactly(1), 2.0)
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 101")
    assert first_byte == b"\x89", "FIN + ping opcode"


# -- REST ---------------------------------------------------------------------------------


async def test_historical_trades_from_id_returns_the_tape_contiguously(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        sim.emit(1200, ["BTCUSDT"])
        streamed = {d["t"]: d for d in [await recv_json(ws) for _ in range(1200)]}

    async with httpx.AsyncClient(base_url=sim.rest_url) as http:

        async def trades(**params: str | int) -> list[dict[str, Any]]:
            response = await http.get("/api/v3/historicalTrades", params=params)
            assert response.status_code == 200
            body: list[dict[str, Any]] = response.json()
            return body

        page = await trades(symbol="BTCUSDT", fromId=START + 100, limit=5)
        capped = await trades(symbol="BTCUSDT", fromId=START, limit=5000)
        default = await trades(symbol="BTCUSDT", fromId=START)
        latest = await trades(symbol="BTCUSDT")

    assert [t["id"] for t in page] == list(range(START + 100, START + 105))
    for trade in page:
        frame = streamed[trade["id"]]
        price, qty = Decimal(trade["price"]), Decimal(trade["qty"])
        assert (trade["price"], trade["qty"]) == (frame["p"], frame["q"])
        assert (trade["time"], trade["isBuyerMaker"]) == (frame["T"], frame["m"])
        assert trade["isBestMatch"] is True
        assert Decimal(trade["quoteQty"]) == (price * qty).quantize(Decimal("1e-8"), ROUND_DOWN)
    assert [t["id"] for t in capped] == list(range(START, START + 1000)), "limit caps at 1000"
    assert len(default) == 500, "limit defaults to 500"
    assert [t["id"] for t in latest] == list(range(START + 700, START + 1200)), "newest 500"


async def test_rest_lag_serves_only_trades_older_than_the_lag(exchange: StartExchange) -> None:
    lag = 0.3
    sim = await exchange(rest_lag_s=lag)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:

        async def ids(path: str, **params: str | int) -> list[int]:
            response = await http.get(path, params={"symbol": "BTCUSDT", **params})
            assert response.status_code == 200
            return [t["id"] for t in response.json()]

        sim.emit(5, ["BTCUSDT"])
        assert await ids("/api/v3/historicalTrades", fromId=START) == []
        assert await ids("/api/v3/trades") == []
        await asyncio.sleep(lag + 0.05)
        sim.emit(3, ["BTCUSDT"])  # on the stream now, not yet on REST
        older = list(range(START, START + 5))
        assert await ids("/api/v3/historicalTrades", fromId=START) == older
        assert await ids("/api/v3/trades", limit=2) == older[-2:], "the newest visible ones"
        await asyncio.sleep(lag + 0.05)
        assert await ids("/api/v3/historicalTrades", fromId=START) == list(range(START, START + 8))
    with pytest.raises(ValueError, match="rest_lag_s"):
        SimulatorConfig(rest_lag_s=-1.0)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbol": "btcusdt"}, -1121),
        ({}, -1102),
        ({"symbol": "BTCUSDT", "limit": "ten"}, -1100),
        ({"symbol": "BTCUSDT", "fromId": "-1"}, -1100),
    ],
)
async def test_historical_trades_rejects_bad_parameters(
    exchange: StartExchange, params: dict[str, str], code: int
) -> None:
    sim = await exchange()
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        response = await http.get("/api/v3/historicalTrades", params=params)
    assert response.status_code == 400
    assert response.json()["code"] == code


async def test_exchange_info_lists_tradable_symbols_and_rejects_unknown(
    exchange: StartExchange,
) -> None:
    sim = await exchange(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:

        async def info(**params: str) -> httpx.Response:
            return await http.get("/api/v3/exchangeInfo", params=params)

        everything = (await info()).json()
        one = (await info(symbol="ETHUSDT")).json()
        two = (await info(symbols='["BTCUSDT","SOLUSDT"]')).json()
        unknown = await info(symbol="NOPEUSDT")
        one_unknown = await info(symbols='["BTCUSDT","NOPEUSDT"]')
        sim.add_listing("PEPEUSDT")
        after_listing = (await info(symbol="PEPEUSDT")).json()
        ping = await http.get("/api/v3/ping")

    btc = everything["symbols"][0]
    assert [s["symbol"] for s in everything["symbols"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert (btc["status"], btc["baseAsset"], btc["quoteAsset"]) == ("TRADING", "BTC", "USDT")
    assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    assert [s["symbol"] for s in two["symbols"]] == ["BTCUSDT", "SOLUSDT"]
    for refused in (unknown, one_unknown):
        assert refused.status_code == 400
        assert refused.json() == {"code": -1121, "msg": "Invalid symbol."}
    assert after_listing["symbols"][0]["status"] == "TRADING"
    assert (ping.status_code, ping.json()) == (200, {})


# -- failure knobs ------------------------------------------------------------------------


async def listed(sim: BinanceSimulator) -> dict[str, str]:
    """exchangeInfo as a client sees it: name → status."""
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        body = (await http.get("/api/v3/exchangeInfo")).json()
    return {entry["symbol"]: entry["status"] for entry in body["symbols"]}


async def test_odd_listings_appear_in_exchange_info_as_trading_without_a_market(
    exchange: StartExchange,
) -> None:
    sim = await exchange(symbols=["BTCUSDT"], odd_listings=list(ODD_LISTINGS))
    sim.add_odd_listing("lateusdt")
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        one = (await http.get("/api/v3/exchangeInfo", params={"symbol": "BTC-USDT"})).json()
        trades = await http.get("/api/v3/trades", params={"symbol": "BTC-USDT"})

    assert await listed(sim) == dict.fromkeys(["BTCUSDT", *ODD_LISTINGS, "lateusdt"], "TRADING")
    assert all(re.fullmatch(r"[A-Z0-9]{2,20}", name) is None for name in ODD_LISTINGS)
    assert len(set(ODD_LISTINGS)) == len(ODD_LISTINGS) >= 8
    assert [entry["symbol"] for entry in one["symbols"]] == ["BTC-USDT"]
    assert trades.json() == {"code": -1121, "msg": "Invalid symbol."}, "nothing trades on it"
    sim.emit(3)
    assert set(sim.trades_emitted()) == {"BTCUSDT"}
    with pytest.raises(ValueError, match="valid symbol"):
        SimulatorConfig(odd_listings=["ETHUSDT"])


async def test_a_delisted_symbol_stops_trading_and_shows_break_or_disappears(
    exchange: StartExchange,
) -> None:
    sim = await exchange(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], rate_per_symbol=200.0)
    await eventually(lambda: all(len(ids) >= 5 for ids in sim.trades_emitted().values()))
    sim.delist("ETHUSDT")
    sim.delist("SOLUSDT", status=None)
    await asyncio.sleep(0.1)  # let a clock tick pass the delisting
    before = sim.trades_emitted()
    await asyncio.sleep(0.3)
    after = sim.trades_emitted()
    sim.emit(5)  # default: the trading symbols only
    statuses = await listed(sim)
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        history = await http.get("/api/v3/trades", params={"symbol": "ETHUSDT", "limit": 5})

    assert statuses == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK"}
    assert sim.trading() == ["BTCUSDT"]
    assert len(after["BTCUSDT"]) > len(before["BTCUSDT"])
    assert after["ETHUSDT"] == before["ETHUSDT"] == sim.trades_emitted()["ETHUSDT"]
    assert after["SOLUSDT"] == before["SOLUSDT"] == sim.trades_emitted()["SOLUSDT"]
    assert len(history.json()) == 5, "its history stays"

    sim.pause()
    last_eth = max(sim.trades_emitted()["ETHUSDT"])
    sim.add_listing("ETHUSDT")  # listed again: trades again, ids continue
    sim.emit(1)
    assert max(sim.trades_emitted()["ETHUSDT"]) == last_eth + 1
    assert (await listed(sim))["ETHUSDT"] == "TRADING"


async def test_listing_changes_over_time_are_applied_by_the_clock(
    exchange: StartExchange,
) -> None:
    changes = [
        ListingChange(0.1, "list", "PEPEUSDT"),
        ListingChange(0.2, "delist", "ETHUSDT"),
        ListingChange(30.0, "delist", "BTCUSDT"),
    ]
    sim = await exchange(symbols=["BTCUSDT", "ETHUSDT"], listing_changes=changes)
    assert await listed(sim) == {"BTCUSDT": "TRADING", "ETHUSDT": "TRADING"}
    await eventually(lambda: sim.listings().get("ETHUSDT") == "BREAK")

    assert await listed(sim) == {"BTCUSDT": "TRADING", "ETHUSDT": "BREAK", "PEPEUSDT": "TRADING"}
    with pytest.raises(ValueError, match="not a Binance symbol"):
        SimulatorConfig(listing_changes=[ListingChange(1.0, "list", "BTC-USDT")])


def test_cli_flags_set_odd_listings_and_listing_changes() -> None:
    config, _, _ = parse_args(
        [
            "--odd-listings",
            "BTC-USDT,btcusdt",
            "--list-at",
            "pepeusdt@5",
            "--delist-at",
            "ETHUSDT@7.5",
        ]
    )
    assert config.odd_listings == ["BTC-USDT", "btcusdt"]
    assert config.listing_changes == [
        ListingChange(5.0, "list", "PEPEUSDT"),
        ListingChange(7.5, "delist", "ETHUSDT"),
    ]
    for bad in (["--list-at", "PEPEUSDT"], ["--delist-at", "ETHUSDT@-1"], ["--list-at", "@3"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


async def test_malformed_frames_are_rejected_by_a_strict_parser(exchange: StartExchange) -> None:
    sim = await exchange(malformed_ratio=1.0)
    async with await subscribe(sim, "/stream?streams=btcusdt@trade") as ws:
        sim.emit(100, ["BTCUSDT"])
        frames = [await recv(ws) for _ in range(100)]

    reasons = {rejection(frame) for frame in frames}
    assert None not in reasons
    # Every kind in MALFORMED_KINDS shows up; truncated and bad_json both read as invalid json.
    assert reasons == {
        *("oversized", "invalid json", "fields", "types", "event", "decimal"),
        *("stream", "future", "places"),
    }
    assert len(sim.trades_emitted()["BTCUSDT"]) == 100, "the trades still happened"


@pytest.mark.parametrize(
    ("kind", "symbol", "changed"),
    [
        ("other_symbol", "BTCUSDT", {"s": "ETHUSDT"}),
        ("other_symbol", "ETHUSDT", {"s": "BTCUSDT"}),
        ("future_time", "SOLUSDT", {"E": YEAR_5000_MS, "T": YEAR_5000_MS}),
        ("excess_decimals", "BTCUSDT", {"p": "65000.1000000000000000000"}),
    ],
)
def test_out_of_bounds_kinds_change_only_their_field(
    kind: str, symbol: str, changed: dict[str, Any]
) -> None:
    market = Market(symbol, 7, 10)
    pending = Pending(market, b"65000.10000000", b"0.00100000", True)
    trade, raw = market.execute(pending, 1_700_000_000_000)
    assert orjson.loads(malform(kind, raw, trade)) == {**orjson.loads(raw), **changed}


async def test_malformed_ratio_corrupts_about_that_share(exchange: StartExchange) -> None:
    sim = await exchange(malformed_ratio=0.25)
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        sim.emit(400, ["BTCUSDT"])
        frames = [await recv(ws) for _ in range(400)]

    rejected = sum(rejection(frame, "btcusdt@trade") is not None for frame in frames)
    assert 60 <= rejected <= 140


async def test_duplicates_are_byte_identical_resends(exchange: StartExchange) -> None:
    sim = await exchange(duplicate_ratio=0.5)
    async with await subscribe(sim, "/ws/ethusdt@trade") as ws:
        sim.emit(200, ["ETHUSDT"])
        frames = await frames_until_quiet(ws)

    ids = [orjson.loads(f)["t"] for f in frames]
    assert sorted(set(ids)) == list(range(START, START + 200))
    assert 60 <= len(frames) - 200 <= 140
    repeated = [i for i in range(1, len(frames)) if ids[i] == ids[i - 1]]
    assert all(frames[i] == frames[i - 1] for i in repeated)
    assert len(repeated) == len(frames) - 200, "a resend follows its original"


async def test_trade_on_subscribe_gives_a_new_connection_a_frame_at_once(
    exchange: StartExchange,
) -> None:
    sim = await exchange(trade_on_subscribe=True)
    async with await subscribe(sim, "/ws/btcusdt@trade") as first:
        assert (await recv_json(first))["t"] == START
        async with await subscribe(sim, "/ws") as second:
            await second.send('{"method":"SUBSCRIBE","params":["ethusdt@trade"],"id":1}')
            trade, reply = await recv_json(second), await recv_json(second)
            assert (trade["s"], reply) == ("ETHUSDT", {"result": None, "id": 1})
            async with await subscribe(sim, "/ws/btcusdt@trade") as third:
                assert (await recv_json(third))["t"] == START + 1
            assert (await recv_json(first))["t"] == START + 1  # a trade like any other
    emitted = sim.trades_emitted()
    assert (emitted["BTCUSDT"], emitted["ETHUSDT"]) == ({START, START + 1}, {START})


@pytest.mark.parametrize("abrupt", [False, True], ids=["close-frame", "tcp-reset"])
async def test_disconnect_all_closes_every_connection(
    exchange: StartExchange, abrupt: bool
) -> None:
    sim = await exchange()
    async with (
        await connect(sim.ws_url + "/ws/btcusdt@trade") as first,
        await connect(sim.ws_url + "/stream?streams=ethusdt@trade") as second,
    ):
        await eventually(lambda: sim.connections == 2)
        await sim.disconnect_all(abrupt=abrupt)
        received = [await close_frame_received(ws) for ws in (first, second)]
    sim.emit(5, ["BTCUSDT"])  # the exchange keeps trading: the clients now have a gap

    if abrupt:
        assert received == [None, None]
    else:
        assert [close.code for close in received if close] == [1001, 1001]
    await eventually(lambda: sim.connections == 0)
    assert len(sim.trades_emitted()["BTCUSDT"]) == 5


async def test_disconnect_every_drops_connections_periodically(exchange: StartExchange) -> None:
    sim = await exchange(disconnect_every_s=0.1)
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        close = await close_frame_received(ws)
    assert close is not None and close.code == 1001


async def test_spamming_client_is_closed_with_policy_violation(exchange: StartExchange) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws") as ws:
        for request_id in range(MAX_MESSAGES_PER_SECOND + 1):
            await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id}).decode())
        close = await close_frame_received(ws)
    assert close is not None and close.code == 1008


async def test_polite_client_within_binance_limit_stays_connected(
    exchange: StartExchange,
) -> None:
    sim = await exchange()
    async with await subscribe(sim, "/ws") as ws:
        for request_id in range(5):  # Binance's documented 5 messages per second
            reply = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": request_id})
            assert reply == {"result": [], "id": request_id}
        assert await nothing_arrives(ws)
        assert sim.connections == 1


async def test_slow_subscriber_is_cut_off_when_its_outbox_overflows(
    exchange: StartExchange,
) -> None:
    sim = await exchange(max_pending_frames=50)
    async with await subscribe(sim, "/ws/btcusdt@trade") as ws:
        sim.emit(100, ["BTCUSDT"])  # all at once: more than the subscriber may have pending
        close = await close_frame_received(ws)
    assert close is not None and close.code == 1013


# -- ground truth and load ----------------------------------------------------------------


async def test_trades_happen_at_the_configured_rate_without_subscribers(
    exchange: StartExchange,
) -> None:
    sim = await exchange(symbols=["BTCUSDT", "ETHUSDT"], rate_per_symbol=100.0)
    await asyncio.sleep(0.5)
    sim.pause()
    counts = {symbol: len(ids) for symbol, ids in sim.trades_emitted().items()}
    await asyncio.sleep(0.1)

    assert all(25 <= n <= 75 for n in counts.values()), counts
    assert {s: len(ids) for s, ids in sim.trades_emitted().items()} == counts, "paused"


async def test_ground_truth_matches_what_a_subscriber_received(exchange: StartExchange) -> None:
    sim = await exchange(symbols=["BTCUSDT", "ETHUSDT"], rate_per_symbol=200.0, burst_every_s=0.1)
    sim.config.burst_size = 10
    sim.pause()
    before = sim.trades_emitted()
    async with await subscribe(sim, "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
        sim.resume()
        await asyncio.sleep(0.3)
        sim.pause()
        happened = {s: ids - before[s] for s, ids in sim.trades_emitted().items()}
        total = sum(len(ids) for ids in happened.values())
        frames = [(await recv_json(ws))["data"] for _ in range(total)]
        assert await nothing_arrives(ws)

    received: dict[str, set[int]] = defaultdict(set)
    for data in frames:
        received[data["s"]].add(data["t"])
    assert total > 100
    assert received == happened


async def test_flood_delivers_prepared_trades_at_the_readers_pace(
    exchange: StartExchange,
) -> None:
    sim = await exchange(
        symbols=["BTCUSDT", "ETHUSDT"], duplicate_ratio=0.05, max_pending_frames=400
    )
    assert sim.prepare(2000) == 4000
    async with await subscribe(sim, "/stream?streams=btcusdt@trade/ethusdt@trade") as ws:
        flood = asyncio.create_task(sim.flood())
        received: dict[str, set[int]] = defaultdict(set)
        frames = 0
        while sum(len(ids) for ids in received.values()) < 4000:
            data = (await recv_json(ws))["data"]
            received[data["s"]].add(data["t"])
            frames += 1
        assert await flood == 4000
        assert sim.connections == 1, "flood() never trips the slow-consumer cut-off"

    assert received == sim.trades_emitted()
    assert frames > 4000, "duplicates were sent"


def test_cli_flags_become_the_simulator_config() -> None:
    flags = ["--port", "9443", "--rate", "20", "--symbols", "btcusdt,ETHUSDT"]
    flags += ["--malformed", "0.01", "--duplicates", "0.05", "--disconnect-every", "30"]
    config, host, port = parse_args(flags)
    assert (host, port) == ("127.0.0.1", 9443)
    assert config.symbols == ["BTCUSDT", "ETHUSDT"]
    assert (config.rate_per_symbol, config.malformed_ratio) == (20.0, 0.01)
    assert (config.duplicate_ratio, config.disconnect_every_s) == (0.05, 30.0)
    with pytest.raises(SystemExit):
        parse_args(["--duplicates", "1.5"])
