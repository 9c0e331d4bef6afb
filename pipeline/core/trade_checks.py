"""TradeEvent's field checks in plain Python, for the per-trade hot paths.

pydantic spends ~5 µs per trade validating TradeEvent (model_validate on a Binance frame,
model_validate_json on a Kafka record). These checks accept a *subset* of what TradeEvent
accepts, with the same values; a value they do not accept is not necessarily invalid, only not
theirs to judge: the caller then asks TradeEvent, which decides and words the reason. So
TradeEvent stays the contract (tests/unit/test_trade_fast_paths.py and test_kafka_rows.py hold
the fast paths to it over corpora of edge cases).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

import msgspec

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")
EPOCH_MILLIS_END = 10**14  # TradeEvent's EpochMillis: 0 <= ms < 10**14
MAX_TRADE_ID = 2**63 - 1  # the trade_id column is a bigint
# The same bounds for the msgspec decoders of the fast paths, checked while they decode (strict:
# JSON integers only, no floats or bools).
DecodedEpochMillis = Annotated[int, msgspec.Meta(ge=0, lt=EPOCH_MILLIS_END)]
DecodedTradeId = Annotated[int, msgspec.Meta(ge=0, le=MAX_TRADE_ID)]
_ZERO = Decimal(0)
# TradeEvent rejects a price whose float is infinite (math.isfinite): anything from ~1.8e308 up.
# Below 1e300 a Decimal surely is a finite float; the rare rest is TradeEvent's to judge.
_SURELY_FINITE = Decimal("1e300")
# Symbols seen to match SYMBOL_PATTERN: a set lookup instead of a regex per trade (0.4 µs).
# Bounded, so that a feed of made-up symbols cannot grow it without end.
_MAX_KNOWN_SYMBOLS = 10_000
_known_symbols: set[str] = set()


def normalize_symbol(value: str) -> str:
    """Upper-case a symbol and check it against Binance's shape, or raise ValueError."""
    symbol = value.strip().upper()
    if not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError(f"symbol {value!r} must match {SYMBOL_PATTERN.pattern} (e.g. BTCUSDT)")
    return symbol


def is_symbol(value: object) -> bool:
    """A str matching SYMBOL_PATTERN."""
    if type(value) is not str:
        return False
    if value in _known_symbols:
        return True
    # fullmatch: Python's `$` would also match before a trailing newline; pydantic's (Rust)
    # regex, which checks TradeEvent.symbol, does not.
    if SYMBOL_PATTERN.fullmatch(value) is None:
        return False
    if len(_known_symbols) < _MAX_KNOWN_SYMBOLS:
        _known_symbols.add(value)
    return True


def positive_decimal(value: object) -> Decimal | None:
    """TradeEvent's DecimalString: a str, Decimal(str), finite as a float and > 0; else None."""
    if type(value) is not str:
        return None
    try:
        number = Decimal(value)
        # A NaN makes the comparison raise InvalidOperation, like a syntax error does above.
        return number if _ZERO < number < _SURELY_FINITE else None
    except InvalidOperation:
        return None


def is_epoch_millis(value: object) -> bool:
    """A StrictInt (no bool, no float) with 0 <= value < 10**14."""
    return type(value) is int and 0 <= value < EPOCH_MILLIS_END


def is_trade_id(value: object) -> bool:
    """A StrictInt with 0 <= value <= MAX_TRADE_ID."""
    return type(value) is int and 0 <= value <= MAX_TRADE_ID
