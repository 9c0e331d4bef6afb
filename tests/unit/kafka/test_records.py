"""row_from_kafka (msgspec) accepts and rejects exactly what TradeEvent does, with the same values.

TradeEvent is the contract: for every record value in the corpus, the fast decoder either
returns the very row `TradeEvent.model_validate_json(value).as_row()` returns (same Decimal
digits and exponent, not just equal numbers), or raises InvalidTrade with pydantic's reason.
Both get the same "now" (LATEST, now plus the allowed clock skew), never the clock's.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from pipeline.core.errors import InvalidTrade
from pipeline.core.trade_checks import DEFAULT_MAX_CLOCK_SKEW_MS, EARLIEST_TRADE_MS
from pipeline.core.trades import LATEST_MS, Row, TradeEvent, trade_from_kafka
from pipeline.kafka import records as kafka_rows
from pipeline.kafka.records import row_from_kafka

VALID = {
    "symbol": "BTCUSDT",
    "trade_id": 4_200_000_001,
    "price": "37123.45000000",
    "quantity": "0.00120000",
    "event_time": 1_700_000_000_123,
    "trade_time": 1_700_000_000_120,
    "is_buyer_maker": True,
    "processed_at": 1_700_000_000_200,
}
# The consumer's clock a few minutes after the record was written, plus the allowed skew.
LATEST = 1_700_000_300_000 + DEFAULT_MAX_CLOCK_SKEW_MS
YEAR_5000_MS = 95_617_584_000_000


def _record(**changes: Any) -> bytes:
    fields = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in fields.items() if v is not _MISSING})


def _raw(text: str) -> bytes:
    return text.encode()


_MISSING = object()
_BIG = "1" + "0" * 30  # beyond 64 bits: orjson cannot write it, so the records are spelled out

CORPUS: list[bytes | None] = [
    # valid, in the shapes to_kafka_value writes
    _record(),
    _record(
        is_buyer_maker=False,
        trade_id=0,
        event_time=EARLIEST_TRADE_MS,
        trade_time=EARLIEST_TRADE_MS,
        processed_at=EARLIEST_TRADE_MS,
    ),
    _record(event_time=LATEST, trade_time=LATEST, processed_at=LATEST),  # the latest accepted
    _record(trade_time=EARLIEST_TRADE_MS + 1, processed_at=1_514_764_800_000),  # a 2018 replay
    _record(price="0.00000001", quantity="1E-8"),
    _record(price="1E+3", quantity="123456789.123456789"),
    _record(symbol="1INCHUSDT"),
    _record(symbol="AB"),
    _record(symbol="A" * 20),
    _record(trade_id=2**63 - 1),  # the largest bigint
    _record(extra="ignored", nested={"a": [1, 2]}),
    _raw(" \n" + orjson.dumps(VALID).decode() + "\n "),
    # valid, but spelled in ways only TradeEvent knows (the slow path)
    orjson.dumps(
        {"s": "BTCUSDT", "t": 1, "p": "1", "q": "2", "m": True}
        | {"E": 1_700_000_000_001, "T": 1_700_000_000_000, "processed_at": 1_700_000_000_002}
    ),
    _record(s="ETHUSDT"),  # both names: the field's own name wins, as in AliasChoices
    _record(price=" 1.5"),
    _record(price="1.5\n"),
    _record(price="1_000"),
    _record(price="+1"),
    _record(price=".5"),
    _record(price="5."),
    _record(price="\u0661"),  # ARABIC-INDIC DIGIT ONE: Decimal() reads it
    _record(price="0000000000000000000000000000001.5"),  # long, but one place
    # valid: the bounds of a price or quantity
    _record(price="99999999999999999999.999999999999999999"),  # below 1e20, 18 places
    _record(quantity="0.000000000000000001"),
    _record(price="1.000000000000000000"),
    _record(price="1E-18", quantity="1.5E-17"),
    _record(price="9.9E+19", quantity="1E+19"),
    _raw(orjson.dumps(VALID).decode()[:-1] + f',"trade_id":{_BIG}}}'),
    _raw(orjson.dumps(VALID).decode().replace('"trade_id":4200000001', f'"trade_id":{_BIG}')),
    _raw(orjson.dumps(VALID).decode()[:-1] + ',"symbol":"ETHUSDT"}'),  # duplicate key
    _raw(orjson.dumps(VALID).decode().replace("BTCUSDT", "BTC\\u0055SDT")),  # escaped
    # invalid: not a JSON object
    None,
    b"",
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"\x00not json",
    b"\xff\xfe{}",
    b"\xef\xbb\xbf" + orjson.dumps(VALID),  # BOM
    orjson.dumps(VALID) + b"x",
    orjson.dumps(VALID)[:-1],
    b"{}",
    # invalid: missing or null fields
    *(_record(**{field: _MISSING}) for field in VALID),
    *(_record(**{field: None}) for field in VALID),
    # invalid: symbol
    _record(symbol="btcusdt"),
    _record(symbol="B"),
    _record(symbol="A" * 21),
    _record(symbol="BTCUSDT\n"),
    _record(symbol="BTC-USDT"),
    _record(symbol="\uff22\uff34\uff23"),  # fullwidth letters
    _record(symbol="BTC\u0130"),
    _record(symbol=123),
    # invalid: trade_id
    _record(trade_id=2**63),  # beyond the bigint column (2**63 - 1, valid, is above)
    _record(trade_id=2**64 - 1),
    _record(trade_id=-1),
    _record(trade_id=1.0),
    _record(trade_id=1.5),
    _record(trade_id="1"),
    _record(trade_id=True),
    _raw(orjson.dumps(VALID).decode().replace('"trade_id":4200000001', '"trade_id":1e3')),
    _raw(orjson.dumps(VALID).decode().replace('"trade_id":4200000001', f'"trade_id":-{_BIG}')),
    # invalid: prices and quantities
    _record(price=1.5),
    _record(price=2),
    _record(price="0"),
    _record(price="0.0"),
    _record(price="-0"),
    _record(price="-1.5"),
    _record(quantity="0E-8"),
    _record(price="NaN"),
    _record(price="nan"),
    _record(price="sNaN"),
    _record(price="Infinity"),
    _record(price="-inf"),
    _record(price="1e1000000"),  # finite as a Decimal, not as a float: TradeEvent says no
    _record(price="1.8e308"),
    _record(price=""),
    _record(price="1,5"),
    _record(price="0x10"),
    _record(price="1.5.1"),
    _record(price=True),
    _record(price=["1"]),
    _raw(orjson.dumps(VALID).decode().replace('"37123.45000000"', "NaN")),
    _raw(orjson.dumps(VALID).decode().replace('"37123.45000000"', "Infinity")),
    # invalid: prices and quantities beyond the table's NUMERIC(38, 18) bounds
    _record(price="1e-1000000"),
    _record(price="1E-20000"),  # a scale no NUMERIC holds: PostgreSQL would reject the batch
    _record(quantity="1E-19"),
    _record(price="1.5E-18"),
    _record(quantity="0.0000000000000000001"),  # 19 places
    _record(price="1.0000000000000000000"),  # 19 places, although a whole number
    _record(price="1.5" + "0" * 40),
    _record(price="1E+20"),
    _record(price="100000000000000000000"),
    _record(price="99999999999999999999.9999999999999999999"),
    _record(price="9.99e299"),
    _record(price="1e300"),
    _record(price="1.7976931348623157e308"),  # the largest finite float
    _raw(orjson.dumps(VALID).decode().replace('"37123.45000000"', "1E-20000")),
    # invalid: times before 2017-07-01 or after now plus the allowed skew
    _record(event_time=0, trade_time=0, processed_at=0),
    _record(trade_time=EARLIEST_TRADE_MS - 1),
    _record(event_time=EARLIEST_TRADE_MS - 86_400_000),  # 2017-06-30
    _record(processed_at=EARLIEST_TRADE_MS - 1),
    _record(event_time=LATEST + 1),
    _record(trade_time=LATEST + 1_000),
    _record(processed_at=LATEST + 1),
    _record(event_time=YEAR_5000_MS, trade_time=YEAR_5000_MS),
    _record(event_time=10**14 - 1),
    # invalid: epoch millis
    _record(event_time=-1),
    _record(trade_time=10**14),
    _record(processed_at=1.0),
    _record(processed_at="1"),
    _record(event_time=False),
    _raw(orjson.dumps(VALID).decode().replace("1700000000200", _BIG)),
    # invalid: is_buyer_maker
    _record(is_buyer_maker=1),
    _record(is_buyer_maker=0),
    _record(is_buyer_maker="true"),
    _record(is_buyer_maker="True"),
]


def _pydantic(value: bytes | None) -> Row | None:
    """TradeEvent's verdict: the row, or None for a rejected value."""
    if value is None:
        return None
    try:
        return TradeEvent.model_validate_json(value, context={LATEST_MS: LATEST}).as_row()
    except ValidationError:
        return None


