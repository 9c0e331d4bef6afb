"""History jobs: a symbol's trades over any past time range, fetched by trade id (POST /backfills).

A job maps its time window to trade ids first — `aggTrades?startTime&endTime` answers with
aggregate trades whose `f`/`l` are the first and last trade ids they hold, so the first trade at
or after `start` and the first one after `end` take a request or two (`find_window`) — then
pages through `historicalTrades?fromId` (1,000 trades each), keeping only trades whose time is
within [start, end]. Trades go through the same path as live ones (a TradePublisher into Kafka,
then the idempotent sink), so a window overlapping stored data adds nothing twice.

Resumable: after a page is acknowledged by Kafka its position (the next trade id) is saved
(`HistoryJobStore.save`), so a job interrupted anywhere refetches at most that one page. The
job's `stored` count is confirmed page by page against crypto_prices, and the job is done once
every trade it published is stored.

Paced: every request is a background one (`RestBudget`): gap filling, which protects live data,
goes first, and history jobs get at most `history_weight_share` of the weight budget.

`HistoryRunner` claims jobs (at most `history_jobs_at_once`), renews its claim every second —
which is also when it notices a job cancelled through the API — and hands its jobs back when it
stops; a runner that died is replaced by another instance after `history_stale_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeVar

import orjson

from pipeline.core import metrics
from pipeline.core.errors import InvalidTrade, JobStoreUnavailable
from pipeline.core.history import HistoryJob, JobState
from pipeline.core.ports import DurablePublisher, HistoryJobStore
from pipeline.core.retry import Backoff
from pipeline.core.settings import BinanceSettings
from pipeline.core.trades import TradeEvent, trade_from_rest
from pipeline.exchange.client import (
    AGG_TRADES_MAX_WINDOW_MS,
    HISTORICAL_TRADES_MAX_LIMIT,
    ExchangeClient,
    ExchangeError,
    ExchangeUnavailable,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

HISTORY_SOURCE = "history"  # the DLQ's `source` header and the received-metric label
# After the window: at most this many hour-long aggTrades requests look for its first trade
# after `end`; then the newest trade's id bounds the range (paging still stops at `end`).
MAX_SEARCH_AFTER_END = 24
RETRY_BACKOFF_S = (1.0, 60.0)  # the exchange or the job table unavailable
DRAIN_WAIT_S = 5.0  # between "still waiting for Kafka" warnings
RATE_WINDOW_S = 30.0
STORED_POLL_S = 0.5
# After the last page, the job waits for the sink to store what it published; without progress
# for this long it ends anyway, saying how many trades are not stored (is a consumer running?).
STORED_WAIT_S = 120.0
# Stored-count checks per page at most (each is a primary-key range count of one page).
CONFIRM_PER_PAGE = 4


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _agg_ids(item: Any) -> tuple[int, int]:
    first = item.get("f") if isinstance(item, dict) else None
    last = item.get("l") if isinstance(item, dict) else None
    if not isinstance(first, int) or not isinstance(last, int) or first > last:
        raise ExchangeError(200, None, f"aggTrades item without trade ids: {item!r:.200}")
    return first, last


async def _first_agg(
    exchange: ExchangeClient, symbol: str, start_ms: int, end_ms: int, max_requests: int
) -> dict[str, Any] | None:
    """The first aggregate trade with start_ms <= T <= end_ms, an hour per request."""
    since = start_ms
    for _ in range(max_requests):
        if since > end_ms:
            break
        until = min(end_ms, since + AGG_TRADES_MAX_WINDOW_MS)
        found = await exchange.agg_trades(symbol, since, until, limit=1, background=True)
        if found:
            return found[0]
        since = until + 1
    return None


async def find_window(
    exchange: ExchangeClient, symbol: str, start_ms: int, end_ms: int, now_ms: int
) -> tuple[int, int] | None:
    """The trade ids (first, last) of `symbol`'s trades with start_ms <= time <= end_ms, or None
    when there are none. `last` is exact when a trade followed within a day after `end_ms`
    (else an upper bound: paging stops at the first trade after `end_ms` anyway)."""
    hours = (end_ms - start_ms) // (AGG_TRADES_MAX_WINDOW_MS + 1) + 1
    first = await _first_agg(exchange, symbol, start_ms, end_ms, hours)
    if first is None:
        return None
    first_id, first_last = _agg_ids(first)
    after = await _first_agg(exchange, symbol, end_ms + 1, now_ms, MAX_SEARCH_AFTER_END)
    if after is not None:
        last_id = _agg_ids(after)[0] - 1
    else:
        newest = await exchange.agg_trades(symbol, limit=1, background=True)
        last_id = _agg_ids(newest[-1])[1] if newest else first_last
    return first_id, max(last_id, first_last)


@dataclass(slots=True)
class HistoryPage:
    """What one historicalTrades answer means for a job."""

    next_id: int  # the first id still to fetch
    trades: list[TradeEvent] = field(default_factory=list)
    invalid: list[tuple[bytes, str]] = field(default_factory=list)
    missing: int = 0  # ids in the requested range the exchange skipped
    done: bool = False  # past the window's end, or the exchange has nothing further


def take_page(
    symbol: str,
    position: int,
    last_id: int,
    requested: int,
    items: Sequence[Any],
    start_ms: int,
    end_ms: int,
    processed_at: int,
) -> HistoryPage:
    """Interpret a `fromId=position&limit=requested` answer: the trades inside the window."""
    page = HistoryPage(next_id=position)
    highest = position - 1
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            page.invalid.append((orjson.dumps(item), "historical trade has no integer id"))
            continue
        if not position <= item_id <= last_id:
            continue
        page.missing += max(0, item_id - highest - 1)
        highest = max(highest, item_id)
        try:
            event = trade_from_rest(symbol, item, processed_at)
        except InvalidTrade as exc:
            page.invalid.append((orjson.dumps(item), str(exc)))
            continue
        if event.trade_time > end_ms:
            page.done = True  # ids grow with time: nothing further is inside the window
        elif event.trade_time >= start_ms:
            page.trades.append(event)
    page.next_id = highest + 1
    # A short page, or one without progress, means the exchange has nothing further (now).
    if len(items) < requested or highest < position or page.next_id > last_id:
        page.missing += max(0, last_id - page.next_id + 1) if not page.done else 0
        page.done = True
    return page


class RateMeter:
    """Trades per second over the last RATE_WINDOW_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, total: int) -> float | None:
        now = self._clock()
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        first_at, first = self._samples[0]
        if now - first_at <= 0:
            return None
        return round((total - first) / (now - first_at), 1)


