"""StreamHub: this process's push feed — the topic tailed once, fanned out to every client.

The feed is pipeline.kafka.tail.TradeTail: a consumer of this process's own, without a group,
reading from the end of the topic. A trade reaches clients only after Kafka acknowledged it to
the producer (it is read back from the topic), so a pushed trade is never one that is lost later.
The tail runs while clients are connected and stops when none has been for TAIL_IDLE_S.

Fan-out: each batch the tail yields is handed to the clients synchronously, without awaiting
anything: every client takes an event into its own bounded buffer or is closed as too slow
(api.stream.client), so no client can hold up the feed, ingest or another client. A trade is
rendered once however many clients get it.

The seam — a client gets every trade exactly once, across reconnects:

1. The client registers. From that moment the hub keeps every event of its symbols for it
   (`pending`), and it notes the feed's position then: the next offset per partition
   (`seam`). Everything below the seam went out before the client was there.
2. It waits until the sink has committed the seam (pipeline.kafka.tail.SinkProgress): then every
   record below it is in the table (the sink commits after PostgreSQL did).
3. It reads from the table what the client lacks (api.stream.positions: ids above its high and
   inside its holes; a new client starts at the newest stored id) and sends it in id order.
4. It goes live, at once: the pending events pass through the client's position (a trade the
   table already gave it is a duplicate there), and from then on every event of the feed does.

Nothing falls between 2 and 4: a record is either below the seam (in the table when it is read)
or at or above it (pending). Should the pending events outgrow the client's buffer while the
table is read, they are dropped and the seam moves to the feed's position at that point; the
next round reads the table again from where the client got to.

Conflated clients (`?conflate=`) share one sampler per interval: each tick it hands them the
newest trade of each symbol that arrived in that interval (newer than what they were shown:
backfilled trades never reach them). Their catch-up is the newest stored trade per symbol; they
do not wait for the sink.

A feed that loses its place (a reset of the tail) closes every stream with `feed_reset`: the
clients resume from the table, which is exact. Shutdown closes every stream with `shutdown`
first (on SIGTERM/SIGINT, before uvicorn waits for open responses to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from api.reads.prices import PriceReads
from api.stream.client import CloseReason, StreamClient
from api.stream.events import FeedEvent
from api.stream.positions import BACKFILL, NO_TRADE, SymbolPosition
from api.stream.sampler import Sampler
from pipeline.core import metrics
from pipeline.core.errors import InvalidTrade
from pipeline.core.retry import Backoff
from pipeline.core.settings import Settings
from pipeline.kafka.tail import SinkProgress, TailBatch, TradeTail

logger = logging.getLogger(__name__)

TAIL_IDLE_S = 30.0  # no client for this long: the tail stops reading
HOUSEKEEPING_S = 1.0
STORED_POLL_S = 0.05  # how often the sink's committed offsets are read while a stream waits
RESUME_PAGE = 1_000  # trades per table read while catching up
MAX_SEAM_ROUNDS = 5  # the table read again this often for one client before it counts as slow
CLOSE_GRACE_S = 5.0  # a closed client's connection gets this long to write its last event
TAIL_RETRY_S = (1.0, 30.0)
MAX_BATCH = 2_000  # trades fanned out in one go


class TooManyClients(Exception):
    pass


class StreamUnavailable(Exception):
    pass


class StreamHub:
    def __init__(self, settings: Settings, reads: PriceReads) -> None:
        self._settings = settings.stream
        self._kafka = settings.kafka
        self._reads = reads
        self._clients: set[StreamClient] = set()
        self._live: dict[str, set[StreamClient]] = {}
        self._catching: dict[str, set[StreamClient]] = {}
        self._samplers: dict[float, Sampler] = {}
        self._sampled: dict[str, int] = {}  # symbol → conflated clients that want it
        self._keys: dict[bytes, str] = {}  # Kafka keys some client wants → their symbol
        self._wanted: dict[str, int] = {}  # symbol → how many clients want it
        self._positions: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._tail_task: asyncio.Task[None] | None = None
        self._idle_since = time.monotonic()
        self._progress = SinkProgress(settings.kafka)
        self._stored: dict[int, int] = {}
        self._stored_read: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._closing = False
        self._dropped: list[StreamClient] = []  # closed, still to be taken out of the indexes
        self._sent = {"trade": 0, "backfill": 0}
        self._reported = {"trade": 0, "backfill": 0}
        metrics.on_collect(self._report_counts)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._housekeeping = asyncio.create_task(self._keep_house(), name="stream-housekeeping")

    def shut_down_streams(self) -> None:
        """Refuse new streams and close every open one (`shutdown`)."""
        self._closing = True
        for client in list(self._clients):
            self._close(client, CloseReason.SHUTDOWN)

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        self.shut_down_streams()
        connections = {c.task for c in self._clients if c.task is not None and not c.task.done()}
        if connections:
            await asyncio.wait(connections, timeout=grace_s)
        for client in list(self._clients):
            client.abort()
        tasks = [
            task
            for task in (self._tail_task, self._housekeeping, self._stored_read)
            if task is not None
        ]
        tasks += [s.task for s in self._samplers.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._progress.close()

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- a stream's life -----------------------------------------------------------------------

    def admit(self, client: StreamClient) -> None:
        """Count the client in, or raise TooManyClients / StreamUnavailable."""
        if self._closing:
            raise StreamUnavailable("the server is shutting down")
        if len(self._clients) >= self._settings.max_clients:
            raise TooManyClients(
                f"{self._settings.max_clients} streams are open on this server "
                "(stream.max_clients); try again later"
            )
        self._clients.add(client)
        client.on_close = self._closed
        metrics.STREAM_CLIENTS.set(len(self._clients))

    def begin(
        self, client: StreamClient, resume: dict[str, SymbolPosition] | None
    ) -> asyncio.Task[None]:
        """Start the client's stream: its catch-up runs as a task of its own."""
        client.catch_up = asyncio.create_task(self._begin(client, resume), name="stream-catch-up")
        return client.catch_up

    def leave(self, client: StreamClient) -> None:
        """The connection ended: forget the client."""
        client.close(CloseReason.GONE)
        self._forget(client)

    async def _begin(self, client: StreamClient, resume: dict[str, SymbolPosition] | None) -> None:
        deadline = time.monotonic() + self._settings.resume_timeout_s
        try:
            if not await self._feed_ready(deadline):
                self._close(client, CloseReason.FEED_UNAVAILABLE)
                return
            if client.conflate_s is not None:
                await self._begin_sampled(client, resume)
            else:
                await self._begin_exact(client, resume, deadline)
        except Exception as exc:
            # The database failed a read (it is down): the client retries from where it got to.
            logger.warning("stream catch-up failed: %s: %s", type(exc).__name__, exc)
            self._close(client, CloseReason.RESUME_UNAVAILABLE)

    async def _begin_exact(
        self,
        client: StreamClient,
        resume: dict[str, SymbolPosition] | None,
        deadline: float,
    ) -> None:
        self._watch(client, self._catching)
        client.seam = dict(self._positions)
        started = False
        budget = self._settings.max_resume_trades
        rounds = 0
        while True:
            if not await self._stored_up_to(client.seam, deadline):
                self._close(client, CloseReason.RESUME_UNAVAILABLE)
                return
            if not started:
                await self._starting_positions(client, resume)
                client.ready(resumed=resume is not None)
                started = True
            budget = await self._from_table(client, budget)
            if client.closed is not None:
                return
            if budget < 0:
                self._close(client, CloseReason.RESUME_LIMIT)
                return
            if not client.overflowed:
                break
            rounds += 1
            if rounds >= MAX_SEAM_ROUNDS:
                self._close(client, CloseReason.SLOW)
                return
            client.overflowed = False  # the seam moved when the hub stopped collecting
            deadline = time.monotonic() + self._settings.resume_timeout_s
        self._go_live(client)

    async def _starting_positions(
        self, client: StreamClient, resume: dict[str, SymbolPosition] | None
    ) -> None:
        given = resume or {}
        fresh = [symbol for symbol in client.symbols if symbol not in given]
        positions = {s: p for s, p in given.items() if s in client.symbols}
        if fresh:
            newest = await self._reads.newest_trade_ids(fresh)
            for symbol in fresh:
                trade_id = newest.get(symbol)
                positions[symbol] = SymbolPosition(NO_TRADE if trade_id is None else trade_id)
        client.start_at(positions)

    async def _from_table(self, client: StreamClient, budget: int) -> int:
        """Send the stored trades the client lacks, symbol by symbol in id order; the budget
        left (-1: it ran out, more may be there)."""
        timeout = self._settings.resume_timeout_s
        # A page fits in the half of the buffer that room() waits for.
        page = max(1, min(RESUME_PAGE, client.buffer // 2))
        for index, symbol in enumerate(client.symbols):
            for first, last in client.positions[index].missing():
                while first <= last:
                    if not await client.room(timeout):
                        self._close(client, CloseReason.SLOW)
                    if client.closed is not None:
                        return budget
                    if budget <= 0:
                        return -1
                    asked = min(page, budget)
                    rows = await self._reads.trades_by_id(symbol, first, last, asked)
                    for row in rows:
                        kind = client.offer(FeedEvent.from_stored(row))
                        if kind is not None:
                            self._sent[kind] += 1
                    budget -= len(rows)
                    if len(rows) < asked:
                        break
                    first = rows[-1]["trade_id"] + 1
        return budget

    def _go_live(self, client: StreamClient) -> None:
        """Past the seam: the events kept since, then the feed itself (no await in between)."""
        pending, client.pending = client.pending or [], None
        for event in pending:
            kind = client.offer(event)
            if kind is not None:
                self._sent[kind] += 1
        self._unwatch(client, self._catching)
        if client.closed is None:
            self._watch(client, self._live)
            client.live = True

    async def _begin_sampled(
        self, client: StreamClient, resume: dict[str, SymbolPosition] | None
    ) -> None:
        assert client.conflate_s is not None
        client.pending = None
        positions = {
            s: SymbolPosition(p.high) for s, p in (resume or {}).items() if s in client.symbols
        }
        client.start_at(positions)
        client.ready(resumed=resume is not None)
        sampler = self._samplers.get(client.conflate_s)
        if sampler is None:
            sampler = self._samplers[client.conflate_s] = Sampler(client.conflate_s)
            sampler.task = asyncio.create_task(sampler.run(self._count_sampled))
        sampler.add(client)
        client.sampled = True
        for symbol in client.symbols:
            self._sampled[symbol] = self._sampled.get(symbol, 0) + 1
            self._want(symbol, 1)
        for symbol in client.symbols:  # the newest stored trade, unless the feed brings newer
            row = await self._reads.newest_trade_by_id(symbol)
            if row is not None:
                self._sent["trade"] += client.offer_latest(FeedEvent.from_stored(row))
        client.live = True

    def _count_sampled(self, count: int) -> None:
        self._sent["trade"] += count

    # -- the feed ------------------------------------------------------------------------------

    async def _feed_ready(self, deadline: float) -> bool:
        if self._tail_task is None or self._tail_task.done():
            self._tail_task = asyncio.create_task(self._run_tail(), name="stream-tail")
        if self._ready.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                await self._ready.wait()
        return self._ready.is_set()

    async def _run_tail(self) -> None:
        backoff = Backoff(*TAIL_RETRY_S)
        # A batch is handed out at once, so it must fit in a client's buffer with room to spare.
        batch_size = max(1, min(MAX_BATCH, self._settings.client_buffer // 2))
        while True:
            tail = TradeTail(self._kafka, self._keys.__contains__, batch_size)
            try:
                async for batch in tail.batches():
                    self._fan_out(batch)
                    backoff.reset()
                    # The connections write what they were given before the next batch comes:
                    # a fetched batch is returned without waiting, and would follow at once.
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stream feed failed; restarting it")
            finally:
                self._ready.clear()
                self._positions = {}
            # A new tail starts at the end: what the old one had not delivered is a gap.
            for client in list(self._clients):
                self._close(client, CloseReason.FEED_RESET)
            await backoff.pause()

    def _fan_out(self, batch: TailBatch) -> None:
        if batch.reset:
            logger.warning("stream feed restarted at the end of the topic: closing the streams")
            for client in list(self._clients):
                self._close(client, CloseReason.FEED_RESET)
        now_ms = time.time() * 1000
        lags: list[float] = []
        trades = backfills = 0
        overflowed: list[StreamClient] = []
        live, catching, sampled, samplers = (
            self._live,
            self._catching,
            self._sampled,
            self._samplers,
        )
        keys = self._keys
        for record in batch.records:
            symbol = keys.get(record.key or b"")
            if symbol is None:
                continue
            receivers = live.get(symbol)
            waiting = catching.get(symbol)
            if receivers or waiting:
                try:
                    row = record.row()
                except InvalidTrade:
                    continue  # not a trade: the sink dead-letters it
                if row[0] != symbol:  # keyed otherwise than its symbol: follow the trade
                    symbol = row[0]
                    receivers = live.get(symbol)
                    waiting = catching.get(symbol)
                event = FeedEvent.from_row(row)
                lags.append(max(now_ms - record.timestamp_ms, 0) / 1000)
                if waiting:
                    for client in waiting:
                        if client.collect(event):
                            overflowed.append(client)
                if receivers:
                    for client in receivers:
                        kind = client.offer(event)
                        if kind is not None:
                            if kind is BACKFILL:
                                backfills += 1
                            else:
                                trades += 1
            if symbol in sampled:
                newest = record.trade_id()
                for sampler in samplers.values():
                    if symbol in sampler.by_symbol:
                        sampler.keep(symbol, record, newest)
        self._positions = batch.positions
        if not self._ready.is_set():
            self._ready.set()
        self._sent["trade"] += trades
        self._sent["backfill"] += backfills
        if lags:
            metrics.observe_many(metrics.STREAM_FANOUT_LAG, lags)
        # Clients that overflowed while catching up: what they dropped lies below this seam.
        for client in overflowed:
            client.seam = dict(self._positions)
            client.pending = []
        dropped, self._dropped = self._dropped, []
        for client in dropped:
            self._forget(client)

    # -- the sink's progress -------------------------------------------------------------------

    async def _stored_up_to(self, seam: dict[int, int], deadline: float) -> bool:
        """Wait until the sink has committed `seam` in every partition; False at the deadline."""
        while True:
            stored = self._stored
            if all(stored.get(p, 0) >= offset for p, offset in seam.items() if offset > 0):
                return True
            if time.monotonic() >= deadline:
                return False
            if self._stored_read is None or self._stored_read.done():
                self._stored_read = asyncio.create_task(self._read_stored(list(seam)))
            await asyncio.wait({self._stored_read}, timeout=max(deadline - time.monotonic(), 0))

    async def _read_stored(self, partitions: list[int]) -> None:
        """One read of the committed offsets (shared by every stream waiting), paced."""
        wait = self._progress.read_at + STORED_POLL_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        partitions = sorted(set(partitions) | set(self._positions))
        try:
            self._stored = await self._progress.committed(partitions)
        except Exception as exc:
            logger.debug("cannot read the sink's committed offsets: %s", exc)
            await asyncio.sleep(STORED_POLL_S)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _close(self, client: StreamClient, reason: CloseReason) -> None:
        client.close(reason)

    def _closed(self, client: StreamClient, reason: CloseReason) -> None:
        """A client was closed (by the hub, or by itself on overflow): count it, and bound how
        long its connection may take to say so (one that does not read never will)."""
        self._dropped.append(client)
        if reason is CloseReason.GONE:
            return
        metrics.STREAM_CLIENTS_DROPPED.labels(reason.value).inc()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, client.abort)

    def _watch(self, client: StreamClient, index: dict[str, set[StreamClient]]) -> None:
        for symbol in client.symbols:
            index.setdefault(symbol, set()).add(client)
            self._want(symbol, 1)

    def _unwatch(self, client: StreamClient, index: dict[str, set[StreamClient]]) -> None:
        for symbol in client.symbols:
            clients = index.get(symbol)
            if clients is not None and client in clients:
                clients.discard(client)
                if not clients:
                    del index[symbol]
                self._want(symbol, -1)

    def _want(self, symbol: str, change: int) -> None:
        count = self._wanted.get(symbol, 0) + change
        if count > 0:
            self._wanted[symbol] = count
            self._keys[symbol.encode()] = symbol
        else:
            self._wanted.pop(symbol, None)
            self._keys.pop(symbol.encode(), None)

    def _forget(self, client: StreamClient) -> None:
        if client not in self._clients:
            return
        self._clients.discard(client)
        metrics.STREAM_CLIENTS.set(len(self._clients))
        self._unwatch(client, self._live)
        self._unwatch(client, self._catching)
        if client.catch_up is not None and not client.catch_up.done():
            client.catch_up.cancel()
        if client.sampled and client.conflate_s is not None:
            client.sampled = False
            sampler = self._samplers.get(client.conflate_s)
            if sampler is not None:
                sampler.remove(client)
                for symbol in client.symbols:
                    remaining = self._sampled.get(symbol, 0) - 1
                    if remaining > 0:
                        self._sampled[symbol] = remaining
                    else:
                        self._sampled.pop(symbol, None)
                    self._want(symbol, -1)
                if not sampler.by_symbol and sampler.task is not None:
                    sampler.task.cancel()
                    del self._samplers[client.conflate_s]
        if not self._clients:
            self._idle_since = time.monotonic()

    async def _keep_house(self) -> None:
        every_s = self._settings.heartbeat_s
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = time.monotonic()
            dropped, self._dropped = self._dropped, []
            for client in dropped:
                self._forget(client)
            for client in list(self._clients):
                if client.closed is None:
                    client.heartbeat(now, every_s)
            tail = self._tail_task
            if (
                not self._clients
                and tail is not None
                and not tail.done()
                and now - self._idle_since >= TAIL_IDLE_S
            ):
                tail.cancel()
                self._tail_task = None

    def _report_counts(self) -> None:
        for kind, count in self._sent.items():
            metrics.STREAM_EVENTS_SENT.labels(kind).inc(count - self._reported[kind])
            self._reported[kind] = count
