"""The past tape: trades that happened before the simulator started, for history jobs.

Each listed symbol has `history_days` of past trades at `history_rate_per_s`, ending where the
live tape begins: ids `start_trade_id` .. `start_trade_id + count - 1`, the live market
continuing from the next id. Every trade is a pure function of (seed, symbol, index) — nothing
is stored, so weeks of history cost no memory, and a test can ask `trades_between()` for the
exact set a window holds.

Aggregates as Binance builds them (one taker order at one price): the past tape repeats a
pattern of 5 trades in 3 aggregates (2 + 1 + 2 trades), so aggregate ids and trade ids differ,
and a client that mixes them up is caught. Live trades are one aggregate each.

`answer()` serves `/api/v3/aggTrades` and the past part of `/api/v3/historicalTrades` with
Binance's fields and limits: `a,p,q,f,l,T,m,M`; limit default 500, max 1000; fromId excludes
startTime/endTime; startTime and endTime at most one hour apart (-1127); one time alone means
the hour after startTime or before endTime.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import parse_qsl, urlsplit

from devtools.simulator.market import SCALE, Market, Trade, fmt, to_units, trade_json
from devtools.simulator.rest import ApiError, int_param

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
HOUR_MS = 3_600_000
FIRST_AGG_ID = 1  # aggregate ids start far below trade ids, as on Binance
_PATTERN_TRADES = 5
_PATTERN_AGGS = 3
_AGG_START = (0, 2, 3)  # first trade of each aggregate within the pattern
_AGG_SIZE = (2, 1, 2)
_AGG_OF_TRADE = (0, 0, 1, 2, 2)  # aggregate of each trade within the pattern
_MASK = (1 << 64) - 1
_MEAN_NOTIONAL = 500.0

Answer = tuple[int, object]


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit hash, the same on every platform and run."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Agg(NamedTuple):
    """One aggregate trade as aggTrades renders it."""

    seq: int  # 0-based over the symbol's past and live aggregates
    price: bytes
    qty: int  # units of 1e-8, the sum of its trades
    first_id: int
    last_id: int
    time: int
    is_buyer_maker: bool

    def json(self) -> dict[str, object]:
        return {
            "a": FIRST_AGG_ID + self.seq,
            "p": self.price.decode(),
            "q": fmt(self.qty),
            "f": self.first_id,
            "l": self.last_id,
            "T": self.time,
            "m": self.is_buyer_maker,
            "M": True,
        }


class PastTape:
    """One symbol's trades before the live tape: `count` trades ending just before `end_ms`."""

    def __init__(
        self, market: Market, seed: int, first_id: int, days: float, rate_per_s: float, end_ms: int
    ) -> None:
        blocks = round(days * 86_400 * rate_per_s / _PATTERN_TRADES)
        self.symbol = market.symbol
        self.first_id = first_id
        self.count = blocks * _PATTERN_TRADES
        self.aggs = blocks * _PATTERN_AGGS
        self.span_ms = round(days * 86_400_000)
        self.start_ms = end_ms - self.span_ms
        self._key = _mix(seed ^ (zlib.crc32(market.symbol.encode()) << 20))
        self._price, self._tick, self._lot = market.price, market.tick, market.lot

    @property
    def next_id(self) -> int:
        """The first id after the past: where the live tape starts."""
        return self.first_id + self.count

    def _unit(self, salt: int, n: int) -> float:
        return _mix(self._key ^ _mix((n << 2) | salt)) / 2**64

    def agg_time(self, j: int) -> int:
        # Evenly spread with jitter, never decreasing: j + 0.9u < j + 1 <= (j + 1) + 0.9u'.
        return self.start_ms + math.floor((j + 0.9 * self._unit(0, j)) * self.span_ms / self.aggs)

    def _agg_price(self, j: int) -> int:
        drift = 0.02 * math.sin(j * 2 * math.pi / 50_000) + 0.01 * math.sin(j * 2 * math.pi / 877)
        noise = 0.002 * (self._unit(1, j) - 0.5)
        ticks = round(self._price * (1.0 + drift + noise) / self._tick)
        return max(1, ticks) * self._tick

    def _trade_qty(self, k: int, price: int) -> int:
        notional = -math.log(1.0 - self._unit(2, k)) * _MEAN_NOTIONAL
        qty = int(notional * SCALE) * SCALE // price
        return max(self._lot, qty - qty % self._lot)

    def _maker(self, j: int) -> bool:
        return self._unit(3, j) < 0.5

    def trade(self, trade_id: int) -> Trade:
        k = trade_id - self.first_id
        j = k // _PATTERN_TRADES * _PATTERN_AGGS + _AGG_OF_TRADE[k % _PATTERN_TRADES]
        price = self._agg_price(j)
        return Trade(
            trade_id,
            self.agg_time(j),
            fmt(price).encode(),
            fmt(self._trade_qty(k, price)).encode(),
            self._maker(j),
        )

    def agg(self, j: int) -> Agg:
        block, within = divmod(j, _PATTERN_AGGS)
        first = self.first_id + block * _PATTERN_TRADES + _AGG_START[within]
        last = first + _AGG_SIZE[within] - 1
        price = self._agg_price(j)
        qty = sum(self._trade_qty(i - self.first_id, price) for i in range(first, last + 1))
        return Agg(j, fmt(price).encode(), qty, first, last, self.agg_time(j), self._maker(j))

    def first_agg_at(self, time_ms: int) -> int:
        """The first aggregate at or after `time_ms` (`self.aggs` when none)."""
        low, high = 0, self.aggs
        while low < high:
            mid = (low + high) // 2
            if self.agg_time(mid) < time_ms:
                low = mid + 1
            else:
                high = mid
        return low

    def trades_from(self, from_id: int, limit: int) -> list[Trade]:
        start = max(from_id, self.first_id)
        return [self.trade(i) for i in range(start, min(start + limit, self.next_id))]


