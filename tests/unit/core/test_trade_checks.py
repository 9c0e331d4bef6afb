"""trade_from_binance's fast path (pipeline.trade_checks, no pydantic) agrees with TradeEvent.

For every Binance trade payload in the corpus, trade_from_binance either returns the very event
`TradeEvent.model_validate` returns for it (same values, same Decimal digits, same model state),
or raises InvalidTrade with pydantic's reason. And trade_from_frame, the whole-frame msgspec
path in front of it, returns either None (not its to judge) or that same event.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pydantic
import pytest

from pipeline.core import trades as models
from pipeline.core.errors import InvalidTrade
from pipeline.core.trades import TradeEvent, trade_from_binance, trade_from_frame
from tests.factories import BINANCE_TRADE as FRAME

PROCESSED_AT = 1_700_000_000_200
_MISSING = object()
_STRINGS = ["", "x", "1", "BTCUSDT", "btcusdt", "BTCUSDT\n", " 1.5", "1_0", "+1", ".5", "5."]
_NUMBERS_AS_TEXT = ["0", "-0", "0.0", "-1", "1E-8", "1e300", "9.99e299", "1.8e308", "1e-400"]
_SPECIAL = ["NaN", "nan", "sNaN", "-NaN", "Infinity", "-inf", "0x10", "1,5", "\u0661", "1e999999"]
_OTHERS: list[Any] = [
    *[None, True, False, 0, 1, -1, 1.0, 1.5, 2**63, 2**63 - 1, 10**14, 10**14 - 1, [], {}]
]
VARIANTS: dict[str, list[Any]] = {
    key: [_MISSING, *_STRINGS, *_NUMBERS_AS_TEXT, *_SPECIAL, *_OTHERS]
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


def _pydantic(data: dict[str, Any], processed_at: Any) -> TradeEvent | str:
    """What TradeEvent alone makes of the payload: the event, or the reason it is refused."""
    fields = dict(zip(("symbol", "trade_id", "price", "quantity"), "stpq", strict=True))
    fields |= {"event_time": "E", "trade_time": "T", "is_buyer_maker": "m"}
    try:
        return TradeEvent.model_validate(
            {name: data.get(key) for name, key in fields.items()} | {"processed_at": processed_at}
        )
    except pydantic.ValidationError as exc:
        return models._reason(exc)


def _fast(data: dict[str, Any], processed_at: Any) -> TradeEvent | str:
    try:
        return trade_from_binance(data, processed_at)
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


@pytest.mark.parametrize("processed_at", [0, 10**14 - 1, 10**14, -1, 1.0, True, "1", None])
def test_processed_at_is_checked_like_trade_event(processed_at: Any) -> None:
    assert _state(_fast(FRAME, processed_at)) == _state(_pydantic(FRAME, processed_at))


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


def _combined(payload: Any) -> bytes:
    return orjson.dumps({"stream": "btcusdt@trade", "data": payload})


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
    b'{"result":null,"id":3}',
    b"[]",
    b"",
]


def _general(raw: bytes) -> TradeEvent | str:
    """What the source's general path makes of a frame: the event, or why it is refused."""
    try:
        data = orjson.loads(raw)["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "not a combined frame"
    return _fast(data, PROCESSED_AT)


@pytest.mark.parametrize("raw", RAW_FRAMES, ids=repr)
def test_frame_path_accepts_only_what_the_general_path_accepts_with_the_same_event(
    raw: bytes,
) -> None:
    fast = trade_from_frame(raw, PROCESSED_AT)
    assert fast is None or _state(fast) == _state(_general(raw))


def test_usual_frames_take_the_frame_path() -> None:
    usual = [
        _combined(FRAME),
        _combined({**FRAME, "p": "1E-8", "q": "100"}),
        *UNUSUAL_VALID,
    ]
    assert all(isinstance(_general(raw), TradeEvent) for raw in usual)
    assert all(trade_from_frame(raw, PROCESSED_AT) is not None for raw in usual)


@pytest.mark.parametrize("processed_at", [0, 10**14 - 1, 10**14, -1])
def test_frame_path_checks_processed_at_like_trade_event(processed_at: int) -> None:
    fast = trade_from_frame(_combined(FRAME), processed_at)
    assert fast is None or _state(fast) == _state(_pydantic(FRAME, processed_at))
    assert (fast is None) == isinstance(_pydantic(FRAME, processed_at), str)


def test_a_trade_id_beyond_the_bigint_column_is_an_invalid_trade() -> None:
    assert trade_from_binance({**FRAME, "t": 2**63 - 1}, PROCESSED_AT).trade_id == 2**63 - 1
    with pytest.raises(InvalidTrade, match="trade_id"):
        trade_from_binance({**FRAME, "t": 2**63}, PROCESSED_AT)
