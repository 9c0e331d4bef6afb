"""ExchangeClient: the REST calls behind backfill and symbol checks, and how it survives errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from pipeline.core.settings import BinanceSettings
from pipeline.exchange.client import ExchangeClient, ExchangeError, ExchangeUnavailable, Listings

Handler = Callable[[httpx.Request], httpx.Response]


def answers(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A transport handler replaying `responses` in order, and the requests it saw."""
    seen: list[httpx.Request] = []
    queue: Iterator[httpx.Response | Exception] = iter(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


@asynccontextmanager
async def client(handler: Handler, **settings: Any):  # type: ignore[no-untyped-def]
    exchange = ExchangeClient(
        BinanceSettings(rest_url="http://exchange.test", **settings),
        transport=httpx.MockTransport(handler),
        retry_backoff_s=(0.01, 0.02),
    )
    async with exchange:
        yield exchange


def trades(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i, "price": "1.0", "qty": "2.0", "time": 1, "isBuyerMaker": True} for i in ids]


async def test_historical_trades_asks_from_id_with_limit_and_upper_case_symbol() -> None:
    handle, seen = answers(httpx.Response(200, json=trades(5, 6)))
    async with client(handle) as exchange:
        assert await exchange.historical_trades("btcusdt", 5, limit=2) == trades(5, 6)
    [request] = seen
    assert request.url.path == "/api/v3/historicalTrades"
    assert dict(request.url.params) == {"symbol": "BTCUSDT", "limit": "2", "fromId": "5"}


async def test_historical_trades_without_from_id_asks_for_the_newest() -> None:
    handle, seen = answers(httpx.Response(200, json=[]))
    async with client(handle) as exchange:
        await exchange.historical_trades("BTCUSDT", None)
    assert "fromId" not in seen[0].url.params
    assert seen[0].url.params["limit"] == "1000"


async def test_server_errors_and_network_errors_are_retried_with_backoff() -> None:
    handle, seen = answers(
        httpx.Response(502),
        httpx.ConnectError("refused"),
        httpx.Response(200, text="{truncated"),
        httpx.Response(200, json=trades(1)),
    )
    async with client(handle) as exchange:
        assert await exchange.historical_trades("BTCUSDT", 1) == trades(1)
    assert len(seen) == 4


async def test_rate_limit_waits_for_retry_after_before_asking_again() -> None:
    handle, seen = answers(
        httpx.Response(429, headers={"Retry-After": "0.3"}, json={"code": -1003, "msg": "slow"}),
        httpx.Response(200, json=trades(1)),
    )
    started = time.monotonic()
    async with client(handle) as exchange:
        await exchange.historical_trades("BTCUSDT", 1)
    assert time.monotonic() - started >= 0.3
    assert len(seen) == 2


async def test_a_long_ban_is_reported_instead_of_waited_out() -> None:
    handle, seen = answers(httpx.Response(418, headers={"Retry-After": "7200"}))
    async with client(handle) as exchange:
        with pytest.raises(ExchangeUnavailable) as raised:
            await exchange.historical_trades("BTCUSDT", 1)
    assert raised.value.retry_after == 7200
    assert len(seen) == 1


async def test_gives_up_after_max_attempts_with_exchange_unavailable() -> None:
    handle, seen = answers(*[httpx.Response(503)] * 3)
    async with client(handle, rest_max_attempts=3) as exchange:
        with pytest.raises(ExchangeUnavailable, match="after 3 attempts: HTTP 503"):
            await exchange.historical_trades("BTCUSDT", 1)
    assert len(seen) == 3


async def test_client_errors_are_not_retried() -> None:
    handle, seen = answers(httpx.Response(400, json={"code": -1100, "msg": "Illegal characters"}))
    async with client(handle) as exchange:
        with pytest.raises(ExchangeError, match="-1100: Illegal characters") as raised:
            await exchange.historical_trades("BTCUSDT", 1)
    assert raised.value.code == -1100
    assert len(seen) == 1


async def test_used_weight_at_our_limit_pauses_until_the_next_minute() -> None:
    handle, _ = answers(httpx.Response(200, json=[], headers={"x-mbx-used-weight-1m": "3000"}))
    async with client(handle) as exchange:
        await exchange.historical_trades("BTCUSDT", 1)
        delay = exchange._budget.reserve(1)
    assert 0 < delay <= 60


async def test_listings_hold_only_symbols_in_trading_status() -> None:
    info = {
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING"},
            {"symbol": "OLDUSDT", "status": "BREAK"},
            {"symbol": "ETHUSDT", "status": "TRADING"},
        ]
    }
    handle, seen = answers(httpx.Response(200, json=info))
    async with client(handle) as exchange:
        listings = await exchange.listings()
    assert listings == Listings(frozenset({"BTCUSDT", "ETHUSDT"}), skipped=0, listed=3)
    assert seen[0].url.path == "/api/v3/exchangeInfo"


def skipped_total(origin: str) -> float:
    return REGISTRY.get_sample_value("pipeline_symbols_skipped_total", {"origin": origin}) or 0.0


ODD_NAMES: list[object] = [
    "BTC-USDT",
    "btcusdt",
    "ÄBCUSDT",
    "X",
    "A" * 21,
    "ETH USDT",
    "",
    "BAD\nNAME",
    "ETHUSDT\n",
    123,
    None,
    ["BTCUSDT"],
    {"name": "BTCUSDT"},
    "Z" * 10_000,
]


async def test_listed_names_that_are_not_symbols_are_skipped_and_reported_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = {
        "symbols": [
            {"symbol": "BTCUSDT", "status": "TRADING"},
            *({"symbol": name, "status": "TRADING"} for name in ODD_NAMES),
            {"status": "TRADING"},  # no name at all
            {"symbol": "BAD-ONE", "status": "BREAK"},  # not trading: not even looked at
        ]
    }
    handle, _ = answers(*[httpx.Response(200, json=info)] * 3)
    before = skipped_total("exchange")
    with caplog.at_level(logging.WARNING, logger="pipeline.core.symbol_names"):
        async with client(handle) as exchange:
            answers_seen = [await exchange.listings() for _ in range(3)]
    reported = [r.getMessage() for r in caplog.records if "symbol skipped" in r.getMessage()]
    assert all(a.trading == {"BTCUSDT"} for a in answers_seen)
    assert all(a.skipped == len(ODD_NAMES) + 1 for a in answers_seen)
    # Over three polls, each odd name once (the entry without a name is None again).
    assert len(reported) == len(ODD_NAMES)
    assert skipped_total("exchange") - before == len(ODD_NAMES)
    assert all("\n" not in line and len(line) < 200 for line in reported)


@pytest.mark.parametrize(
    "body", [{}, {"symbols": None}, {"symbols": "BTCUSDT"}, [], "exchangeInfo"]
)
async def test_an_exchange_info_without_a_symbols_list_is_an_error_not_an_empty_market(
    body: object,
) -> None:
    handle, _ = answers(httpx.Response(200, json=body))
    async with client(handle) as exchange:
        with pytest.raises(ExchangeError, match="without a symbols list"):
            await exchange.listings()


async def test_symbol_exists_is_false_for_invalid_symbol_code() -> None:
    handle, seen = answers(
        httpx.Response(200, json={"symbols": [{"symbol": "BTCUSDT", "status": "TRADING"}]}),
        httpx.Response(400, json={"code": -1121, "msg": "Invalid symbol."}),
    )
    async with client(handle) as exchange:
        assert await exchange.symbol_exists("btcusdt") is True
        assert await exchange.symbol_exists("NOPEUSDT") is False
    assert seen[1].url.params["symbol"] == "NOPEUSDT"
