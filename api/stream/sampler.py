"""Sampler: the conflated streams of one interval (`?conflate=`), fed the newest trade per tick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from api.stream.client import StreamClient
from api.stream.events import FeedEvent
from pipeline.core.errors import InvalidTrade
from pipeline.kafka.tail import TailRecord


class Sampler:
    """The conflated clients of one interval: each tick, the newest trade of each symbol.

    It keeps the record of each symbol's newest trade (by the id read from the value) and decodes
    only that one at the tick: a symbol that trades thousands of times a second costs one decode
    per interval here.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.by_symbol: dict[str, set[StreamClient]] = {}
        self.latest: dict[str, tuple[TailRecord, int | None]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, client: StreamClient) -> None:
        for symbol in client.symbols:
            self.by_symbol.setdefault(symbol, set()).add(client)

    def keep(self, symbol: str, record: TailRecord, trade_id: int | None) -> None:
        """The record, unless the one kept is of a newer trade (this one is a backfill)."""
        kept = self.latest.get(symbol)
        if kept is None or trade_id is None or kept[1] is None or trade_id > kept[1]:
            self.latest[symbol] = (record, trade_id)

    def remove(self, client: StreamClient) -> None:
        for symbol in client.symbols:
            clients = self.by_symbol.get(symbol)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self.by_symbol[symbol]
                    self.latest.pop(symbol, None)

    async def run(self, sent: Callable[[int], None]) -> None:
        while True:
            # A full interval after the last tick, however late that one ran: never two at once.
            await asyncio.sleep(self.interval_s)
            latest, self.latest = self.latest, {}
            count = 0
            for symbol, (record, _) in latest.items():
                try:
                    row = record.row()
                except InvalidTrade:
                    continue
                if row[0] != symbol:
                    continue
                event = FeedEvent.from_row(row)
                for client in self.by_symbol.get(symbol, ()):
                    count += client.offer_latest(event)
            sent(count)