class Tape:
    """A symbol's whole tape as the REST endpoints see it: the past, then the live market."""

    def __init__(self, past: PastTape, market: Market) -> None:
        self.past = past
        self.market = market

    @property
    def agg_count(self) -> int:
        return self.past.aggs + (self.market.next_id - self.market.first_id)

    def agg(self, index: int) -> Agg | None:
        """Aggregate `index`; None when the live history no longer keeps it."""
        if index < self.past.aggs:
            return self.past.agg(index)
        trade = self._live(self.market.first_id + index - self.past.aggs)
        if trade is None:
            return None
        price = trade.price
        qty = to_units(trade.qty)
        return Agg(index, price, qty, trade.id, trade.id, trade.time, trade.is_buyer_maker)

    def _live(self, trade_id: int) -> Trade | None:
        history = self.market.history
        if not history:
            return None
        position = trade_id - history[0].id
        return history[position] if 0 <= position < len(history) else None

    def first_agg_at(self, time_ms: int) -> int:
        """Index of the first aggregate at or after `time_ms` (agg_count when none)."""
        index = self.past.first_agg_at(time_ms)
        if index < self.past.aggs:
            return index
        history = self.market.history
        low, high = 0, len(history)
        while low < high:
            mid = (low + high) // 2
            if history[mid].time < time_ms:
                low = mid + 1
            else:
                high = mid
        if low == len(history):
            return self.agg_count
        return self.past.aggs + history[low].id - self.market.first_id

    def aggs(self, first: int, limit: int, until_ms: int | None = None) -> list[Agg]:
        found: list[Agg] = []
        index, end = max(first, 0), self.agg_count
        while index < end and len(found) < limit:
            agg = self.agg(index)
            index += 1
            if agg is None:
                continue
            if until_ms is not None and agg.time > until_ms:
                break
            found.append(agg)
        return found

    def trades_from(self, from_id: int, limit: int) -> list[Trade]:
        """historicalTrades from an id: the past's trades, then the live market's."""
        trades = self.past.trades_from(from_id, limit)
        if len(trades) < limit:
            start = max(from_id, self.market.first_id)
            trades += self.market.trades_from(start, limit - len(trades))
        return trades

    def ids_between(self, start_ms: int, end_ms: int) -> range:
        """The ids of the trades with start_ms <= time <= end_ms (ids grow with time), without
        building the trades: cheap for any window."""
        return range(self._first_id_at(start_ms), self._first_id_at(end_ms + 1))

    def _first_id_at(self, time_ms: int) -> int:
        index = self.first_agg_at(time_ms)
        agg = self.agg(index) if index < self.agg_count else None
        return agg.first_id if agg is not None else self.market.next_id

    def trades_between(self, start_ms: int, end_ms: int) -> list[Trade]:
        """Every trade with start_ms <= time <= end_ms, past and live (the ground truth)."""
        past = self.past
        trades: list[Trade] = []
        j = past.first_agg_at(start_ms)
        if j < past.aggs:
            first = past.agg(j).first_id
            for trade_id in range(first, past.next_id):
                trade = past.trade(trade_id)
                if trade.time > end_ms:
                    return trades
                trades.append(trade)
        trades.extend(t for t in self.market.history if start_ms <= t.time <= end_ms)
        return trades


def answer(target: str, tapes: Mapping[str, Tape]) -> Answer | None:
    """aggTrades, and historicalTrades reaching into the past; None: not for this module."""
    url = urlsplit(target)
    if url.path not in ("/api/v3/aggTrades", "/api/v3/historicalTrades"):
        return None
    params = dict(parse_qsl(url.query, keep_blank_values=True))
    symbol = params.get("symbol", "")
    tape = tapes.get(symbol)  # case-sensitive, like Binance
    try:
        if url.path == "/api/v3/aggTrades":
            if tape is None:
                raise _unknown(symbol)
            return 200, [agg.json() for agg in _agg_trades(params, tape)]
        if tape is None:
            return None  # rest.py answers historicalTrades' errors
        from_id = int_param(params, "fromId")
        if from_id is None or from_id >= tape.market.first_id:
            return None  # the live tape: rest.py
        limit = _limit(params)
        return 200, [trade_json(t) for t in tape.trades_from(from_id, limit)]
    except ApiError as exc:
        return 400, exc.body


def _unknown(symbol: str) -> ApiError:
    if not symbol:
        return ApiError(
            -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        )
    return ApiError(-1121, "Invalid symbol.")


def _agg_trades(params: Mapping[str, str], tape: Tape) -> list[Agg]:
    limit = _limit(params)
    from_id = int_param(params, "fromId")
    start, end = int_param(params, "startTime"), int_param(params, "endTime")
    if from_id is not None and (start is not None or end is not None):
        raise ApiError(-1128, "Combination of optional parameters invalid.")
    if from_id is not None:
        return tape.aggs(from_id - FIRST_AGG_ID, limit)
    if start is None and end is None:
        return tape.aggs(tape.agg_count - limit, limit)
    if start is not None and end is not None:
        if end - start > HOUR_MS:
            raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
    elif start is not None:
        end = start + HOUR_MS
    else:
        assert end is not None
        start = max(0, end - HOUR_MS)
    assert start is not None and end is not None
    if end < start:
        return []
    return tape.aggs(tape.first_agg_at(start), limit, until_ms=end)


def _limit(params: Mapping[str, str]) -> int:
    limit = int_param(params, "limit")
    return DEFAULT_LIMIT if limit is None else max(1, min(limit, MAX_LIMIT))
