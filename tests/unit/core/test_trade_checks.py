"""trade_from_binance's fast path (pipeline.trade_checks, no pydantic) agrees with TradeEvent.

For every Binance trade payload in the corpus, trade_from_binance either returns the very event
`TradeEvent.model_validate` returns for it (same values, same Decimal digits, same model state),
or raises InvalidTrade with pydantic's reason. And trade_from_frame, the whole-frame msgspec
path in front of it, returns either None (not its to judge) or that same event.

"Now" is given, never read from the clock: every check here gets the same LATEST (now plus the
default clock skew), and the corpus holds the values either side of it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
import pydantic
import pytest

from pipeline.core import trades as models
from pipeline.core.errors import InvalidTrade
from pipeline.core.trade_checks import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    EARLIEST_TRADE_MS,
    positive_decimal,
    trade_stream,
)
from pipeline.core.trades import LATEST_MS, TradeEvent, trade_from_binance, trade_from_frame
from pipeline.exchange.connection import stream_name
from tests.factories import BINANCE_TRADE as FRAME

PROCESSED_AT = 1_700_000_000_200
LATEST = PROCESSED_AT + DEFAULT_MAX_CLOCK_SKEW_MS  # now plus the allowed skew
YEAR_5000_MS = 95_617_584_000_000
_MISSING = object()
_STRINGS = ["", "x", "1", "BTCUSDT", "btcusdt", "BTCUSDT\n", " 1.5", "1_0", "+1", ".5", "5."]
_NUMBERS_AS_TEXT = ["0", "-0", "0.0", "-1", "1E-8", "1e300", "9.99e299", "1.8e308", "1e-400"]
_SPECIAL = ["NaN", "nan", "sNaN", "-NaN", "Infinity", "-inf", "0x10", "1,5", "\u0661", "1e999999"]
# Around the bounds of a price or quantity: below 1e20, at most 18 digits after the point.
_DECIMALS = [
    "1E+20",
    "1e20",
    "100000000000000000000",
    "99999999999999999999.999999999999999999",  # the largest: 20 + 18 digits
    "99999999999999999999.9999999999999999999",
    "1E+19",
    "9.9E+19",
    "0.000000000000000001",  # 18 places
    "0.0000000000000000001",  # 19
    "1.000000000000000000",
    "1.0000000000000000000",  # 19 places, although a whole number
    "1E-18",
    "1E-19",
    "1.5E-17",
    "1.5E-18",
    "15E-19",
    "1E-20000",  # a scale no NUMERIC holds
    "1.5e3",
    "0.00000001",
    "000000000000000000000000000001.5",  # long, but one place
    "1.50000000000000000" + "0" * 30,
]
_TIMES = [
    EARLIEST_TRADE_MS - 86_400_000,  # 2017-06-30
    EARLIEST_TRADE_MS - 1,
    EARLIEST_TRADE_MS,  # 2017-07-01T00:00:00Z
    LATEST - 1_000,
    LATEST,
    LATEST + 1,
    LATEST + 1_000,
    YEAR_5000_MS,
]
_OTHERS: list[Any] = [
    *[None, True, False, 0, 1, -1, 1.0, 1.5, 2**63, 2**63 - 1, 10**14, 10**14 - 1, [], {}]
]
VARIANTS: dict[str, list[Any]] = {
    key: [_MISSING, *_STRINGS, *_NUMBERS_AS_TEXT, *_SPECIAL, *_DECIMALS, *_TIMES, *_OTHERS]
    for key in ("s", "t", "p", "q", "E", "T", "m")
}
VARIANTS["s"] += [
    "AB",
    "A" * 20,
    "A" * 21,
    "1INCHUSDT",
    "BTC-USDT",
    "\uff22\uff34\uff23",
    "BTC\u0130",
]
PAYLOADS = [FRAME] + [
    {**{k: v for k, v in FRAME.items() if k != key}, **({} if value is _MISSING else {key: value})}
    for key, values in VARIANTS.items()
    for value in values
]


def _pydantic(data: dict[str, Any], processed_at: Any, latest: int = LATEST) -> TradeEvent | str:
    """What TradeEvent alone makes of the payload: the event, or the reason it is refused."""
    fields = dict(zip(("symbol", "trade_id", "price", "quantity"), "stpq", strict=True))
    fields |= {"event_time": "E", "trade_time": "T", "is_buyer_maker": "m"}
    try:
        return TradeEvent.model_validate(
            {name: data.get(key) for name, key in fields.items()} | {"processed_at": processed_at},
            context={LATEST_MS: latest},
        )
    except pydantic.ValidationError as exc:
        return models._reason(exc)


def _fast(data: dict[str, Any], processed_at: Any, latest: int = LATEST) -> TradeEvent | str:
    try:
        return trade_from_binance(data, processed_at, latest)
    except InvalidTrade as exc:
        return str(exc)


def _state(result: TradeEvent | str) -> Any:
    """Everything about an event that could differ: field values with their types and Decimal
    digits, and pydantic's own bookkeeping."""
    if isinstance(result, str):
        return result
    return (
        {
            name: (type(v), v.as_tuple() if isinstance(v, Decimal) else v)
            for name, v in vars(result).items()
        },
        result.model_fields_set,
        result.__pydantic_extra__,
        result.__pydantic_private__,
        result.to_kafka_value(),
        result.model_dump_json(),
        repr(result),
        hash(result),
    )