def _exact(row: Row | None) -> tuple[Any, ...] | None:
    """The row with each Decimal as its digits and exponent (1.50 is not 1.5 in a NUMERIC)."""
    if row is None:
        return None
    return tuple((type(v), v.as_tuple()) if isinstance(v, Decimal) else (type(v), v) for v in row)


def _fast(value: bytes | None) -> Row | None:
    try:
        return row_from_kafka(value, LATEST)
    except InvalidTrade:
        return None


@pytest.mark.parametrize("value", CORPUS)
def test_fast_decoder_agrees_with_trade_event(value: bytes | None) -> None:
    assert _exact(_fast(value)) == _exact(_pydantic(value))


@pytest.mark.parametrize("value", CORPUS)
def test_fast_path_alone_accepts_nothing_trade_event_rejects(
    value: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the pydantic fallback, what msgspec accepts must still be what TradeEvent returns.
    def no_fallback(value: bytes | None, latest_ms: int | None = None) -> TradeEvent:
        raise InvalidTrade("rejected by the fast path")

    monkeypatch.setattr(kafka_rows, "trade_from_kafka", no_fallback)
    fast = _fast(value)
    if fast is not None:
        assert _exact(fast) == _exact(_pydantic(value))


def test_records_written_by_to_kafka_value_take_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_fallback(value: bytes | None, latest_ms: int | None = None) -> TradeEvent:
        raise AssertionError(f"slow path taken for {value!r}")

    monkeypatch.setattr(kafka_rows, "trade_from_kafka", no_fallback)
    prices = ("37123.45000000", "0.00000001", "1E-8", "100", "1.0E+3", "1.23456789012345678")
    for price in prices:
        event = TradeEvent.model_validate({**VALID, "price": price, "quantity": price})
        assert _exact(row_from_kafka(event.to_kafka_value(), LATEST)) == _exact(event.as_row())


NOT_UTF8 = orjson.dumps(VALID).replace(b"BTCUSDT", b"BTC\xe9USDT")


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"\x00not json",
        b"null",
        _record(price="NaN"),
        _record(symbol="btc"),
        NOT_UTF8,
        _record(price="1E-20000"),
        _record(quantity="1E+20"),
        _record(trade_time=YEAR_5000_MS),
        _record(event_time=EARLIEST_TRADE_MS - 1),
    ],
)
def test_poison_record_carries_trade_events_reason(value: bytes | None) -> None:
    # The consumer dead-letters it with this reason.
    with pytest.raises(InvalidTrade) as slow:
        trade_from_kafka(value, LATEST)
    with pytest.raises(InvalidTrade, match=f"^{re.escape(str(slow.value))}$"):
        row_from_kafka(value, LATEST)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_record(price="1E-20000"), "price: Decimal input should have no more than 18 digits"),
        (_record(price="1.0000000000000000000"), "price: Decimal input should have no more"),
        (_record(quantity="1E+20"), "quantity: Input should be less than 1E+20"),
        (_record(trade_time=YEAR_5000_MS), f"trade_time: Input should be at most {LATEST}"),
        (_record(processed_at=LATEST + 1), f"processed_at: Input should be at most {LATEST}"),
        (_record(event_time=EARLIEST_TRADE_MS - 1), "event_time: Input should be greater than"),
    ],
)
def test_a_record_out_of_bounds_is_poison_with_the_reason(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidTrade, match=f"^{re.escape(reason)}"):
        row_from_kafka(value, LATEST)


def test_a_replay_of_old_records_passes_and_the_future_bound_is_the_callers_now() -> None:
    old = _record(event_time=1_514_764_800_123, trade_time=1_514_764_800_120)  # 2018
    assert row_from_kafka(old, LATEST)[4:6] == (1_514_764_800_123, 1_514_764_800_120)
    ahead = _record(trade_time=LATEST + 1)
    with pytest.raises(InvalidTrade, match="trade_time"):
        row_from_kafka(ahead, LATEST)
    assert row_from_kafka(ahead, LATEST + 1)[5] == LATEST + 1
    # Without a latest: the wall clock plus the default skew.
    assert row_from_kafka(_record())[5] == VALID["trade_time"]
    with pytest.raises(InvalidTrade, match="trade_time"):
        row_from_kafka(_record(trade_time=YEAR_5000_MS))
