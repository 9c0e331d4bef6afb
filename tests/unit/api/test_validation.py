"""Pure validation logic of the API: symbols, access control, error classification."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from api.errors import is_database_outage
from api.schemas import PipelineStatusOut, SymbolIn
from api.security import is_loopback, key_matches


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


def test_unreachable_postgresql_is_an_outage_but_a_bad_query_is_not() -> None:
    assert is_database_outage(ConnectionRefusedError(111, "refused"))
    assert is_database_outage(TimeoutError())
    assert is_database_outage(OperationalError("SELECT 1", {}, Exception("gone")))

    class ShuttingDown(Exception):
        sqlstate = "57P01"

    assert is_database_outage(DBAPIError("SELECT 1", {}, ShuttingDown()))
    assert not is_database_outage(IntegrityError("INSERT", {}, Exception("duplicate")))
    assert not is_database_outage(ValueError("bug"))


def test_pipeline_status_adds_the_end_to_end_counts() -> None:
    status = {
        "roles": ["consumer"],
        "uptime_s": 1.5,
        "tasks": [
            {
                "name": "consumer",
                "state": "running",
                "restarts": 0,
                "last_error": None,
                "since": 1.0,
            }
        ],
        "consumer": {
            "assigned": [0, 1, 2],
            "consumed": 10,
            "stored": 9,
            "duplicates": 0,
            "dead_letters": 1,
            "batches": 2,
            "sink_up": True,
            "last_error": None,
            "last_commit_at": None,
        },
    }
    shaped = PipelineStatusOut.from_status(status)
    assert shaped.counts.model_dump() == {
        "received": None,
        "produced": None,
        "stored": 9,
        "dead_letters": 1,
    }
    assert shaped.gaps is None and shaped.source is None
