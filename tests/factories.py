"""Test data: Binance-shaped trades with contiguous ids and decimal-string prices."""

from __future__ import annotations

import random
from decimal import Decimal

from pipeline.models import TradeEvent


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


def keys(trades: list[TradeEvent]) -> set[tuple[str, int]]:
    return {(t.symbol, t.trade_id) for t in trades}
