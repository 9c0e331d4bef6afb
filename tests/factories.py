"""Test data: Binance-shaped trades with contiguous ids and decimal-string prices."""

from __future__ import annotations

import random
import uuid
from decimal import Decimal
from typing import Any

from pipeline.core.settings import PROJECT_ROOT
from pipeline.core.trades import Row, TradeEvent


def make_trades(
    symbols: list[str], per_symbol: int, first_id: int = 1, seed: int = 7
) -> list[TradeEvent]:
    rng = random.Random(seed)
    trades: list[TradeEvent] = []
    for symbol in symbols:
        price = Decimal("100.00000000") + rng.randint(0, 10_000)
        for offset in range(per_symbol):
            price += Decimal(rng.randint(-500, 500)) / Decimal(100_000_000)
            trade_time = 1_700_000_000_000 + offset * 7
            trades.append(
                TradeEvent(
                    symbol=symbol,
                    trade_id=first_id + offset,
                    price=price,
                    quantity=Decimal(rng.randint(1, 10**8)) / Decimal(10**8),
                    event_time=trade_time + 1,
                    trade_time=trade_time,
                    is_buyer_maker=rng.random() < 0.5,
                    processed_at=trade_time + 2,
                )
            )
    return trades


def rows_of(trades: list[TradeEvent]) -> list[Row]:
    """What the consumer hands the sink for these trades."""
    return [trade.as_row() for trade in trades]


def keys(trades: list[TradeEvent]) -> set[tuple[str, int]]:
    return {(t.symbol, t.trade_id) for t in trades}


class CollectingPublisher:
    """A TradePublisher (the source's output port) that keeps everything it is given."""

    def __init__(self) -> None:
        self.events: list[TradeEvent] = []
        self.dead: list[tuple[bytes, str, str]] = []

    async def publish(self, event: TradeEvent) -> None:
        self.events.append(event)

    async def dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        self.dead.append((raw, reason, source))

    def ids(self, symbol: str) -> list[int]:
        """In arrival order, repeats included."""
        return [e.trade_id for e in self.events if e.symbol == symbol]

    def unique_ids(self, symbol: str) -> set[int]:
        return {e.trade_id for e in self.events if e.symbol == symbol}


def service_env(bootstrap_servers: str, database_url: str) -> dict[str, str]:
    """The environment of a service under test: these servers, a topic and group of its own."""
    unique = uuid.uuid4().hex[:10]
    return {
        "SETTINGS_FILE": str(PROJECT_ROOT / "config" / "settings.yaml"),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "DATABASE_URL": database_url,
        "KAFKA_TOPIC": f"trades_{unique}",
        "KAFKA__GROUP_ID": f"sink_{unique}",
        "KAFKA__LINGER_MS": "5",
        "BINANCE__VERIFY_SYMBOLS": "false",
        # Most tests run the app in the test process: a SETTINGS_FILE asking for the opt-in
        # real-time priority would apply it to pytest itself. test_processes.py covers it.
        "PIPELINE_API_PRIORITY": "normal",
    }


# A Binance trade frame's `data`, as the exchange sends it.
BINANCE_TRADE: dict[str, Any] = {
    "e": "trade",
    "E": 1_700_000_000_123,
    "s": "BTCUSDT",
    "t": 4_200_000_001,
    "p": "37123.45000000",
    "q": "0.00120000",
    "T": 1_700_000_000_120,
    "m": True,
    "M": True,
}