class _Lost(Exception):
    """The job is no longer running for this runner (cancelled, or taken over)."""


class JobRun:
    """One job, run by one runner until it is done, failed, cancelled or the runner stops."""

    def __init__(self, runner: HistoryRunner, job: HistoryJob) -> None:
        self._runner = runner
        self.job = job
        self.progress = job.progress
        self._exchange = runner.exchange
        self._publisher = runner.publisher
        self._store = runner.store
        self._rate = RateMeter()
        # Pages published and not yet confirmed stored: (first id, last id, trades), oldest first.
        self._unconfirmed: deque[tuple[int, int, int]] = deque()
        self._trades_metric = metrics.TRADES_VALID.labels(job.symbol)
        self._history_metric = metrics.HISTORY_TRADES.labels(job.symbol)

    async def run(self) -> None:
        job = self.job
        if self.progress.position is None:
            window = await self._exchange_call(
                lambda: find_window(
                    self._exchange, job.symbol, job.start_time, job.end_time, _now_ms()
                )
            )
            if window is None:
                logger.info("history job %d: no %s trades in the window", job.id, job.symbol)
                await self._finish("done")
                return
            first_id, last_id = window
            self.progress = replace(
                self.progress,
                first_id=first_id,
                last_id=last_id,
                position=first_id,
                stored_to=first_id,
            )
            await self._save()
            logger.info(
                "history job %d: %s ids %d..%d (about %d trades)",
                job.id, job.symbol, first_id, last_id, last_id - first_id + 1,
            )  # fmt: skip
        else:
            p = self.progress
            assert p.position is not None and p.stored_to is not None
            if p.fetched > p.stored:
                self._unconfirmed.append((p.stored_to, p.position - 1, p.fetched - p.stored))
            logger.info("history job %d: resuming %s at id %d", job.id, job.symbol, p.position)
        await self._fetch_pages()
        await self._wait_stored()
        await self._finish("done")

    async def _fetch_pages(self) -> None:
        job, settings = self.job, self._runner.settings
        while True:
            p = self.progress
            assert p.position is not None and p.last_id is not None
            if p.position > p.last_id:
                return
            requested = min(HISTORICAL_TRADES_MAX_LIMIT, p.last_id - p.position + 1)
            items = await self._exchange_call(
                partial(
                    self._exchange.historical_trades,
                    job.symbol,
                    p.position,
                    requested,
                    background=True,
                )
            )
            page = take_page(
                job.symbol,
                p.position,
                p.last_id,
                requested,
                items,
                job.start_time,
                job.end_time,
                _now_ms(),
            )
            await self._publish(page, len(items))
            fetched = p.fetched + len(page.trades)
            if page.trades:
                self._unconfirmed.append((p.position, page.next_id - 1, len(page.trades)))
            self.progress = replace(
                p,
                position=page.next_id,
                fetched=fetched,
                missing=p.missing + page.missing,
                pages=p.pages + 1,
                rate=self._rate.add(fetched),
            )
            await self._confirm_stored(CONFIRM_PER_PAGE)
            await self._save()
            if self.progress.pages % settings.backfill_progress_pages == 0:
                logger.info(
                    "history job %d: %s fetched=%d stored=%d remaining=%s rate=%s/s",
                    job.id, job.symbol, self.progress.fetched, self.progress.stored,
                    self.progress.remaining, self.progress.rate,
                )  # fmt: skip
            if page.done:
                return

    async def _publish(self, page: HistoryPage, received: int) -> None:
        """Hand the page to Kafka and wait until Kafka has it: only then may it count as done."""
        metrics.TRADES_RECEIVED.labels(HISTORY_SOURCE).inc(received)
        for raw, reason in page.invalid:
            await self._publisher.dead_letter(raw, reason, HISTORY_SOURCE)
        for event in page.trades:
            await self._publisher.publish(event)
        if page.trades:
            self._trades_metric.inc(len(page.trades))
            self._history_metric.inc(len(page.trades))
        while not await self._publisher.drain(DRAIN_WAIT_S):
            logger.warning("history job %d: waiting for Kafka to acknowledge a page", self.job.id)

    async def _confirm_stored(self, at_most: int) -> bool:
        """Count the oldest unconfirmed pages in crypto_prices; whether any was confirmed."""
        job, progress = self.job, self.progress
        stored, stored_to, confirmed = progress.stored, progress.stored_to, False
        for _ in range(at_most):
            if not self._unconfirmed:
                break
            first_id, last_id, expected = self._unconfirmed[0]
            found = await self._store_call(
                partial(
                    self._store.stored_between,
                    job.symbol,
                    first_id,
                    last_id,
                    job.start_time,
                    job.end_time,
                )
            )
            if found < expected:
                break
            self._unconfirmed.popleft()
            stored, stored_to, confirmed = stored + found, last_id + 1, True
        self.progress = replace(progress, stored=stored, stored_to=stored_to)
        return confirmed

    async def _wait_stored(self) -> None:
        last_progress = time.monotonic()
        while self._unconfirmed:
            if await self._confirm_stored(len(self._unconfirmed)):
                last_progress = time.monotonic()
                await self._save()
                continue
            if time.monotonic() - last_progress > STORED_WAIT_S:
                left = sum(expected for _, _, expected in self._unconfirmed)
                self.progress = replace(
                    self.progress,
                    last_error=f"{left} published trades not stored after {STORED_WAIT_S:.0f} s "
                    "(is a consumer running?)",
                )
                logger.warning("history job %d: %s", self.job.id, self.progress.last_error)
                return
            await asyncio.sleep(STORED_POLL_S)

    async def _save(self) -> None:
        if not await self._store_call(
            lambda: self._store.save(self.job.id, self._runner.owner, self.progress)
        ):
            raise _Lost

    async def _finish(self, state: JobState) -> None:
        progress = self.progress
        if state == "done" and progress.last_id is not None and progress.position is not None:
            progress = replace(progress, position=max(progress.position, progress.last_id + 1))
        self.progress = progress
        if not await self._store_call(
            lambda: self._store.finish(self.job.id, self._runner.owner, state, progress)
        ):
            raise _Lost
        logger.info(
            "history job %d %s: %s fetched=%d stored=%d missing=%d pages=%d",
            self.job.id, state, self.job.symbol, progress.fetched, progress.stored,
            progress.missing, progress.pages,
        )  # fmt: skip

    async def fail(self, reason: str) -> None:
        self.progress = replace(
            self.progress, errors=self.progress.errors + 1, last_error=reason[:500]
        )
        await self._finish("failed")

    async def _exchange_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, waiting out an unavailable exchange (recorded as the job's last error)."""
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            try:
                return await call()
            except ExchangeUnavailable as exc:
                delay = max(exc.retry_after or 0.0, backoff.next_delay())
                self.progress = replace(
                    self.progress, errors=self.progress.errors + 1, last_error=str(exc)[:500]
                )
                logger.warning("history job %d waiting in_s=%.1f error=%s", self.job.id, delay, exc)
                await self._save()
                await asyncio.sleep(delay)

    async def _store_call(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, waiting out an unreachable job table (nothing is fetched meanwhile)."""
        backoff = Backoff(*RETRY_BACKOFF_S)
        while True:
            try:
                return await call()
            except JobStoreUnavailable as exc:
                delay = backoff.next_delay()
                logger.warning(
                    "history job %d cannot reach its table, retrying in_s=%.1f: %s",
                    self.job.id, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)


class HistoryRunner:
    """Claims history jobs from the store and runs them; `run()` until cancelled."""

    def __init__(
        self,
        settings: BinanceSettings,
        exchange: ExchangeClient,
        publisher: DurablePublisher,
        store: HistoryJobStore,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.exchange = exchange
        self.publisher = publisher
        self.store = store
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._runs: dict[int, tuple[JobRun, asyncio.Task[None]]] = {}
        self._store_down = False

    @property
    def running(self) -> list[int]:
        return sorted(self._runs)

    async def run(self) -> None:
        """Claim, renew and reap every `history_heartbeat_s`; hand the jobs back when stopped."""
        try:
            while True:
                try:
                    await self.tick()
                except JobStoreUnavailable as exc:
                    if not self._store_down:
                        logger.warning("history jobs: cannot reach their table: %s", exc)
                    self._store_down = True
                else:
                    self._store_down = False
                await asyncio.sleep(self.settings.history_heartbeat_s)
        finally:
            await self.close()

    async def tick(self) -> None:
        """One round: forget finished runs, stop cancelled ones, claim free slots."""
        for job_id in [i for i, (_, task) in self._runs.items() if task.done()]:
            del self._runs[job_id]
        if self._runs:
            mine = await self.store.renew(self.owner, list(self._runs))
            for job_id in set(self._runs) - mine:
                _, task = self._runs.pop(job_id)
                if not task.done():
                    task.cancel()
                    logger.info("history job %d: cancelled (or taken over); stopping", job_id)
        free = self.settings.history_jobs_at_once - len(self._runs)
        if free > 0:
            for job in await self.store.claim(self.owner, free, self.settings.history_stale_s):
                self._start(job)
        metrics.HISTORY_JOBS_RUNNING.set(len(self._runs))
        counts = await self.store.count_by_state()
        for state in ("queued", "running", "done", "failed", "cancelled"):
            metrics.HISTORY_JOBS.labels(state).set(counts.get(state, 0))

    def _start(self, job: HistoryJob) -> None:
        run = JobRun(self, job)
        task = asyncio.create_task(self._run_job(run), name=f"history-{job.id}")
        self._runs[job.id] = (run, task)
        logger.info(
            "history job %d claimed: %s %d..%d owner=%s",
            job.id, job.symbol, job.start_time, job.end_time, self.owner,
        )  # fmt: skip

    async def _run_job(self, run: JobRun) -> None:
        try:
            await run.run()
        except _Lost:
            logger.info("history job %d is no longer ours; stopped", run.job.id)
        except ExchangeError as exc:
            logger.warning("history job %d failed: %s", run.job.id, exc)
            with contextlib.suppress(_Lost):
                await run.fail(str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("history job %d failed", run.job.id)
            with contextlib.suppress(_Lost, JobStoreUnavailable):
                await run.fail(f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        """Stop every run and queue their jobs again, for this or another instance to resume."""
        runs, self._runs = self._runs, {}
        for _, task in runs.values():
            task.cancel()
        await asyncio.gather(*(task for _, task in runs.values()), return_exceptions=True)
        metrics.HISTORY_JOBS_RUNNING.set(0)
        if runs:
            with contextlib.suppress(Exception):
                # Bounded: a stop must not hang on an unreachable database (the claims then
                # go stale and are taken over after history_stale_s).
                await asyncio.wait_for(self.store.release(self.owner, list(runs)), 5.0)
                logger.info("history jobs handed back: %s", sorted(runs))
