"""The exchange tape: one `Market` per listed symbol, its trades, and their Binance frames.

Pure and synchronous (no I/O), so the server only moves bytes. Prices and quantities are kept as
integers in units of 1e-8 — Binance renders both with 8 decimals — so rendering is exact.
"""

from __future__ import annotations

import random
import re
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import NamedTuple

SCALE = 10**8
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# Lower-case symbol (or an "!all-market" name) then one or more "@type" parts, e.g.
# btcusdt@trade, btcusdt@depth@100ms, !miniTicker@arr. Upper-case symbols are rejected like
# Binance does, so a client that forgets to lower-case fails here and not only in production.
STREAM_RE = re.compile(r"^(?:[a-z0-9]{2,20}|![A-Za-z]+)(?:@[A-Za-z0-9_]+)+$")
TRADE_SUFFIX = "@trade"

# (start price, tick size, lot size) in 1e-8 units, close to the real spot filters.
_PROFILES: dict[str, tuple[int, int, int]] = {
    "BTCUSDT": (65_000 * SCALE, 1_000_000, 1_000),
    "ETHUSDT": (3_500 * SCALE, 1_000_000, 10_000),
    "SOLUSDT": (150 * SCALE, 1_000_000, 100_000),
    "BNBUSDT": (600 * SCALE, 1_000_000, 100_000),
    "XRPUSDT": (60_000_000, 10_000, 10_000_000),
    "ADAUSDT": (45_000_000, 10_000, 10_000_000),
    "DOGEUSDT": (15_000_000, 1_000, 100_000_000),
}
_DEFAULT_PROFILE = (SCALE, 10_000, 10_000_000)  # 1.0, tick 0.0001, lot 0.1
_QUOTE_ASSETS = ("USDT", "FDUSD", "USDC", "BTC", "ETH", "BNB", "EUR", "TRY")
_VOLATILITY = 2e-5  # std-dev of one trade's price move, relative: ~1 % drift over 200k trades
_MEAN_NOTIONAL = 500.0  # quote-asset value of an average trade
_TRADE = b'{"e":"trade","E":%d,"s":"%b","t":%d,"p":"%b","q":"%b","T":%d,"m":%b,"M":true}'
_BOOL = {True: b"true", False: b"false"}
OVERSIZED_BYTES = 100_000  # far above a real trade frame, below websockets' 1 MiB max_size
YEAR_5000_MS = 95_617_584_000_000  # a trade time no clock is near (future_time)
_SYMBOL_FIELD = re.compile(rb'"s":"([A-Z0-9]+)"')


def fmt(units: int) -> str:
    """Render 1e-8 units as Binance does: "27123.45000000"."""
    whole, frac = divmod(units, SCALE)
    return f"{whole}.{frac:08d}"


def to_units(decimal: bytes | str) -> int:
    """Inverse of `fmt` for the non-negative 8-decimal strings this module renders."""
    text = decimal.decode() if isinstance(decimal, bytes) else decimal
    return int(text.replace(".", ""))


class Trade(NamedTuple):
    """One executed trade as kept on the tape (REST history, ground truth)."""

    id: int
    time: int  # epoch ms
    price: bytes  # 8-decimal string, as it appears in the frame
    qty: bytes
    is_buyer_maker: bool


class Pending(NamedTuple):
    """A trade generated but not executed yet: price and quantity are rendered; id and time are
    assigned at execution so prepared batches never break the per-symbol id sequence."""

    market: Market
    price: bytes
    qty: bytes
    is_buyer_maker: bool


