"""Gap filling: trade ids the live stream skipped, fetched from REST historicalTrades.

Binance trade ids are contiguous per symbol, so the source knows exactly which ids it missed
(a reconnect, a dead-lettered frame, a restart). `Backfiller.schedule()` queues such a gap and
returns at once; one worker task per symbol fetches it in pages of 1000 (`fromId`), converts and
publishes the trades through the same publisher as the live ones (the sink is idempotent, so
overlaps are harmless). Ids the exchange does not have are recorded as exchange gaps — counted,
logged once, visible in the status — and never asked for again.

A page that ends short of the gap is not proof of that: every id of a gap is below a trade the
stream already delivered, so the exchange has it, but its REST view can lag its stream by
seconds. Such a page is asked again (jittered backoff, through the same REST weight budget) until
it reaches the gap's end or the gap is `gap_max_age_s` old; only then are the ids still missing an
exchange gap. Ids missing *below* one the exchange returned are a hole at once.

Bounds per gap: at most `backfill_max_trades` (the newest ones) and nothing older than
`backfill_max_age_s`; 0 in either turns backfill off. REST pacing is the ExchangeClient's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.core import metrics
from pipeline.core.errors import InvalidTrade
from pipeline.core.ports import TradePublisher
from pipeline.core.retry import Backoff
from pipeline.core.settings import BinanceSettings
from pipeline.core.status import BackfillStatus, ExchangeGap
from pipeline.core.trade_checks import DEFAULT_MAX_CLOCK_SKEW_MS
from pipeline.core.trades import TradeEvent, trade_from_rest
from pipeline.exchange.client import (
    HISTORICAL_TRADES_MAX_LIMIT,
    ExchangeClient,
    ExchangeError,
    ExchangeUnavailable,
)

logger = logging.getLogger(__name__)

RECENT_EXCHANGE_GAPS = 100  # how many exchange gaps the status keeps
GAP_LOG_INTERVAL_S = 10.0  # per symbol: a feed of bad frames means a gap per frame
RETRY_BACKOFF_S = (1.0, 60.0)  # while REST is unavailable
BEHIND_BACKOFF_S = (1.0, 10.0)  # while REST has not caught up with the stream


@dataclass(frozen=True, slots=True)
class Gap:
    """Trade ids first_id..last_id (inclusive) of one symbol are missing.

    `seen_time_ms` is the trade time of the trade that revealed the gap: every missing trade is
    older, so once it is older than backfill_max_age_s the whole gap is.
    """

    symbol: str
    first_id: int
    last_id: int
    seen_time_ms: int

    @property
    def size(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass(slots=True)
class Page:
    """What one historicalTrades answer means for the gap being filled."""

    next_id: int  # the first id still to fetch; > the gap's last id when done
    trades: list[TradeEvent] = field(default_factory=list)
    invalid: list[tuple[bytes, str]] = field(default_factory=list)
    missing: list[tuple[int, int]] = field(default_factory=list)
    too_old: int = 0
    # The page ended short, inside the gap: REST has not caught up to next_id..last_id yet.
    behind: bool = False


def merge_gaps(queued: Gap, new: Gap, max_trades: int) -> Gap | None:
    """One gap covering both when they are less than a page apart (ids in between were received
    live and come again as duplicates); None when they should stay separate."""
    if new.first_id - queued.last_id > HISTORICAL_TRADES_MAX_LIMIT:
        return None
    first, last = min(queued.first_id, new.first_id), max(queued.last_id, new.last_id)
    if last - first + 1 > max_trades:
        return None
    return Gap(new.symbol, first, last, max(queued.seen_time_ms, new.seen_time_ms))


def bound_gap(gap: Gap, max_trades: int, max_age_s: int, now_ms: int) -> Gap | None:
    """The part of `gap` worth fetching: its newest `max_trades` ids, or None if too old."""
    if max_trades == 0 or max_age_s == 0 or now_ms - gap.seen_time_ms > max_age_s * 1000:
        return None
    first = max(gap.first_id, gap.last_id - max_trades + 1)
    return Gap(gap.symbol, first, gap.last_id, gap.seen_time_ms)


def absorb_page(
    symbol: str,
    first_id: int,
    last_id: int,
    requested: int,
    items: Sequence[Any],
    cutoff_ms: int,
    processed_at: int,
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
) -> Page:
    """Interpret a `fromId=first_id&limit=requested` answer for the gap first_id..last_id."""
    page = Page(next_id=first_id)
    present: list[int] = []
    highest = -1
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            page.invalid.append((orjson.dumps(item), "historical trade has no integer id"))
            continue
        highest = max(highest, item_id)
        if not first_id <= item_id <= last_id:
            continue
        present.append(item_id)
        try:
            event = trade_from_rest(symbol, item, processed_at, processed_at + max_clock_skew_ms)
        except InvalidTrade as exc:
            page.invalid.append((orjson.dumps(item), str(exc)))
            continue
        if event.trade_time < cutoff_ms:
            page.too_old += 1
        else:
            page.trades.append(event)
    expected = first_id
    for item_id in sorted(set(present)):
        if item_id > expected:
            page.missing.append((expected, item_id - 1))
        expected = item_id + 1
    if expected <= last_id:
        if highest >= last_id or (len(items) >= requested and expected == first_id):
            # The exchange has later ids, so it will never have these; a full page without
            # progress means the same (and must not be asked again).
            page.missing.append((expected, last_id))
            expected = last_id + 1
        elif len(items) < requested:
            # REST ends before ids the stream already passed: it lags, these may come later.
            page.behind = True
    page.next_id = expected
    return page


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Backfiller:
    """Fills gaps per symbol in the background; `close()` cancels what is still running."""

    def __init__(
        self, settings: BinanceSettings, exchange: ExchangeClient, publisher: TradePublisher
    ) -> None:
        self._settings = settings
        self._exchange = exchange
        self._publisher = publisher
        self._queues: dict[str, deque[Gap]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._progress: dict[str, int] = {}  # ids done of the gap being filled
        self._gap_logs: dict[str, tuple[float, int]] = {}  # symbol → (last logged, not logged)
        self._exchange_gaps: deque[ExchangeGap] = deque(maxlen=RECENT_EXCHANGE_GAPS)
        self.gaps_found = 0
        self.trades_backfilled = 0
        self.trades_skipped = 0
        self.exchange_gap_trades = 0

    def schedule(self, symbol: str, first_id: int, last_id: int, seen_time_ms: int) -> None:
        """Queue ids first_id..last_id of `symbol` for backfill; never blocks."""
        found = Gap(symbol, first_id, last_id, seen_time_ms)
        self.gaps_found += 1
        metrics.GAPS_FOUND.labels(symbol).inc()
        gap = bound_gap(
            found, self._settings.backfill_max_trades, self._settings.backfill_max_age_s, _now_ms()
        )
        skipped = found.size - (gap.size if gap else 0)
        self.trades_skipped += skipped
        self._log_gap(found, skipped)
        if gap is None:
            return
        queue = self._queues.setdefault(symbol, deque())
        # Many small gaps close together (a burst of bad frames) become one REST page. Only a
        # gap that is not being filled yet (not queue[0]) may grow.
        merged = (
            merge_gaps(queue[-1], gap, self._settings.backfill_max_trades)
            if len(queue) > 1
            else None
        )
        if merged is not None:
            queue[-1] = merged
        else:
            queue.append(gap)
        if symbol not in self._tasks:
            self._tasks[symbol] = asyncio.create_task(self._work(symbol), name=f"backfill-{symbol}")

    def _log_gap(self, gap: Gap, skipped: int) -> None:
        now = time.monotonic()
        last, quiet = self._gap_logs.get(gap.symbol, (float("-inf"), 0))
        if now - last < GAP_LOG_INTERVAL_S:
            self._gap_logs[gap.symbol] = (last, quiet + 1)
            return
        self._gap_logs[gap.symbol] = (now, 0)
        logger.info(
            "gap found symbol=%s first_id=%d last_id=%d size=%d skipped=%d not_logged_before=%d",
            gap.symbol,
            gap.first_id,
            gap.last_id,
            gap.size,
            skipped,
            quiet,
        )

    async def cancel(self, symbol: str) -> None:
        """Forget `symbol`'s pending gaps (it is no longer tracked)."""
        self._queues.pop(symbol, None)
        self._progress.pop(symbol, None)
        task = self._tasks.pop(symbol, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def close(self) -> None:
        for symbol in list(self._tasks):
            await self.cancel(symbol)

    def status(self) -> BackfillStatus:
        return BackfillStatus(
            self.gaps_found,
            self.trades_backfilled,
            self.trades_skipped,
            self.exchange_gap_trades,
            tuple(self._exchange_gaps),
            {
                symbol: sum(gap.size for gap in queue) - self._progress.get(symbol, 0)
                for symbol, queue in self._queues.items()
                if queue
            },
        )

    async def _work(self, symbol: str) -> None:
        # One worker per symbol: its gaps are filled in order, never two at a time.
        queue = self._queues[symbol]
        try:
            while queue:
                gap = queue[0]
                self._progress[symbol] = 0
                try:
                    await self._fill(gap)
                except Exception:
                    logger.exception("backfill failed symbol=%s gap=%s", symbol, gap)
                queue.popleft()
        finally:
            if self._tasks.get(symbol) is asyncio.current_task():
                del self._tasks[symbol]
                self._progress.pop(symbol, None)

    async def _fill(self, gap: Gap) -> None:
        started = time.monotonic()
        next_id, pages, published, waits = gap.first_id, 0, 0, 0
        backoff = Backoff(*RETRY_BACKOFF_S)
        behind = Backoff(*BEHIND_BACKOFF_S)
        while next_id <= gap.last_id:
            if bound_gap(gap, 1, self._settings.backfill_max_age_s, _now_ms()) is None:
                self._skip(gap, gap.last_id - next_id + 1, "older than backfill_max_age_s")
                return
            requested = min(HISTORICAL_TRADES_MAX_LIMIT, gap.last_id - next_id + 1)
            try:
                items = await self._exchange.historical_trades(gap.symbol, next_id, requested)
            except ExchangeUnavailable as exc:
                delay = max(exc.retry_after or 0.0, backoff.next_delay())
                logger.warning(
                    "backfill waiting symbol=%s in_s=%.1f error=%s", gap.symbol, delay, exc
                )
                await asyncio.sleep(delay)
                continue
            except ExchangeError as exc:
                self._skip(gap, gap.last_id - next_id + 1, str(exc))
                return
            page = absorb_page(
                gap.symbol,
                next_id,
                gap.last_id,
                requested,
                items,
                _now_ms() - self._settings.backfill_max_age_s * 1000,
                _now_ms(),
                self._settings.max_clock_skew_ms,
            )
            published += await self._apply(gap.symbol, page, len(items))
            if page.next_id > next_id:
                behind.reset()  # REST is catching up: look again soon
            next_id, pages = page.next_id, pages + 1
            self._progress[gap.symbol] = next_id - gap.first_id
            if page.behind:
                wait = self._wait_for_rest(gap, next_id, behind)
                if wait is None:
                    self._record_exchange_gap(
                        ExchangeGap(gap.symbol, next_id, gap.last_id),
                        "REST did not catch up within gap_max_age_s",
                    )
                    break
                waits += 1
                await asyncio.sleep(wait)
                continue
            if pages % self._settings.backfill_progress_pages == 0 and next_id <= gap.last_id:
                logger.info(
                    "backfill progress symbol=%s done=%d total=%d",
                    gap.symbol,
                    next_id - gap.first_id,
                    gap.size,
                )
        # Single-page gaps can be frequent (and so can a wait for REST after each reconnect):
        # only long backfills are worth an INFO line.
        logger.log(
            logging.INFO if pages - waits > 1 else logging.DEBUG,
            "backfill done symbol=%s first_id=%d last_id=%d published=%d pages=%d"
            " waits_for_rest=%d seconds=%.2f",
            gap.symbol,
            gap.first_id,
            gap.last_id,
            published,
            pages,
            waits,
            time.monotonic() - started,
        )

    def _wait_for_rest(self, gap: Gap, next_id: int, backoff: Backoff) -> float | None:
        """How long to wait before asking REST again for next_id..; None once the gap is older
        than gap_max_age_s. The last wait ends at that age, so the last request comes after it."""
        left_s = self._settings.gap_max_age_s - (_now_ms() - gap.seen_time_ms) / 1000
        if left_s <= 0:
            return None
        delay = min(backoff.next_delay(), left_s)
        logger.debug(
            "backfill waiting for REST to catch up symbol=%s next_id=%d last_id=%d in_s=%.2f",
            gap.symbol,
            next_id,
            gap.last_id,
            delay,
        )
        return delay

    async def _apply(self, symbol: str, page: Page, received: int) -> int:
        """Publish a page's trades, dead-letter its invalid items, record what REST lacks."""
        metrics.TRADES_RECEIVED.labels("rest").inc(received)
        for raw, reason in page.invalid:
            metrics.TRADES_REJECTED.labels("rest").inc()
            await self._publisher.dead_letter(raw, reason, "rest")
        for event in page.trades:
            await self._publisher.publish(event)
        if page.trades:
            self.trades_backfilled += len(page.trades)
            metrics.TRADES_VALID.labels(symbol).inc(len(page.trades))
            metrics.TRADES_BACKFILLED.labels(symbol).inc(len(page.trades))
        self.trades_skipped += page.too_old
        for first_id, last_id in page.missing:
            self._record_exchange_gap(ExchangeGap(symbol, first_id, last_id), "REST has no trades")
        return len(page.trades)

    def _record_exchange_gap(self, gap: ExchangeGap, reason: str) -> None:
        size = gap.last_id - gap.first_id + 1
        self.exchange_gap_trades += size
        self._exchange_gaps.append(gap)
        metrics.EXCHANGE_GAPS.labels(gap.symbol).inc(size)
        logger.warning(
            "exchange gap: %s symbol=%s first_id=%d last_id=%d size=%d",
            reason,
            gap.symbol,
            gap.first_id,
            gap.last_id,
            size,
        )

    def _skip(self, gap: Gap, count: int, reason: str) -> None:
        self.trades_skipped += count
        logger.warning(
            "backfill gave up symbol=%s first_id=%d last_id=%d skipped=%d reason=%s",
            gap.symbol,
            gap.first_id,
            gap.last_id,
            count,
            reason,
        )
