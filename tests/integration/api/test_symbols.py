"""POST/GET/DELETE /symbols: validation, access control, exchange checks and live effect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from devtools.simulator import BinanceSimulator, SimulatorConfig
from pipeline.core.settings import Settings
from tests.api_harness import eventually, serve

pytestmark = pytest.mark.integration

KEY = "s3cret-key"


@pytest.fixture
def api_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(PIPELINE_ROLES="none")


@pytest.fixture
async def client(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(api_settings) as client:
        yield client


async def _tracked(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/symbols")
    assert response.status_code == 200
    return [item["symbol"] for item in response.json()["symbols"]]


async def test_symbols_are_added_listed_and_removed_case_insensitively(
    client: httpx.AsyncClient,
) -> None:
    added = await client.post("/symbols", json={"symbol": "adausdt"})
    assert added.status_code == 201, added.text
    assert added.json()["symbol"] == "ADAUSDT"
    assert added.json()["created"] is True
    assert await _tracked(client) == ["ADAUSDT"]

    again = await client.post("/symbols", json={"symbol": "ADAUSDT"})
    assert again.status_code == 200
    assert again.json()["created"] is False

    removed = await client.delete("/symbols/AdaUsdt")
    assert removed.status_code == 204
    assert removed.content == b""
    assert await _tracked(client) == []

    gone = await client.delete("/symbols/ADAUSDT")
    assert gone.status_code == 404
    assert gone.json() == {"detail": "ADAUSDT is not tracked"}


@pytest.mark.parametrize(
    "body",
    [
        {"symbol": "A"},
        {"symbol": "BTC-USDT"},
        {"symbol": "btc usdt"},
        {"symbol": "X" * 21},
        {"symbol": ""},
        {"symbol": 123},
        {"symbol": None},
        {},
        ["BTCUSDT"],
    ],
)
async def test_invalid_symbol_names_are_refused_with_422(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/symbols", json=body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await _tracked(client) == []


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/symbols", content=b'{"symbol": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "detail" in response.json()


async def test_request_bodies_over_the_limit_are_413(
    make_settings: Callable[..., Settings],
) -> None:
    padded = b'{"symbol": "ADAUSDT"' + b" " * 200 + b"}"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(10):
            yield b" " * 50

    async with serve(make_settings(PIPELINE_ROLES="none", API__MAX_BODY_BYTES="128")) as client:
        declared = await client.post(
            "/symbols", content=padded, headers={"content-type": "application/json"}
        )
        streamed = await client.post(
            "/symbols", content=chunked(), headers={"content-type": "application/json"}
        )
        small = await client.post("/symbols", json={"symbol": "ADAUSDT"})
    assert declared.status_code == 413
    assert declared.json() == {"detail": "request body larger than 128 bytes"}
    assert streamed.status_code == 413
    assert streamed.json() == {"detail": "request body larger than 128 bytes"}
    assert small.status_code == 201


async def test_with_api_key_set_mutations_need_the_right_x_api_key(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(PIPELINE_ROLES="none", API_KEY=KEY)
    # Even a loopback client needs the key once API_KEY is set.
    async with serve(settings) as client:
        missing = await client.post("/symbols", json={"symbol": "ADAUSDT"})
        wrong = await client.post(
            "/symbols", json={"symbol": "ADAUSDT"}, headers={"X-API-Key": "nope"}
        )
        non_ascii = await client.post(
            "/symbols", json={"symbol": "ADAUSDT"}, headers={"X-API-Key": "sécret".encode()}
        )
        delete_missing = await client.delete("/symbols/ADAUSDT")
        read = await client.get("/symbols")
        added = await client.post(
            "/symbols", json={"symbol": "ADAUSDT"}, headers={"X-API-Key": KEY}
        )
        removed = await client.delete("/symbols/ADAUSDT", headers={"x-api-key": KEY})
    for refused in (missing, wrong, non_ascii, delete_missing):
        assert refused.status_code == 401, refused.text
        assert refused.json() == {"detail": "missing or invalid X-API-Key header"}
    assert read.status_code == 200
    assert added.status_code == 201
    assert removed.status_code == 204


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "testclient"]
)
async def test_without_api_key_mutations_from_loopback_are_accepted(
    api_settings: Settings, host: str
) -> None:
    async with serve(api_settings, client_host=host) as client:
        added = await client.post("/symbols", json={"symbol": "ADAUSDT"})
        removed = await client.delete("/symbols/ADAUSDT")
    assert added.status_code == 201
    assert removed.status_code == 204


@pytest.mark.parametrize("host", ["203.0.113.7", "10.0.0.2", "2001:db8::1", "localhost.evil"])
async def test_without_api_key_mutations_from_other_hosts_are_403_and_reads_stay_open(
    api_settings: Settings, host: str
) -> None:
    async with serve(api_settings, client_host=host) as client:
        added = await client.post("/symbols", json={"symbol": "ADAUSDT"})
        removed = await client.delete("/symbols/BTCUSDT")
        read = await client.get("/symbols")
    assert added.status_code == 403
    assert "API_KEY" in added.json()["detail"]
    assert removed.status_code == 403
    assert read.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-For": "127.0.0.1"},
        {"x-forwarded-for": "203.0.113.7, 127.0.0.1"},
        {"Forwarded": "for=127.0.0.1;proto=http"},
        {"X-Forwarded-Host": "localhost"},
        {"X-Forwarded-Proto": "https"},
        {"X-Real-IP": "127.0.0.1"},
        {"Via": "1.1 nginx"},
    ],
)
async def test_without_api_key_mutations_through_a_proxy_are_403_even_from_loopback(
    api_settings: Settings, headers: dict[str, str]
) -> None:
    """A proxy on this host makes every client's peer loopback: any forwarding header, even
    one claiming loopback, means the request did not come from a local client directly."""
    async with serve(api_settings) as client:
        added = await client.post("/symbols", json={"symbol": "ADAUSDT"}, headers=headers)
        removed = await client.delete("/symbols/BTCUSDT", headers=headers)
        read = await client.get("/symbols", headers=headers)
        tracked = [item["symbol"] for item in read.json()["symbols"]]
    for refused in (added, removed):
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        assert "Set API_KEY" in detail
        assert "through a proxy" in detail
    assert read.status_code == 200
    assert "ADAUSDT" not in tracked


@pytest.mark.parametrize(
    "host", ["example.com", "203.0.113.7:8000", "localhost.evil", "testserver", "[2001:db8::1]"]
)
async def test_without_api_key_mutations_naming_another_host_are_403(
    api_settings: Settings, host: str
) -> None:
    """A loopback peer whose Host is not loopback: a tunnel or proxy that keeps the public
    name, or a page whose DNS name was rebound to 127.0.0.1."""
    async with serve(api_settings) as client:
        added = await client.post("/symbols", json={"symbol": "ADAUSDT"}, headers={"Host": host})
        removed = await client.delete("/symbols/BTCUSDT", headers={"Host": host})
    for refused in (added, removed):
        assert refused.status_code == 403, refused.text
        assert "Host header" in refused.json()["detail"]
        assert "API_KEY" in refused.json()["detail"]


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:8000", "127.0.0.1:8000", "127.0.0.1", "[::1]:8000", "[::1]"]
)
async def test_without_api_key_mutations_from_a_direct_local_client_are_accepted(
    api_settings: Settings, host: str
) -> None:
    async with serve(api_settings) as client:
        added = await client.post("/symbols", json={"symbol": "ADAUSDT"}, headers={"Host": host})
        removed = await client.delete("/symbols/ADAUSDT", headers={"Host": host})
    assert added.status_code == 201, added.text
    assert removed.status_code == 204, removed.text


async def test_with_api_key_set_the_key_is_what_counts_behind_a_proxy_too(
    make_settings: Callable[..., Settings],
) -> None:
    """With API_KEY the rules are the key's alone: proxied and remote clients with the key
    may change symbols; without it even a direct local client may not."""
    proxied = {"X-Forwarded-For": "203.0.113.7", "Host": "pipeline.example.com"}
    async with serve(make_settings(PIPELINE_ROLES="none", API_KEY=KEY)) as client:
        local_without_key = await client.post("/symbols", json={"symbol": "ADAUSDT"})
        proxied_without_key = await client.post(
            "/symbols", json={"symbol": "ADAUSDT"}, headers=proxied
        )
        added = await client.post(
            "/symbols", json={"symbol": "ADAUSDT"}, headers={**proxied, "X-API-Key": KEY}
        )
        removed = await client.delete("/symbols/ADAUSDT", headers={**proxied, "X-API-Key": KEY})
    assert local_without_key.status_code == proxied_without_key.status_code == 401
    assert added.status_code == 201, added.text
    assert removed.status_code == 204, removed.text


async def test_a_symbol_the_exchange_does_not_list_is_422_and_a_listed_one_is_added(
    make_settings: Callable[..., Settings],
) -> None:
    config = SimulatorConfig(symbols=["BTCUSDT", "ADAUSDT"], rate_per_symbol=1.0)
    async with BinanceSimulator(config, port=0) as simulator:
        settings = make_settings(
            PIPELINE_ROLES="none",
            BINANCE__VERIFY_SYMBOLS="true",
            BINANCE_REST_URL=simulator.rest_url,
        )
        async with serve(settings) as client:
            unlisted = await client.post("/symbols", json={"symbol": "nopeusdt"})
            listed = await client.post("/symbols", json={"symbol": "adausdt"})
            tracked = await _tracked(client)
    assert unlisted.status_code == 422
    assert unlisted.json()["detail"][0]["msg"] == "NOPEUSDT is not listed on the exchange"
    assert listed.status_code == 201
    assert listed.json()["exchange_check"] == "listed"
    assert tracked == ["ADAUSDT"]


async def test_a_symbol_is_added_unverified_when_the_exchange_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        PIPELINE_ROLES="none",
        BINANCE__VERIFY_SYMBOLS="true",
        BINANCE_REST_URL="http://127.0.0.1:1",
        BINANCE__REST_MAX_ATTEMPTS="1",
    )
    async with serve(settings) as client:
        response = await client.post("/symbols", json={"symbol": "ADAUSDT"})
    assert response.status_code == 201, response.text
    assert response.json()["exchange_check"] == "unavailable"
    assert "without verification" in response.json()["detail"]


async def _latest(client: httpx.AsyncClient, symbol: str) -> dict[str, Any] | None:
    response = await client.get(f"/prices/{symbol}")
    return response.json() if response.status_code == 200 else None


async def test_an_added_symbol_streams_into_prices_and_stops_after_removal(
    make_settings: Callable[..., Settings],
) -> None:
    config = SimulatorConfig(symbols=["BTCUSDT", "ADAUSDT"], rate_per_symbol=20.0)
    async with BinanceSimulator(config, port=0) as simulator:
        settings = make_settings(
            PIPELINE_ROLES="producer,consumer",
            SYMBOLS="BTCUSDT",
            BINANCE_WS_URL=simulator.ws_url,
            BINANCE_REST_URL=simulator.rest_url,
        )
        async with serve(settings) as client:
            await eventually(lambda: _latest(client, "BTCUSDT"), 30, "BTCUSDT trades stored")
            assert await _latest(client, "ADAUSDT") is None

            added_at = time.monotonic()
            added = await client.post("/symbols", json={"symbol": "adausdt"})
            assert added.status_code == 201
            await eventually(lambda: _latest(client, "ADAUSDT"), 15, "ADAUSDT trades stored")
            # Registry poll (1 s) + subscribe + Kafka + sink batch: seconds, not minutes.
            assert time.monotonic() - added_at < 10

            status = (await client.get("/pipeline/status")).json()
            assert status["roles"] == ["consumer", "producer"]
            assert {task["state"] for task in status["tasks"]} == {"running"}
            assert status["source"]["symbols"]["ADAUSDT"]["last_trade_id"] is not None
            assert status["counts"]["stored"] > 0
            assert status["gaps"] is not None

            removed = await client.delete("/symbols/ADAUSDT")
            assert removed.status_code == 204

            async def settled() -> int | None:
                before = (await _latest(client, "ADAUSDT") or {}).get("trade_id")
                await client.get("/health")
                subscribed = any("adausdt@trade" in s for s in simulator.subscriptions())
                if subscribed:
                    return None
                await asyncio.sleep(1.5)
                after = (await _latest(client, "ADAUSDT") or {}).get("trade_id")
                return after if after == before else None

            last_ada = await eventually(settled, 15, "ADAUSDT unsubscribed and drained")
            btc_before = (await _latest(client, "BTCUSDT") or {})["trade_id"]
            await asyncio.sleep(2.0)
            assert (await _latest(client, "ADAUSDT") or {})["trade_id"] == last_ada
            assert (await _latest(client, "BTCUSDT") or {})["trade_id"] > btc_before

            # A burst, then the consumer catches up: lag back to 0, every trade stored.
            simulator.pause()
            simulator.emit(500, ["BTCUSDT"])
            newest = max(simulator.trades_emitted()["BTCUSDT"])

            async def caught_up() -> dict[str, Any] | None:
                lag = (await client.get("/consumer/lag")).json()
                latest = await _latest(client, "BTCUSDT")
                done = lag["total_lag"] == 0 and latest and latest["trade_id"] == newest
                return lag if done else None

            lag = await eventually(caught_up, 30, "consumer lag back to 0 after a burst")
            assert lag["partitions"] and all(p["lag"] == 0 for p in lag["partitions"])