@pytest.mark.parametrize("payload", PAYLOADS, ids=repr)
def test_fast_path_agrees_with_trade_event(payload: dict[str, Any]) -> None:
    assert _state(_fast(payload, PROCESSED_AT)) == _state(_pydantic(payload, PROCESSED_AT))


@pytest.mark.parametrize(
    "processed_at",
    [0, 10**14 - 1, 10**14, -1, 1.0, True, "1", None, *_TIMES, PROCESSED_AT],
)
def test_processed_at_is_checked_like_trade_event(processed_at: Any) -> None:
    assert _state(_fast(FRAME, processed_at)) == _state(_pydantic(FRAME, processed_at))


@pytest.mark.parametrize("latest", [0, EARLIEST_TRADE_MS, FRAME["T"], FRAME["E"], 10**14, 10**15])
def test_every_latest_is_applied_like_trade_event(latest: int) -> None:
    for payload in (FRAME, {**FRAME, "E": 10**14 - 1}):
        fast = _fast(payload, PROCESSED_AT, latest)
        assert _state(fast) == _state(_pydantic(payload, PROCESSED_AT, latest))
        raw = _combined(payload)
        frame = trade_from_frame(raw, PROCESSED_AT, latest)
        assert frame is None or _state(frame) == _state(fast)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"T": EARLIEST_TRADE_MS - 1}, "trade_time: Input should be greater than or equal to"),
        ({"E": YEAR_5000_MS}, f"event_time: Input should be at most {LATEST}"),
        ({"E": LATEST + 1}, f"event_time: Input should be at most {LATEST}"),
        ({"p": "1E+20"}, "price: Input should be less than 1E+20"),
        ({"q": "0.0000000000000000001"}, "quantity: Decimal input should have no more than 18"),
        ({"p": "1E-20000"}, "price: Decimal input should have no more than 18 digits"),
    ],
)
def test_values_out_of_bounds_are_invalid_with_the_reason(
    change: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidTrade, match=f"^{re.escape(reason)}"):
        trade_from_binance({**FRAME, **change}, PROCESSED_AT, LATEST)
    assert trade_from_frame(_combined({**FRAME, **change}), PROCESSED_AT, LATEST) is None


