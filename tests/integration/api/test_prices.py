"""GET /prices…: latest trades, history pages and candles, read from real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.reads import trades
from api.reads.cursor import Cursor
from api.schemas.prices import CandleOut, CandlesOut, LatestPricesOut, TradeOut, TradePageOut
from devtools.stack import LocalPostgres
from pipeline.core.settings import Settings
from pipeline.storage.tables import tracked_symbols
from tests.api_harness import eventually, insert_trades, serve, trade_row

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000  # epoch ms


@pytest.fixture
async def client(make_settings: Callable[..., Settings]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_settings(PIPELINE_ROLES="none")) as client:
        yield client


async def track(engine: AsyncEngine, *symbols: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(tracked_symbols), [{"symbol": s, "source": "test"} for s in symbols]
        )


async def test_latest_price_is_the_newest_trade_with_exact_decimal_strings(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_trades(
        engine,
        [
            trade_row("BTCUSDT", 1, T0, price="67000.10000000"),
            trade_row("BTCUSDT", 3, T0 + 20, price="0.00000010", quantity="123456789.12345678"),
            trade_row("BTCUSDT", 2, T0 + 10, price="67000.30000000"),
        ],
    )
    response = await client.get("/prices/btcusdt")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "symbol": "BTCUSDT",
        "trade_id": 3,
        "price": "0.00000010",
        "quantity": "123456789.12345678",
        "is_buyer_maker": False,
        "event_time": T0 + 21,
        "trade_time": T0 + 20,
        "processed_at": T0 + 25,
    }


async def test_latest_price_body_is_the_stored_row_as_compact_json_in_model_field_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_trades(
        engine,
        [
            trade_row("ETHUSDT", 2**53 + 1, T0, price="3456.7", quantity="0.000000000000000001"),
            trade_row("ETHUSDT", 9, T0 - 1, price="1"),
        ],
    )
    async with engine.connect() as connection:
        stored = (
            await connection.execute(
                text(
                    "SELECT symbol, trade_id, price::text, quantity::text, is_buyer_maker, "
                    "event_time, trade_time, processed_at FROM crypto_prices "
                    "WHERE symbol = 'ETHUSDT' AND trade_id = :id"
                ),
                {"id": 2**53 + 1},
            )
        ).one()
    response = await client.get("/prices/ethusdt")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    # Exactly the bytes FastAPI's response_model serialisation produced for the same row.
    expected = TradeOut.model_validate(dict(zip(TradeOut.model_fields, stored, strict=True)))
    assert response.content == expected.model_dump_json().encode()
    assert response.content == (
        b'{"symbol":"ETHUSDT","trade_id":9007199254740993,"price":"3456.7",'
        b'"quantity":"0.000000000000000001","is_buyer_maker":false,'
        b'"event_time":1764000000001,"trade_time":1764000000000,"processed_at":1764000000005}'
    )


async def test_a_kept_answer_is_sent_exactly_as_the_first_answer_was(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_trades(engine, [trade_row("BTCUSDT", 7, T0, price="67000.10000000")])
    fetched = await client.get("/prices/BTCUSDT")  # asks PostgreSQL, and keeps the answer
    kept = await client.get("/prices/BTCUSDT")
    assert kept.status_code == fetched.status_code == 200
    assert kept.headers == fetched.headers
    assert kept.content == fetched.content
    # Every spelling and request shape the route takes gets the same answer.
    for response in (
        await client.get("/prices/btcusdt"),
        await client.request("GET", "/prices/BTCUSDT", content=b"x" * 10),
    ):
        assert response.status_code == 200
        assert response.headers == fetched.headers
        assert response.content == fetched.content
    assert (await client.head("/prices/BTCUSDT")).status_code == 405  # the routes are GET only
    assert (await client.get("/prices/BTCUSDT/history")).status_code == 200


async def test_latest_price_is_never_older_than_latest_cache_ms(
    make_settings: Callable[..., Settings], engine: AsyncEngine
) -> None:
    ttl_s = 1.0
    settings = make_settings(PIPELINE_ROLES="none", API__LATEST_CACHE_MS=str(int(ttl_s * 1000)))
    async with serve(settings) as client:
        await insert_trades(engine, [trade_row("BTCUSDT", 1, T0)])
        asked = time.monotonic()
        assert (await client.get("/prices/BTCUSDT")).json()["trade_id"] == 1
        await insert_trades(engine, [trade_row("BTCUSDT", 2, T0 + 1)])
        inserted = time.monotonic()
        reused = (await client.get("/prices/BTCUSDT")).json()["trade_id"]
        if time.monotonic() < asked + ttl_s:  # answered while the first answer was fresh
            assert reused == 1
        await asyncio.sleep(max(inserted + ttl_s - time.monotonic(), 0))
        # Every answer now was fetched after the second trade was committed.
        assert (await client.get("/prices/BTCUSDT")).json()["trade_id"] == 2


async def test_every_prices_body_has_its_response_models_fields_in_order(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """The reads encode rows as they come from SQL: column names and order are the contract."""
    await track(engine, "BTCUSDT")
    await insert_trades(engine, [trade_row("BTCUSDT", i, T0 + i * 1000) for i in range(1, 4)])
    trade_fields = list(TradeOut.model_fields)

    latest = (await client.get("/prices/BTCUSDT")).json()
    every = (await client.get("/prices")).json()
    page = (await client.get("/prices/BTCUSDT/history", params={"limit": 2})).json()
    candles = (await client.get("/prices/BTCUSDT/candles", params={"interval": "1s"})).json()

    assert list(latest) == trade_fields
    assert list(every) == list(LatestPricesOut.model_fields)
    assert [list(item) for item in every["items"]] == [trade_fields]
    assert list(page) == list(TradePageOut.model_fields)
    assert [list(item) for item in page["items"]] == [trade_fields] * 2
    assert list(candles) == list(CandlesOut.model_fields)
    assert [list(item) for item in candles["items"]] == [list(CandleOut.model_fields)] * 3
    for body, model in (
        (latest, TradeOut),
        (every, LatestPricesOut),
        (page, TradePageOut),
        (candles, CandlesOut),
    ):
        model.model_validate(body)


async def test_prices_openapi_documents_the_response_models(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    expected = {
        "/prices": "LatestPricesOut",
        "/prices/{symbol}": "TradeOut",
        "/prices/{symbol}/history": "TradePageOut",
        "/prices/{symbol}/candles": "CandlesOut",
    }
    for path, model in expected.items():
        operation = paths[path]["get"]
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema == {"$ref": f"#/components/schemas/{model}"}, path
        assert operation["responses"]["503"]["description"] == (
            "PostgreSQL unavailable, or the read took longer than `api.read_timeout_ms` "
            "(5 s by default) and was cancelled"
        )
        assert [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"] == (
            ["symbol"] if "{symbol}" in path else []
        )


async def test_latest_price_is_404_for_unknown_symbols_and_symbols_without_trades(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await track(engine, "ADAUSDT")
    unknown = await client.get("/prices/XRPUSDT")
    waiting = await client.get("/prices/ADAUSDT")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "XRPUSDT is not tracked and has no trades"}
    assert waiting.status_code == 404
    assert waiting.json() == {"detail": "ADAUSDT is tracked but has no trades yet"}


async def test_prices_lists_the_latest_trade_of_each_tracked_symbol(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await track(engine, "BTCUSDT", "ETHUSDT", "SOLUSDT")
    await insert_trades(
        engine,
        [
            trade_row("BTCUSDT", 10, T0, price="1.5"),
            trade_row("BTCUSDT", 11, T0 + 1, price="2.5"),
            trade_row("ETHUSDT", 7, T0 + 5, price="3.25"),
            trade_row("DOGEUSDT", 1, T0 + 9, price="0.1"),  # stored but no longer tracked
        ],
    )
    response = await client.get("/prices")
    assert response.status_code == 200
    latest = {
        item["symbol"]: (item["trade_id"], item["price"]) for item in response.json()["items"]
    }
    assert latest == {"BTCUSDT": (11, "2.5"), "ETHUSDT": (7, "3.25")}


async def test_history_pagination_walks_every_row_exactly_once_newest_first(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rng = random.Random(7)
    # Several trades share a millisecond: the cursor must break ties by trade id.
    rows = [trade_row("ETHUSDT", i, T0 + i // 4 + rng.randint(0, 2)) for i in range(1, 251)]
    rows.append(trade_row("BTCUSDT", 5, T0 + 10))
    await insert_trades(engine, rows)
    start, end = T0 + 5, T0 + 55
    expected = sorted(
        ((r["trade_time"], r["trade_id"]) for r in rows if r["symbol"] == "ETHUSDT"),
        reverse=True,
    )
    expected = [key for key in expected if start <= key[0] <= end]

    seen: list[tuple[int, int]] = []
    params: dict[str, Any] = {"start": start, "end": end, "limit": 37}
    pages = 0
    while True:
        response = await client.get("/prices/ethusdt/history", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["items"]) <= 37
        seen.extend((item["trade_time"], item["trade_id"]) for item in page["items"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected
    assert pages == -(-len(expected) // 37)


async def test_history_without_a_range_returns_the_newest_trades(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await insert_trades(engine, [trade_row("SOLUSDT", i, T0 + i) for i in range(1, 6)])
    response = await client.get("/prices/SOLUSDT/history", params={"limit": 2})
    page = response.json()
    assert [item["trade_id"] for item in page["items"]] == [5, 4]
    assert Cursor.decode(page["next_cursor"]) == Cursor(T0 + 4, 4)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/prices/BTCUSDT/history", {"cursor": "not-a-cursor"}),
        ("/prices/BTCUSDT/history", {"cursor": "YSxi"}),  # base64 of "a,b"
        ("/prices/BTCUSDT/history", {"cursor": Cursor(10**14, 1).encode()}),
        ("/prices/BTCUSDT/history", {"cursor": "x" * 65}),
        ("/prices/BTCUSDT/history", {"start": T0 + 1, "end": T0}),
        ("/prices/BTCUSDT/history", {"limit": 0}),
        ("/prices/BTCUSDT/history", {"limit": 1001}),
        ("/prices/BTCUSDT/history", {"start": -1}),
        ("/prices/BTCUSDT/history", {"end": 10**19}),
        ("/prices/BTCUSDT/history", {"start": "yesterday"}),
        ("/prices/BTCUSDT/candles", {"interval": "2m"}),
        ("/prices/BTCUSDT/candles", {"start": T0 + 1, "end": T0}),
        ("/prices/BTCUSDT/candles", {"limit": 5000}),
        ("/prices/B", {}),
        ("/prices/BTC-USDT", {}),
        ("/prices/" + "A" * 21, {}),
    ],
)
async def test_invalid_read_parameters_are_422_with_a_detail(
    client: httpx.AsyncClient, path: str, params: dict[str, Any]
) -> None:
    response = await client.get(path, params=params)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def _ohlcv(rows: list[dict[str, Any]], interval_ms: int) -> list[dict[str, Any]]:
    """The reference: candles computed in Python, newest bucket first."""
    buckets: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        buckets.setdefault(row["trade_time"] - row["trade_time"] % interval_ms, []).append(row)
    candles = []
    for start in sorted(buckets, reverse=True):
        in_order = sorted(buckets[start], key=lambda r: (r["trade_time"], r["trade_id"]))
        candles.append(
            {
                "open_time": start,
                "close_time": start + interval_ms - 1,
                "open": in_order[0]["price"],
                "high": max(t["price"] for t in in_order),
                "low": min(t["price"] for t in in_order),
                "close": in_order[-1]["price"],
                "volume": sum(t["quantity"] for t in in_order),
                "trades": len(in_order),
            }
        )
    return candles


def _as_decimals(candle: dict[str, Any]) -> dict[str, Any]:
    return {
        key: Decimal(value) if key in {"open", "high", "low", "close", "volume"} else value
        for key, value in candle.items()
    }


async def test_candles_match_ohlcv_computed_in_python(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    rng = random.Random(42)
    base = T0 - T0 % 60_000
    rows = []
    for trade_id in range(1, 401):
        # ~7 minutes of trades, shuffled ids vs times, with ties in the same millisecond
        trade_time = base + rng.randrange(0, 7 * 60_000, 250)
        price = f"{rng.randint(9_000, 11_000) / 100:.2f}"
        quantity = f"{rng.randint(1, 10_000) / 1000:.3f}"
        rows.append(trade_row("BTCUSDT", trade_id, trade_time, price=price, quantity=quantity))
    await insert_trades(engine, rows)
    decimal_rows = [
        {**r, "price": Decimal(r["price"]), "quantity": Decimal(r["quantity"])} for r in rows
    ]

    for interval, interval_ms in (("1m", 60_000), ("5m", 300_000), ("1s", 1_000)):
        response = await client.get(
            "/prices/btcusdt/candles",
            params={"interval": interval, "start": base, "end": base + 7 * 60_000, "limit": 1000},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["symbol"] == "BTCUSDT" and body["interval"] == interval
        got = [_as_decimals(candle) for candle in body["items"]]
        assert got == _ohlcv(decimal_rows, interval_ms)


async def test_candles_without_start_cover_the_last_limit_intervals_up_to_the_latest_trade(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    base = T0 - T0 % 60_000
    await insert_trades(engine, [trade_row("ETHUSDT", m, base + m * 60_000) for m in range(10)])
    response = await client.get("/prices/ETHUSDT/candles", params={"interval": "1m", "limit": 3})
    assert [c["open_time"] for c in response.json()["items"]] == [
        base + 9 * 60_000,
        base + 8 * 60_000,
        base + 7 * 60_000,
    ]
    empty = await client.get("/prices/XRPUSDT/candles")
    assert empty.status_code == 200
    assert empty.json()["items"] == []


@pytest.mark.parametrize(
    ("interval", "span_ms", "limit_text"),
    [
        ("1s", 6 * 3_600_000, "1s candles cover at most 6 h (21600000 ms) per request"),
        ("1m", 7 * 86_400_000, "1m candles cover at most 7 days (604800000 ms) per request"),
        ("1d", 5 * 366 * 86_400_000, "1d candles cover at most 1830 days"),
    ],
)
async def test_candles_over_a_range_wider_than_the_intervals_bound_are_422_naming_it(
    client: httpx.AsyncClient, engine: AsyncEngine, interval: str, span_ms: int, limit_text: str
) -> None:
    await insert_trades(engine, [trade_row("BTCUSDT", 1, T0)])
    path = "/prices/BTCUSDT/candles"
    widest = await client.get(path, params={"interval": interval, "start": T0 - span_ms, "end": T0})
    assert widest.status_code == 200, widest.text
    assert [c["trades"] for c in widest.json()["items"]] == [1]

    wider = await client.get(
        path, params={"interval": interval, "start": T0 - span_ms - 1, "end": T0}
    )
    assert wider.status_code == 422, wider.text
    (error,) = wider.json()["detail"]
    assert error["loc"] == ["query", "start"]
    assert error["msg"].startswith(limit_text), error["msg"]
    # Without `end`, the range ends at the latest trade: the same bound holds.
    open_ended = await client.get(path, params={"interval": interval, "start": T0 - span_ms - 1})
    assert open_ended.status_code == 422, open_ended.text
    assert "before the latest trade" in open_ended.json()["detail"][0]["msg"]


async def test_candles_without_a_range_cover_a_bounded_recent_window(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    """A symbol with a long history: the default window is the last `limit` seconds of 1s
    candles up to the latest trade, not everything since the first trade."""
    await insert_trades(
        engine, [trade_row("BTCUSDT", 1, T0 - 30 * 86_400_000), trade_row("BTCUSDT", 2, T0)]
    )
    response = await client.get("/prices/BTCUSDT/candles", params={"interval": "1s"})
    assert response.status_code == 200, response.text
    assert [c["open_time"] for c in response.json()["items"]] == [T0 - T0 % 1000]


async def _many_trades(engine: AsyncEngine, symbol: str, count: int, t0: int) -> None:
    """`count` trades of `symbol`, 10 ms apart from `t0` (inserted by PostgreSQL itself)."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                """
                INSERT INTO crypto_prices
                SELECT :symbol, g, 100 + (g % 1000) / 100.0, 1,
                       t0 + g * 10 + 1, t0 + g * 10, g % 2 = 0, t0 + g * 10 + 5
                FROM generate_series(1, :count) AS g, CAST(:t0 AS bigint) AS t0
                """
            ),
            {"symbol": symbol, "count": count, "t0": t0},
        )
        await connection.execute(text("ANALYZE crypto_prices"))


SLOW_ROWS = 300_000  # 50 minutes of trades, 10 ms apart: 1s candles of all of them take long


async def test_a_read_past_read_timeout_ms_is_cancelled_and_answered_503_not_500(
    make_settings: Callable[..., Settings], engine: AsyncEngine
) -> None:
    await _many_trades(engine, "BTCUSDT", SLOW_ROWS, T0)
    settings = make_settings(PIPELINE_ROLES="none", API__READ_TIMEOUT_MS="50")
    every = {"interval": "1s", "start": T0, "end": T0 + SLOW_ROWS * 10, "limit": 1000}
    async with serve(settings) as client:
        slow = await client.get("/prices/BTCUSDT/candles", params=every)
        # The connection is fine afterwards, and a small read still answers.
        small = {"interval": "1s", "start": T0, "end": T0 + 5_000}
        quick = await client.get("/prices/BTCUSDT/candles", params=small)
        latest = await client.get("/prices/BTCUSDT")
    assert slow.status_code == 503, slow.text
    assert slow.headers["retry-after"] == "1"
    assert slow.json() == {
        "detail": "the read took longer than 50 ms (api.read_timeout_ms) and was cancelled; "
        "narrow the time range, or retry later"
    }
    assert quick.status_code == 200, quick.text
    assert sum(c["trades"] for c in quick.json()["items"]) == 500
    assert latest.status_code == 200


async def test_range_reads_cannot_take_the_connections_of_the_latest_price_reads(
    make_settings: Callable[..., Settings], engine: AsyncEngine
) -> None:
    """However many slow candles requests arrive, they share api.range_pool_size connections
    and GET /prices/{symbol} keeps its own pool: it answers while they are all still busy."""
    await _many_trades(engine, "BTCUSDT", SLOW_ROWS, T0)
    settings = make_settings(
        PIPELINE_ROLES="none", API__LATEST_CACHE_MS="0", API__READ_TIMEOUT_MS="60000"
    )
    every = {"interval": "1s", "start": T0, "end": T0 + SLOW_ROWS * 10, "limit": 1000}
    async with serve(settings) as client:
        await client.get("/prices/BTCUSDT")  # the latest-price pool is open and warm
        slow = [
            asyncio.create_task(client.get("/prices/BTCUSDT/candles", params=every))
            for _ in range(settings.database.pool_size + 3)
        ]
        # Ask for the latest price as soon as the candles reads hold every range connection
        # (seen by the server), not after a fixed delay: on a quiet machine one of them can
        # finish within any delay long enough for a loaded one.
        await _until_reads_running(settings, settings.api.range_pool_size)
        latest = await client.get("/prices/BTCUSDT")
        still_busy = sum(not task.done() for task in slow)
        answers = await asyncio.gather(*slow)
    assert latest.status_code == 200
    assert latest.json()["trade_id"] == SLOW_ROWS
    assert still_busy == len(slow), "the candles requests were too quick to tell"
    assert {answer.status_code for answer in answers} == {200}


async def _until_reads_running(settings: Settings, count: int) -> None:
    """Wait until `count` other statements on crypto_prices are running in the database."""
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        async with asyncio.timeout(30):
            while True:
                running = await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                    " AND pid <> pg_backend_pid() AND datname = current_database()"
                    " AND query LIKE '%crypto_prices%'"
                )
                if running >= count:
                    return
                await asyncio.sleep(0.005)
    finally:
        await connection.close()


async def _generic_plan(settings: Settings, sql: str, args: str) -> str:
    """The plan of `sql` as a cached prepared statement may end up using it: the generic plan."""
    connection = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        await connection.execute(f"PREPARE q AS {sql}")
        plan = await connection.fetch(f"EXPLAIN EXECUTE q({args})" if args else "EXPLAIN EXECUTE q")
        return "\n".join(row[0] for row in plan)
    finally:
        await connection.close()


async def test_price_reads_use_the_symbol_trade_time_index_on_a_large_table(
    engine: AsyncEngine, settings: Settings
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                """
                INSERT INTO crypto_prices
                SELECT 'SYM' || (g % 20), g, 100 + (g % 1000) / 100.0, 1,
                       t0 + g * 10 + 1, t0 + g * 10, g % 2 = 0, t0 + g * 10 + 5
                FROM generate_series(1, 200000) AS g, CAST(:t0 AS bigint) AS t0
                """
            ),
            {"t0": T0},
        )
        await connection.execute(
            insert(tracked_symbols), [{"symbol": f"SYM{i}", "source": "test"} for i in range(20)]
        )
        await connection.execute(text("ANALYZE crypto_prices"))
        await connection.execute(text("ANALYZE tracked_symbols"))

    index = "Index Scan using ix_crypto_prices_symbol_trade_time on crypto_prices"
    latest = await _generic_plan(settings, trades.LATEST_TRADE, "'SYM7'")
    assert index in latest, latest
    assert "Seq Scan" not in latest, latest

    every = await _generic_plan(settings, trades.LATEST_TRADES, "")
    assert index in every, every
    assert "Seq Scan on crypto_prices" not in every, every

    sql, args = trades.history("SYM7", T0, T0 + 10**6, Cursor(T0 + 500_000, 49_987), 101)
    page = await _generic_plan(settings, sql, ", ".join(repr(arg) for arg in args))
    assert index in page, page
    assert "Seq Scan" not in page, page

    newest = await _generic_plan(settings, trades.NEWEST_TRADE_TIME, "'SYM7'")
    assert index in newest, newest


# -- PostgreSQL outage: the reads' own pool answers 503, then recovers ----------------------


PRICE_READS = (
    "/prices/BTCUSDT",
    "/prices",
    "/prices/BTCUSDT/history",
    "/prices/BTCUSDT/candles",
    "/prices/XRPUSDT",  # the 404 path's second query
)


async def _statuses(client: httpx.AsyncClient) -> list[int]:
    return [(await client.get(path)).status_code for path in PRICE_READS]


async def test_price_reads_are_503_while_postgresql_is_down_and_recover_after(
    make_settings: Callable[..., Settings], own_postgres: LocalPostgres
) -> None:
    settings = make_settings(PIPELINE_ROLES="none", DATABASE_URL=own_postgres.url)
    async with serve(settings) as client:
        connection = await asyncpg.connect(settings.database.asyncpg_dsn)
        try:
            await connection.execute(
                "INSERT INTO crypto_prices VALUES ('BTCUSDT', 1, 1.5, 2, $1, $1, true, $1)", T0
            )
        finally:
            await connection.close()
        # The pool's connections get used (and stay open) before the outage.
        await asyncio.gather(*(client.get("/prices/BTCUSDT") for _ in range(20)))
        assert await _statuses(client) == [200, 200, 200, 200, 404]

        await asyncio.to_thread(own_postgres.stop, "fast")
        # A latest answer may be reused for up to latest_cache_ms by design; past that every
        # read needs the database.
        await asyncio.sleep(settings.api.latest_cache_ms / 1000)
        for path in PRICE_READS:
            response = await client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.json() == {"detail": "PostgreSQL is unavailable; retry later"}
            assert response.headers["retry-after"] == "1"

        await asyncio.to_thread(own_postgres.start)

        async def recovered() -> bool | None:
            return True if await _statuses(client) == [200, 200, 200, 200, 404] else None

        await eventually(recovered, 15, "price reads answer again")
        for _ in range(3):  # no broken connection left in the pool
            assert await _statuses(client) == [200, 200, 200, 200, 404]
        latest = orjson.loads((await client.get("/prices/BTCUSDT")).content)
        assert (latest["trade_id"], latest["price"], latest["quantity"]) == (1, "1.5", "2")
