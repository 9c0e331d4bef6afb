"""Pure validation logic of the API: symbols, access control.

Which database errors answer 503: tests/unit/storage/test_outage.py."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from api.schemas.symbols import SymbolIn
from api.security import is_loopback, is_loopback_host_header, key_matches


@pytest.mark.parametrize(
    ("given", "stored"),
    [("adausdt", "ADAUSDT"), ("BtcUsdt", "BTCUSDT"), ("1INCHUSDT", "1INCHUSDT")],
)
def test_symbols_are_case_insensitive_on_input_and_upper_case_after(
    given: str, stored: str
) -> None:
    assert SymbolIn(symbol=given).symbol == stored


@pytest.mark.parametrize(
    "bad", ["A", "BTC-USDT", " BTCUSDT", "BTCUSDT\n", "X" * 21, "", "ÄBC", "btc usdt"]
)
def test_symbols_outside_the_binance_shape_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        SymbolIn(symbol=bad)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1", "testclient"]
)
def test_loopback_clients_are_recognised(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    [None, "", "10.0.0.1", "192.168.1.5", "::ffff:10.0.0.1", "2001:db8::1", "localhost", "unix"],
)
def test_other_clients_are_not_loopback(host: str | None) -> None:
    assert not is_loopback(host)


def test_api_keys_match_exactly_and_odd_header_values_simply_do_not() -> None:
    key = SecretStr("s3cret")
    assert key_matches("s3cret", key)
    assert not key_matches(None, key)
    assert not key_matches("s3cret ", key)
    assert not key_matches("S3CRET", key)
    assert not key_matches("sécret\udcff", key)


@pytest.mark.parametrize(
    "host", ["localhost", "LocalHost:8000", "127.0.0.1", "127.0.0.1:8000", "[::1]", "[::1]:80"]
)
def test_loopback_host_headers_are_recognised(host: str) -> None:
    assert is_loopback_host_header(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "testserver",
        "example.com",
        "localhost.evil",
        "localhost.evil:8000",
        "10.0.0.1:8000",
        "::1",
        "[::1]x",
        "127.0.0.1:http",
        "localhost:80:80",
        "[2001:db8::1]:80",
    ],
)
def test_other_host_headers_are_not_loopback(host: str | None) -> None:
    assert not is_loopback_host_header(host)
