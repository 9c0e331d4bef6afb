"""Where a push-feed client is in each symbol, and the event id that spells it.

The rule, per symbol:

* Trades are delivered in increasing trade-id order. `high` is the highest id delivered; a trade
  above it is a `trade` event and moves it.
* A jump in the ids (a trade above high + 1) leaves a *hole*: the ids in between, not received.
  Binance trade ids are contiguous per symbol, so a hole is a gap that the exchange source fills
  later from REST (pipeline.exchange.backfill), publishing those older trades after newer ones.
  A trade inside a hole is delivered as a `backfill` event, and its id leaves the hole; `high`
  stays where it is.
* Anything else — at or below high and in no hole — was delivered already: a duplicate in the
  topic (a retried send, two producers, a backfill overlapping live trades), never sent twice.

The event id is the position after that event, symbol by symbol in subscription order:
`BTCUSDT:123,ETHUSDT:456`. Holes follow `~`, oldest first, as distances below high (ids are
long, holes are near high): `BTCUSDT:123~23-13~8` lacks ids 100 to 110 and 115. Resuming from it sends exactly the stored trades the client lacks: those inside its
holes (as backfill, oldest first) and those above high (as trades, in id order). A gap that is
filled while the client is away therefore reaches it on resume, as it would have live, and a
client that resumes never gets a trade twice.

high = -1 (NO_TRADE): the symbol had no stored trade when the client started. Its first trade
opens no hole: a symbol's ids do not start at 0, and nothing before the start was asked for.

Bounds, so that an id stays short: a hole is remembered while it is within HOLE_HORIZON ids of
high (the backfiller fills at most the newest `binance.backfill_max_trades` ids of a gap, 50,000
by default, while live trades move on; ids the exchange never had stay holes until then), and at
most MAX_HOLES per symbol, the oldest forgotten first. A trade in a forgotten hole counts as
delivered: neither sent live nor resumed.

Conflated streams (`?conflate=`) sample the newest trade per symbol: they keep only `high`, and
backfilled trades (older than what they showed) never reach them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

NO_TRADE = -1
MAX_HOLES = 32
HOLE_HORIZON = 100_000
MAX_TRADE_ID = 2**63 - 1
# A Last-Event-ID / ?after= longer than this is refused (many symbols with holes each).
MAX_EVENT_ID_LENGTH = 16_384

Kind = Literal["trade", "backfill"]
TRADE: Kind = "trade"
BACKFILL: Kind = "backfill"

_ID = r"(?:0|[1-9][0-9]{0,18})"
_DISTANCE = r"[1-9][0-9]{0,18}"
_FRAGMENT = re.compile(rf"([A-Z0-9]{{2,20}}):(-1|{_ID})((?:~{_DISTANCE}(?:-{_DISTANCE})?)*)")
_HOLE = re.compile(rf"~({_DISTANCE})(?:-({_DISTANCE}))?")


@dataclass(slots=True)
class SymbolPosition:
    """What a client has of one symbol: every id up to `high`, except the `holes`."""

    high: int = NO_TRADE
    holes: list[tuple[int, int]] = field(default_factory=list)  # ascending, disjoint, < high

    def accept(self, trade_id: int) -> Kind | None:
        """Take a trade into the position: its kind, or None if the client has it already."""
        high = self.high
        if trade_id > high:
            self.high = trade_id
            if trade_id > high + 1 and high != NO_TRADE:
                self.holes.append((high + 1, trade_id - 1))
                self.trim()
            elif self.holes and self.holes[0][1] < trade_id - HOLE_HORIZON:
                self.trim()
            return TRADE
        holes = self.holes
        for index, (first, last) in enumerate(holes):
            if trade_id < first:
                return None
            if trade_id <= last:
                rest = []
                if first < trade_id:
                    rest.append((first, trade_id - 1))
                if trade_id < last:
                    rest.append((trade_id + 1, last))
                holes[index : index + 1] = rest
                if len(holes) > MAX_HOLES:
                    self.trim()
                return BACKFILL
        return None

    def accept_latest(self, trade_id: int) -> bool:
        """A conflated stream's rule: newer than high, or not at all."""
        if trade_id > self.high:
            self.high = trade_id
            return True
        return False

    def missing(self) -> list[tuple[int, int]]:
        """The id ranges to read from the table on resume: the holes, then everything above."""
        return [*self.holes, (self.high + 1, MAX_TRADE_ID)]

    def encode(self, symbol: str) -> str:
        high = self.high
        text = f"{symbol}:{high}"
        if not self.holes:
            return text
        return text + "".join(
            f"~{high - first}" if first == last else f"~{high - first}-{high - last}"
            for first, last in self.holes
        )

    def trim(self) -> None:
        """Forget the holes beyond HOLE_HORIZON and MAX_HOLES (the oldest first)."""
        floor = self.high - HOLE_HORIZON
        kept = [(max(first, floor), last) for first, last in self.holes if last >= floor]
        self.holes = kept[-MAX_HOLES:]


def parse_event_id(value: str) -> dict[str, SymbolPosition]:
    """The positions an event id spells, per symbol; ValueError saying what is wrong."""
    if not value or len(value) > MAX_EVENT_ID_LENGTH:
        raise ValueError(f"must be 1 to {MAX_EVENT_ID_LENGTH} characters")
    positions: dict[str, SymbolPosition] = {}
    for part in value.split(","):
        match = _FRAGMENT.fullmatch(part)
        if match is None:
            shown = part if len(part) <= 60 else part[:60] + "…"
            raise ValueError(f"{shown!r} is not SYMBOL:TRADE_ID[~HOLE…] (an event id)")
        symbol, high = match[1], int(match[2])
        if symbol in positions:
            raise ValueError(f"{symbol} appears twice")
        holes: list[tuple[int, int]] = []
        for hole in _HOLE.finditer(match[3]):
            first = high - int(hole[1])
            last = high - int(hole[2]) if hole[2] is not None else first
            if first > last or first < 0 or (holes and first <= holes[-1][1]):
                raise ValueError(
                    f"{symbol}: holes must be distances below {high}, oldest first, disjoint"
                )
            holes.append((first, last))
        if high > MAX_TRADE_ID or len(holes) > MAX_HOLES:
            raise ValueError(f"{symbol}: trade id too large or more than {MAX_HOLES} holes")
        position = SymbolPosition(high, holes)
        position.trim()
        positions[symbol] = position
    return positions
