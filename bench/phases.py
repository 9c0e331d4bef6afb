"""The measurements taken on a running service: fresh E2E rate, API latency idle and under
ingest, E2E latency at a steady rate. `LiveSession` holds what they share: the feed (the
simulator), the service process and the probe on its database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from bench.config import BenchConfig
from bench.cpu import CpuMeter
from bench.feed import Feed
from bench.loadgen import LoadGenerator
from bench.probe import Poll, StoredProbe, visibility_latencies
from bench.service import ServiceProcess
from bench.stats import (
    bucket_delta,
    fraction_at_most,
    histogram_buckets,
    histogram_quantile,
    summary,
)
from bench.streamclients import StreamClients
from pipeline.core.settings import KafkaSettings

log = logging.getLogger("bench")

E2E_HISTOGRAM = "pipeline_e2e_latency_seconds"
RAMP_S = 0.5  # ingest runs this long before the under-ingest API window opens
LATENCY_TARGET_S = 0.1


@dataclass
class LiveSession:
    config: BenchConfig
    feed: Feed
    service: ServiceProcess
    probe: StoredProbe
    cpu: CpuMeter

    async def _source(self) -> tuple[int, int]:
        """Frames received and reconnects so far, from the service's /pipeline/status."""
        source = (await self.service.status()).get("source") or {}
        return int(source.get("received", 0)), int(source.get("reconnects", 0))

    async def _reconnects_since(self, before: int) -> int:
        """Reconnects of the service's exchange connections since `before`; warns if any."""
        reconnects = (await self._source())[1] - before
        if reconnects:
            log.warning(
                "  the service's exchange connection dropped %d time(s) during this phase "
                "(see its log): trades sent meanwhile come back only through gap backfill",
                reconnects,
            )
        return reconnects

    async def fresh_e2e(self, n: int, *, profile: bool = False) -> dict[str, Any]:
        """Flood n trades; unique rows stored ÷ (first frame sent → last row stored)."""
        received_before, reconnects_before = await self._source()
        targets = self.feed.prepare(n)
        if profile:
            self.service.profile_start()
        self.cpu.start()
        flood_task = asyncio.create_task(self.feed.flood())
        try:
            stored_at = await self.probe.wait_reached(
                targets, self.config.progress_poll_s, self.config.phase_timeout_s
            )
        finally:
            flood = await flood_task
        cpu = self.cpu.stop()
        _log_cpu(cpu)
        profile_path = await self.service.profile_stop("e2e") if profile else None
        frames = (await self._source())[0] - received_before
        seconds = stored_at - flood.started
        log.info(
            "  %d trades (%d frames) stored in %.2f s: %.0f rows/s (frames sent in %.2f s)",
            flood.trades, frames, seconds, flood.trades / seconds, flood.sent - flood.started,
        )  # fmt: skip
        return {
            "trades": flood.trades,
            "frames": frames,
            "seconds": round(seconds, 3),
            "send_seconds": round(flood.sent - flood.started, 3),
            "rows_per_s": round(flood.trades / seconds),
            "frames_per_s": round(frames / seconds),
            "first_ids": {s: t - flood.trades // len(targets) + 1 for s, t in targets.items()},
            "last_ids": targets,
            "cpu_cores": cpu,
            "reconnects": await self._reconnects_since(reconnects_before),
            "profile": str(profile_path) if profile_path else None,
        }

    def _load(self, path: str) -> LoadGenerator:
        config = self.config
        return LoadGenerator(
            self.service.port, path, config.api_rate, config.api_connections, config.api_window_s
        )

    async def api_idle(self, path: str, *, profile: bool = False) -> dict[str, Any]:
        """GET `path` at the configured rate while nothing is ingested."""
        load = self._load(path)
        try:
            await load.start()
            if profile:
                self.service.profile_start()
            self.cpu.start()
            result = await load.run(self.config.api_window_s + 60)
            result["cpu_cores"] = self.cpu.stop()
            result["api_realtime"] = self.service.realtime()
        finally:
            await load.close()
        _log_cpu(result["cpu_cores"])
        if profile:
            result["profile"] = str(await self.service.profile_stop("api-idle"))
        _log_api("idle", result)
        return result

    async def api_under_ingest(self, path: str, e2e_rows_per_s: float) -> dict[str, Any]:
        """GET `path` while a flood sized to outlast the window goes through the pipeline."""
        window = self.config.api_window_s
        n = max(self.config.n, int(e2e_rows_per_s * (window + 2 * RAMP_S + 1)))
        load = self._load(path)
        reconnects_before = (await self._source())[1]
        try:
            await load.start()
            targets = self.feed.prepare(n)
            flood_task = asyncio.create_task(self.feed.flood())
            stored_task = asyncio.create_task(
                self.probe.wait_reached(
                    targets, self.config.progress_poll_s, self.config.phase_timeout_s
                )
            )
            try:
                await asyncio.sleep(RAMP_S)
                opened = time.perf_counter()
                self.cpu.start()
                result = await load.run(window + 60)
                result["cpu_cores"] = self.cpu.stop()
                result["api_realtime"] = self.service.realtime()
                _log_cpu(result["cpu_cores"])
                stored_at = await stored_task
            finally:
                flood = await flood_task
                stored_task.cancel()
        finally:
            await load.close()
        result["reconnects"] = await self._reconnects_since(reconnects_before)
        result["ingest_trades"] = flood.trades
        result["ingest_rows_per_s"] = round(flood.trades / (stored_at - flood.started))
        # The window counts as "during ingest" only if the last row landed after it closed.
        result["ingest_covered_window"] = stored_at >= opened + window
        _log_api("during ingest", result)
        return result

    async def steady_latency(self) -> dict[str, Any]:
        """Trades at `latency_rate` msg/s for `latency_window_s`; per trade, the first poll that
        sees it stored minus its trade time. The service's own histogram, for comparison."""
        config = self.config
        after = self.feed.last_ids()
        before = histogram_buckets(await self.service.metrics_text(), E2E_HISTOGRAM)
        polls: list[Poll] = []
        targets: dict[str, int] = {}  # filled in when the steady phase ends
        poller = asyncio.create_task(
            self.probe.wait_reached(
                targets,
                config.latency_poll_s,
                config.latency_window_s + config.phase_timeout_s,
                polls,
            )
        )
        try:
            targets.update(await self.feed.steady(config.latency_rate, config.latency_window_s))
            await poller
        finally:
            poller.cancel()
        buckets = bucket_delta(
            histogram_buckets(await self.service.metrics_text(), E2E_HISTOGRAM), before
        )
        rows = await self.probe.trade_times(after)
        measured = summary(visibility_latencies(polls, rows))
        histogram = {
            "source": f"{E2E_HISTOGRAM} bucket deltas from GET /metrics (interpolated)",
            "count": round(buckets.get(float("inf"), 0)),
            "p50": round(histogram_quantile(buckets, 0.50) * 1000, 1),
            "p95": round(histogram_quantile(buckets, 0.95) * 1000, 1),
            "p99": round(histogram_quantile(buckets, 0.99) * 1000, 1),
            "share_within_100ms": round(fraction_at_most(buckets, LATENCY_TARGET_S), 4),
        }
        result = {
            "method": (
                "per trade: wall time of the first PostgreSQL poll (every "
                f"{config.latency_poll_s * 1000:.0f} ms) that sees its id stored, minus its "
                "trade_time (an upper bound, within one poll interval)"
            ),
            "rate_msgs_per_s": config.latency_rate,
            "window_s": config.latency_window_s,
            "trades": len(rows),
            "visible_ms": measured,
            "histogram_ms": histogram,
        }
        log.info(
            "  %d trades at %d msg/s: p50 %.1f ms, p95 %.1f ms, p99 %.1f ms (histogram p99 ≈ %.1f ms)",
            len(rows), config.latency_rate, measured.get("p50", float("nan")),
            measured.get("p95", float("nan")), measured.get("p99", float("nan")),
            histogram["p99"],
        )  # fmt: skip
        return result

    async def push_feed(self, kafka: KafkaSettings) -> dict[str, Any]:
        """`stream_clients` SSE clients on the service (docs/perf.md, "The push feed").

        1. A steady `stream_rate` msg/s without clients, then with them (each on one symbol,
           every trade): events delivered per second, latency trade → client next to trade →
           direct Kafka reader, and the service's added CPU per delivered event.
        2. A flood of n trades without clients, then with as many dashboards connected (every
           symbol, conflated): E2E rate with ÷ without.
        """
        config = self.config
        result: dict[str, Any] = {"clients": config.stream_clients}
        window = config.stream_window_s
        self.cpu.start()
        await self.feed.steady(config.stream_rate, window)
        alone = self.cpu.stop()
        bots = StreamClients(
            self.service.port, config.stream_clients, self.feed.symbols, each="one"
        )
        kafka_reader = StreamClients(
            self.service.port,
            0,
            self.feed.symbols,
            bootstrap=kafka.bootstrap_servers,
            topic=kafka.topic,
        )
        try:
            await kafka_reader.start(config.phase_timeout_s)
            await bots.start(config.phase_timeout_s)
            meter = CpuMeter(
                {
                    **self.cpu.processes,
                    "clients": (bots.pid, False),
                    "reader": (kafka_reader.pid, False),
                }
            )
            await bots.begin()
            await kafka_reader.begin()
            meter.start()
            await self.feed.steady(config.stream_rate, window)
            cores = meter.stop()
            steady = await bots.end()
            direct = await kafka_reader.end()
        finally:
            await bots.close()
            await kafka_reader.close()
        steady["kafka_direct_ms"] = direct["kafka_direct_ms"]
        p99, direct_p99 = steady["latency_ms"].get("p99"), direct["kafka_direct_ms"].get("p99")
        steady["added_p99_ms"] = (
            round(p99 - direct_p99, 1) if p99 is not None and direct_p99 is not None else None
        )
        delivered = sum(steady["events"].get(k, 0) for k in ("trade", "backfill"))
        added_cores = cores["service"] - alone["service"]
        steady["cpu_cores"] = cores
        steady["cpu_cores_without_clients"] = alone
        steady["cpu_us_per_event"] = (
            round(added_cores * cores["wall_s"] / delivered * 1e6, 2) if delivered else None
        )
        result["steady"] = steady
        log.info(
            "  %d clients at %d msg/s: %s events/s delivered, p99 %.1f ms (Kafka direct %.1f ms), "
            "%.2f µs service CPU per event, closes %s",
            config.stream_clients, config.stream_rate, steady["events_per_s"],
            steady["latency_ms"].get("p99", float("nan")),
            steady["kafka_direct_ms"].get("p99", float("nan")),
            steady["cpu_us_per_event"] or float("nan"), steady["closes"],
        )  # fmt: skip
        without = await self._timed_flood(config.n)
        dashboards = StreamClients(
            self.service.port,
            config.stream_clients,
            self.feed.symbols,
            each="all",
            conflate=config.stream_conflate,
        )
        try:
            await dashboards.start(config.phase_timeout_s)
            await dashboards.begin()
            meter = CpuMeter({**self.cpu.processes, "clients": (dashboards.pid, False)})
            meter.start()
            with_clients = await self._timed_flood(config.n)
            with_clients["cpu_cores"] = meter.stop()
            with_clients["clients"] = await dashboards.end()
        finally:
            await dashboards.close()
        result["flood_without_clients"] = without
        result["flood_with_clients"] = with_clients
        log.info(
            "  flood: %d rows/s without clients, %d rows/s with %d dashboards (%s events/s to "
            "them, closes %s)",
            without["rows_per_s"], with_clients["rows_per_s"], config.stream_clients,
            with_clients["clients"]["events_per_s"], with_clients["clients"]["closes"],
        )  # fmt: skip
        return result

    async def _timed_flood(self, n: int) -> dict[str, Any]:
        targets = self.feed.prepare(n)
        flood_task = asyncio.create_task(self.feed.flood())
        try:
            stored_at = await self.probe.wait_reached(
                targets, self.config.progress_poll_s, self.config.phase_timeout_s
            )
        finally:
            flood = await flood_task
        seconds = stored_at - flood.started
        return {
            "trades": flood.trades,
            "seconds": round(seconds, 3),
            "rows_per_s": round(flood.trades / seconds),
        }


def _log_cpu(cores: dict[str, float]) -> None:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in cores.items() if k not in ("wall_s", "machine"))
    log.info("  CPU cores used: %s (machine %.2f)", parts, cores["machine"])


def _log_api(label: str, result: dict[str, Any]) -> None:
    latency = result["latency_ms"]
    log.info(
        "  API %s: %s req/s achieved of %s offered, p50 %.1f ms, p99 %.1f ms, statuses %s",
        label, result["achieved_rps"], result["offered_rps"], latency.get("p50", float("nan")),
        latency.get("p99", float("nan")), result["statuses"],
    )  # fmt: skip