def test_the_bounds_themselves_are_valid() -> None:
    bounds = {"E": LATEST, "T": EARLIEST_TRADE_MS, "p": "99999999999999999999.999999999999999999"}
    bounds["q"] = "0.000000000000000001"
    event = trade_from_binance({**FRAME, **bounds}, PROCESSED_AT, LATEST)
    assert (event.event_time, event.trade_time) == (LATEST, EARLIEST_TRADE_MS)
    assert (str(event.price), str(event.quantity)) == (bounds["p"], "1E-18")
    assert trade_from_frame(_combined({**FRAME, **bounds}), PROCESSED_AT, LATEST) == event


def test_without_a_latest_the_bound_is_processed_at_plus_the_default_skew() -> None:
    ahead = PROCESSED_AT + DEFAULT_MAX_CLOCK_SKEW_MS
    assert trade_from_binance({**FRAME, "E": ahead}, PROCESSED_AT).event_time == ahead
    with pytest.raises(InvalidTrade, match="event_time: Input should be at most"):
        trade_from_binance({**FRAME, "E": ahead + 1}, PROCESSED_AT)


def test_trade_event_without_a_context_is_bounded_by_the_wall_clock() -> None:
    fields = {**FRAME, "processed_at": PROCESSED_AT}
    assert TradeEvent.model_validate(fields).event_time == FRAME["E"]
    with pytest.raises(pydantic.ValidationError, match="now plus the allowed clock skew"):
        TradeEvent.model_validate({**fields, "T": YEAR_5000_MS})


@pytest.mark.parametrize("text", [*_DECIMALS, *_NUMBERS_AS_TEXT, *_STRINGS, *_SPECIAL])
def test_positive_decimal_takes_at_most_18_places_as_written(text: str) -> None:
    number = positive_decimal(text)
    if number is not None:
        exponent = number.as_tuple().exponent
        assert isinstance(exponent, int) and exponent >= -18
        assert Decimal(0) < number < Decimal("1E+20")
        assert number.as_tuple() == Decimal(text).as_tuple()


def test_valid_payload_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pydantic(*args: Any, **kwargs: Any) -> TradeEvent:
        raise AssertionError("pydantic validation on the fast path")

    monkeypatch.setattr(TradeEvent, "model_validate", no_pydantic)
    event = trade_from_binance(FRAME, PROCESSED_AT)
    assert event.price == Decimal("37123.45000000")


def test_fast_event_behaves_like_a_validated_one() -> None:
    fast = trade_from_binance(FRAME, PROCESSED_AT)
    validated = _pydantic(FRAME, PROCESSED_AT)
    assert fast == validated and validated == fast
    assert {fast, validated} == {fast}
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        fast.price = Decimal(1)  # type: ignore[misc]
    copy = fast.model_copy(update={"trade_id": 5})
    assert (copy.trade_id, copy.price, fast.trade_id) == (5, fast.price, FRAME["t"])
    assert TradeEvent.model_validate_json(fast.to_kafka_value()) == fast


def _combined(payload: Any, stream: Any = "btcusdt@trade") -> bytes:
    return orjson.dumps({"stream": stream, "data": payload})


