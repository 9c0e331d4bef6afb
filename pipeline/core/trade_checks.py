"""TradeEvent's field checks in plain Python, for the per-trade hot paths.

pydantic's validation of TradeEvent (model_validate on a Binance frame, model_validate_json on
a Kafka record) is the costliest step per trade (docs/perf.md). These checks accept a *subset* of what TradeEvent
accepts, with the same values; a value they do not accept is not necessarily invalid, only not
theirs to judge: the caller then asks TradeEvent, which decides and words the reason. So
TradeEvent stays the contract (tests/unit/core/test_trade_checks.py and
tests/unit/kafka/test_records.py hold the fast paths to it over corpora of edge cases).

The bounds are the table's and plausibility's: times from EARLIEST_TRADE_MS up to a `latest`
the caller gives (now plus the allowed clock skew), prices and quantities positive, below
MAX_DECIMAL, with at most MAX_DECIMAL_PLACES digits after the point.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal, InvalidOperation
from typing import Annotated

import msgspec

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")
# Binance opened in July 2017: none of its trades is older. History imports bring trades of any
# age since, so the past bound is this date, not a window around now.
EARLIEST_TRADE_MS = 1_498_867_200_000  # 2017-07-01T00:00:00Z
EPOCH_MILLIS_END = 10**14  # an upper bound no clock reaches; the real one is now + the skew
# How far a time may be ahead of our clock (binance.max_clock_skew_s): a trade "from the future"
# would stay the latest price for as long as it is ahead.
DEFAULT_MAX_CLOCK_SKEW_MS = 300_000
MAX_TRADE_ID = 2**63 - 1  # the trade_id column is a bigint
# Prices and quantities: below 1e20 with at most 18 digits after the point, so that every one
# fits a NUMERIC(38, 18) (the column is an unconstrained NUMERIC, which rejects a scale above
# 16383: "1E-20000" would fail the whole batch in PostgreSQL). Binance uses 8 digits.
MAX_DECIMAL = Decimal("1E+20")
MAX_DECIMAL_PLACES = 18
TRADE_STREAM_SUFFIX = "@trade"
# The same bounds for the msgspec decoders of the fast paths, checked while they decode (strict:
# JSON integers only, no floats or bools); "not ahead of now" is checked after decoding.
DecodedEpochMillis = Annotated[int, msgspec.Meta(ge=EARLIEST_TRADE_MS, lt=EPOCH_MILLIS_END)]
DecodedTradeId = Annotated[int, msgspec.Meta(ge=0, le=MAX_TRADE_ID)]
_ZERO = Decimal(0)
# Symbols seen to match SYMBOL_PATTERN, each with its trade stream: a dict lookup per trade
# costs a fraction of a regex match. Bounded, so that a feed of made-up symbols cannot grow it
# without end.
_MAX_KNOWN_SYMBOLS = 10_000
_known_symbols: dict[str, str] = {}


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def latest_now(max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS) -> int:
    """The latest time a trade may carry now: the wall clock plus the allowed skew."""
    return now_ms() + max_clock_skew_ms


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
        _known_symbols[value] = value.lower() + TRADE_STREAM_SUFFIX
    return True


def trade_stream(symbol: str) -> str:
    """The name of a symbol's trade stream on Binance (`btcusdt@trade`): a combined-stream
    frame's `stream`, which its trade's symbol must match."""
    stream = _known_symbols.get(symbol)
    return stream if stream is not None else symbol.lower() + TRADE_STREAM_SUFFIX


def positive_decimal(value: object) -> Decimal | None:
    """TradeEvent's DecimalString: a str, Decimal(str), 0 < it < MAX_DECIMAL and at most
    MAX_DECIMAL_PLACES digits after the point as written ("1.50" has two); else None."""
    if type(value) is not str:
        return None
    try:
        number = Decimal(value)
        # A NaN makes the comparison raise InvalidOperation, like a syntax error does above.
        if not _ZERO < number < MAX_DECIMAL:
            return None
    except InvalidOperation:
        return None
    # The last of a coefficient's n digits sits at exponent adjusted() - n + 1, and n is at most
    # len(value): so a string this short cannot have too many places (every Binance price and
    # quantity is), which spares as_tuple(), which builds a tuple of the digits.
    if len(value) <= number.adjusted() + 1 + MAX_DECIMAL_PLACES:
        return number
    return number if decimal_places(number) <= MAX_DECIMAL_PLACES else None


def decimal_places(number: Decimal) -> int:
    """Digits after the point of a finite Decimal as written: 2 for 1.50, 0 for 1E+3."""
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):  # "n", "N" or "F": not finite
        raise ValueError(f"{number} is not finite")
    return max(0, -exponent)


def is_epoch_millis(value: object, latest: int) -> bool:
    """A StrictInt (no bool, no float) with EARLIEST_TRADE_MS <= value <= latest, for a latest
    below EPOCH_MILLIS_END (`plausible_latest`)."""
    return type(value) is int and EARLIEST_TRADE_MS <= value <= latest


def plausible_latest(latest: int) -> int:
    """`latest` capped to the upper bound TradeEvent has anyway (EPOCH_MILLIS_END, excluded)."""
    return latest if latest < EPOCH_MILLIS_END else EPOCH_MILLIS_END - 1


def is_trade_id(value: object) -> bool:
    """A StrictInt with 0 <= value <= MAX_TRADE_ID."""
    return type(value) is int and 0 <= value <= MAX_TRADE_ID