class Market:
    """One symbol's order flow: a random-walk price, a contiguous id counter and its history."""

    def __init__(self, symbol: str, first_id: int, history_size: int) -> None:
        self.symbol = symbol
        self.stream = symbol.lower() + TRADE_SUFFIX
        self.price, self.tick, self.lot = _PROFILES.get(symbol, _DEFAULT_PROFILE)
        self.base, self.quote = _split(symbol)
        self.first_id = first_id
        self.next_id = first_id
        self.history: deque[Trade] = deque(maxlen=history_size)
        self.due = 0.0  # fractional trades owed by the clock between ticks
        self.combined_prefix = b'{"stream":"%b","data":' % self.stream.encode()
        self._symbol = symbol.encode()

    def generate(self, n: int, rng: random.Random) -> list[Pending]:
        """Walk the price `n` steps and return the trades, ready to execute."""
        out: list[Pending] = []
        price, tick, lot = self.price, self.tick, self.lot
        for _ in range(n):
            price = max(tick, price + round(rng.gauss(0.0, price * _VOLATILITY / tick)) * tick)
            qty = int(rng.expovariate(1.0 / _MEAN_NOTIONAL) * SCALE) * SCALE // price
            qty = max(lot, qty - qty % lot)
            out.append(Pending(self, fmt(price).encode(), fmt(qty).encode(), rng.random() < 0.5))
        self.price = price
        return out

    def execute(self, pending: Pending, now_ms: int) -> tuple[Trade, bytes]:
        """Put a trade on the tape now; return it with its raw stream payload."""
        trade = Trade(self.next_id, now_ms, pending.price, pending.qty, pending.is_buyer_maker)
        self.next_id += 1
        self.history.append(trade)
        raw = _TRADE % (
            now_ms,
            self._symbol,
            trade.id,
            trade.price,
            trade.qty,
            now_ms,
            _BOOL[trade.is_buyer_maker],
        )
        return trade, raw

    def executed_ids(self) -> range:
        """Every trade id that has happened on this market (ids are contiguous)."""
        return range(self.first_id, self.next_id)

    def trades_from(self, from_id: int, limit: int) -> list[Trade]:
        """Trades with id >= from_id, oldest first. History is bounded: ids that fell out of it
        are skipped, so the caller sees the first returned id > from_id (a real exchange keeps
        everything; the simulator keeps `history_size` per symbol)."""
        if not self.history:
            return []
        start = max(0, from_id - self.history[0].id)
        return list(islice(self.history, start, start + limit))

    def recent(self, limit: int) -> list[Trade]:
        """The newest `limit` trades, oldest first (Binance's order)."""
        return list(islice(self.history, max(0, len(self.history) - limit), None))


def _split(symbol: str) -> tuple[str, str]:
    for quote in _QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-3], symbol[-3:]


def _other_symbol(raw: bytes, trade: Trade) -> bytes:
    """The payload claiming another market's symbol (sent on this market's stream all the same)."""

    def swap(match: re.Match[bytes]) -> bytes:
        return b'"s":"%b"' % (b"BTCUSDT" if match[1] == b"ETHUSDT" else b"ETHUSDT")

    return _SYMBOL_FIELD.sub(swap, raw, count=1)


def _future_time(raw: bytes, trade: Trade) -> bytes:
    """Event and trade time in the year 5000."""
    for key in (b"E", b"T"):
        raw = raw.replace(b'"%b":%d,' % (key, trade.time), b'"%b":%d,' % (key, YEAR_5000_MS), 1)
    return raw


# Each turns a valid raw payload into one a strict parser must reject. The trade itself stays
# on the tape, so a client that dead-letters the frame can still recover it from REST.
_MALFORMERS: dict[str, Callable[[bytes, Trade], bytes]] = {
    "bad_json": lambda raw, t: raw[:-1] + b",}",
    "missing_field": lambda raw, t: raw.replace(b'"p":"%b",' % t.price, b"", 1),
    "wrong_type": lambda raw, t: raw.replace(b'"t":%d,' % t.id, b'"t":{"id":%d},' % t.id, 1),
    "negative_price": lambda raw, t: raw.replace(b'"p":"', b'"p":"-', 1),
    "unknown_event": lambda raw, t: raw.replace(b'"e":"trade"', b'"e":"tradeV9"', 1),
    "truncated": lambda raw, t: raw[: len(raw) // 2],
    "oversized": lambda raw, t: raw[:-1] + b',"pad":"' + b"x" * OVERSIZED_BYTES + b'"}',
    # Well-formed, but beyond what a trade can be: another market's symbol on this stream, a
    # time far ahead of any clock, a price with 19 digits after the point (the same value).
    "other_symbol": _other_symbol,
    "future_time": _future_time,
    "excess_decimals": lambda raw, t: raw.replace(
        b'"p":"%b"' % t.price, b'"p":"%b00000000000"' % t.price, 1
    ),
}
MALFORMED_KINDS: tuple[str, ...] = tuple(_MALFORMERS)


def malform(kind: str, raw: bytes, trade: Trade) -> bytes:
    """Return the `kind` corruption (one of MALFORMED_KINDS) of a trade's raw payload."""
    return _MALFORMERS[kind](raw, trade)


def trade_json(trade: Trade) -> dict[str, object]:
    """A trade as Binance's REST answers list it (historicalTrades, trades)."""
    quote = to_units(trade.price) * to_units(trade.qty) // SCALE
    return {
        "id": trade.id,
        "price": trade.price.decode(),
        "qty": trade.qty.decode(),
        "quoteQty": fmt(quote),
        "time": trade.time,
        "isBuyerMaker": trade.is_buyer_maker,
        "isBestMatch": True,
    }