_VALID = _combined(FRAME).decode()
# Valid frames spelled unusually: a key twice (the last one counts), an escape, whitespace.
UNUSUAL_VALID = [
    _VALID.replace('"p":', '"p":"1.5","p":').encode(),
    _VALID.replace('"BTCUSDT"', '"\\u0042TCUSDT"').encode(),
    _VALID.replace(":", " : ").replace(",", " ,\n ").encode(),
]
RAW_FRAMES = [
    *(_combined(payload) for payload in PAYLOADS),
    *UNUSUAL_VALID,
    _VALID.replace('"data":', '"data":{"e":"trade"},"data":').encode(),
    _VALID.replace('"e":"trade"', '"e":"aggTrade"').encode(),
    _VALID.replace('"m":true', '"m":1').encode(),
    _VALID.replace('"E":1700000000123', '"E":1700000000123.0').encode(),
    _VALID.replace('"E":1700000000123', '"E":1.700000000123e12').encode(),
    _VALID.replace('"t":4200000001', '"t":9223372036854775808').encode(),
    _VALID.encode() + b" x",  # trailing garbage
    _VALID.encode()[:-1],  # truncated
    _VALID.replace("BTCUSDT", "BTC\xe9USDT").encode("latin-1"),  # not UTF-8
    orjson.dumps(FRAME),  # a raw-stream frame: no wrapper
    # another market's trade under this stream's name, or a stream name spelled otherwise
    _combined(FRAME, "ethusdt@trade"),
    _combined(FRAME, "BTCUSDT@trade"),
    _combined(FRAME, "btcusdt"),
    _combined(FRAME, "btcusdt@aggTrade"),
    _combined(FRAME, None),
    orjson.dumps({"data": FRAME}),
    orjson.dumps({"data": FRAME, "stream": "btcusdt@trade"}),  # the keys in another order
    b'{"result":null,"id":3}',
    b"[]",
    b"",
]


def _general(raw: bytes) -> TradeEvent | str:
    """What the source's general path makes of a frame: the event, or why it is refused."""
    try:
        message = orjson.loads(raw)
        data = message["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "not a combined frame"
    event = _fast(data, PROCESSED_AT)
    if isinstance(event, TradeEvent) and message.get("stream") != trade_stream(event.symbol):
        return "symbol does not match stream"
    return event


@pytest.mark.parametrize("raw", RAW_FRAMES, ids=repr)
def test_frame_path_accepts_only_what_the_general_path_accepts_with_the_same_event(
    raw: bytes,
) -> None:
    fast = trade_from_frame(raw, PROCESSED_AT, LATEST)
    assert fast is None or _state(fast) == _state(_general(raw))


def test_usual_frames_take_the_frame_path() -> None:
    usual = [
        _combined(FRAME),
        _combined({**FRAME, "p": "1E-8", "q": "100"}),
        _combined({**FRAME, "s": "1INCHUSDT"}, "1inchusdt@trade"),
        orjson.dumps({"data": FRAME, "stream": "btcusdt@trade"}),
        *UNUSUAL_VALID,
    ]
    assert all(isinstance(_general(raw), TradeEvent) for raw in usual)
    assert all(trade_from_frame(raw, PROCESSED_AT, LATEST) is not None for raw in usual)


@pytest.mark.parametrize("stream", ["ethusdt@trade", "BTCUSDT@trade", "btcusdt", None])
def test_a_trade_not_of_its_stream_is_not_taken_by_the_frame_path(stream: Any) -> None:
    assert trade_from_frame(_combined(FRAME, stream), PROCESSED_AT, LATEST) is None
    assert _general(_combined(FRAME, stream)) == "symbol does not match stream"


@pytest.mark.parametrize("symbol", ["BTCUSDT", "1INCHUSDT", "AB", "A" * 20])
def test_trade_stream_is_the_stream_the_source_subscribes_to(symbol: str) -> None:
    assert trade_stream(symbol) == stream_name(symbol)


@pytest.mark.parametrize("processed_at", [0, 10**14 - 1, 10**14, -1, *_TIMES])
def test_frame_path_checks_processed_at_like_trade_event(processed_at: int) -> None:
    fast = trade_from_frame(_combined(FRAME), processed_at, LATEST)
    assert fast is None or _state(fast) == _state(_pydantic(FRAME, processed_at))
    assert (fast is None) == isinstance(_pydantic(FRAME, processed_at), str)


def test_a_trade_id_beyond_the_bigint_column_is_an_invalid_trade() -> None:
    assert trade_from_binance({**FRAME, "t": 2**63 - 1}, PROCESSED_AT).trade_id == 2**63 - 1
    with pytest.raises(InvalidTrade, match="trade_id"):
        trade_from_binance({**FRAME, "t": 2**63}, PROCESSED_AT)
