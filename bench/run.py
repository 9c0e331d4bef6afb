"""One benchmark run: the variants (symbol sets), baselines, backlog replay and the checks.

The first symbol set gets every phase; further sets (e.g. 100 symbols) the fresh E2E rate with
its checks. Every phase runs alone on the machine: the baselines and the replay start after the
E2E service stopped. Any failed check is recorded in `failures` (the run is then not `correct`).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from bench import baselines
from bench.config import RESULTS_DIR, BenchConfig
from bench.feed import Feed, symbols_for
from bench.history import history_phase
from bench.phases import LiveSession
from bench.probe import RowCheck, StoredProbe, wait_lag_zero
from bench.report import machine_info
from bench.service import ServiceProcess
from bench.stack import BenchStack
from pipeline.core.settings import PROJECT_ROOT, KafkaSettings, Settings, load_settings
from pipeline.kafka.admin import ensure_topics

log = logging.getLogger("bench")

OVERRIDE_PREFIXES = ("KAFKA__", "DATABASE__", "BINANCE__", "API__")


class Run:
    """Collects figures and failures while the phases run."""

    def __init__(self, config: BenchConfig, stack: BenchStack, log_dir: Path) -> None:
        self.config = config
        self.stack = stack
        self.log_dir = log_dir
        self.failures: list[str] = []
        self.checks: list[str] = []
        self.rss_mb: dict[str, float] = {}

    def service_env(
        self, database: str, topic: str, group: str, feed: Feed, roles: str
    ) -> dict[str, str]:
        return {
            "SETTINGS_FILE": str(PROJECT_ROOT / "config" / "settings.yaml"),
            "KAFKA_BOOTSTRAP_SERVERS": self.stack.bootstrap_servers,
            "DATABASE_URL": self.stack.url_for(database),
            "KAFKA_TOPIC": topic,
            "KAFKA__GROUP_ID": group,
            "SYMBOLS": ",".join(feed.symbols),
            "BINANCE_WS_URL": feed.ws_url,
            "BINANCE_REST_URL": feed.rest_url,
            "PIPELINE_ROLES": roles,
        }

    def settings(self, env: dict[str, str]) -> Settings:
        return load_settings({**os.environ, **env})

    def record(self, check: RowCheck) -> None:
        (self.checks if check.ok else self.failures).append(check.describe())

    async def check_lag(self, kafka: KafkaSettings) -> int:
        lag = await wait_lag_zero(kafka, self.config.phase_timeout_s / 4)
        message = f"group {kafka.group_id}: consumer lag {lag} at the end"
        (self.checks if lag == 0 else self.failures).append(message)
        return lag

    async def stop(self, service: ServiceProcess) -> None:
        code = await service.stop()
        self.rss_mb[service.name] = service.rss_mb_peak
        # uvicorn re-raises the SIGTERM it handled after a clean shutdown.
        if code not in (0, -signal.SIGTERM, None):
            self.failures.append(f"service {service.name} exited with code {code}")

    async def variant(self, count: int, primary: bool) -> dict[str, Any]:
        """The E2E service for `count` symbols; on the primary variant also API, latency,
        baselines and replay."""
        config, stack = self.config, self.stack
        label = f"s{count}"
        database = await stack.fresh_database(f"{label}_e2e")
        topic = stack.topic(label)
        result: dict[str, Any] = {"symbols": count}
        async with Feed(symbols_for(count), config.duplicate_ratio, config.seed) as feed:
            env = self.service_env(
                database, topic, f"{stack.prefix}_{label}_sink", feed, "producer,consumer"
            )
            settings = self.settings(env)
            # The service creates its topics itself, but its consumer may subscribe first and
            # then wait for a metadata refresh (5 min) to see them: the bench creates them.
            await ensure_topics(settings.kafka)
            profile = RESULTS_DIR if config.profile and primary else None
            service = ServiceProcess(
                f"e2e-{label}", env, self.log_dir / f"e2e-{label}.log", profile
            )
            log.info("[%s] starting the service (producer,consumer) on %d symbols", label, count)
            try:
                await service.start(config.phase_timeout_s)
                await feed.wait_subscribed(config.phase_timeout_s)
                await service.wait_assigned(settings.kafka.partitions, config.phase_timeout_s)
                await service.wait_ready(config.phase_timeout_s)
                async with StoredProbe(
                    stack.dsn_for(database), feed.symbols, config.stall_timeout_s
                ) as probe:
                    cpu = stack.cpu_meter(service.pid)
                    session = LiveSession(config, feed, service, probe, cpu)
                    log.info("[%s] fresh E2E: flooding %d trades", label, config.n)
                    result["e2e"] = e2e = await session.fresh_e2e(
                        config.n, profile=profile is not None
                    )
                    if primary:
                        path = f"/prices/{feed.symbols[0]}"
                        log.info("[%s] GET %s at %d req/s, idle", label, path, config.api_rate)
                        result["api_idle"] = await session.api_idle(
                            path, profile=profile is not None
                        )
                        log.info(
                            "[%s] GET %s at %d req/s during a flood", label, path, config.api_rate
                        )
                        result["api_ingest"] = await session.api_under_ingest(
                            path, e2e["rows_per_s"]
                        )
                        log.info(
                            "[%s] E2E latency at %d msg/s for %.0f s",
                            label, config.latency_rate, config.latency_window_s,
                        )  # fmt: skip
                        result["latency"] = await session.steady_latency()
                        log.info("[%s] push feed: %d SSE clients", label, config.stream_clients)
                        result["stream"] = await session.push_feed(settings.kafka)
                    log.info("[%s] checking rows and consumer lag", label)
                    result["lag_end"] = await self.check_lag(settings.kafka)
                    self.record(await probe.check_rows(database, feed.sent()))
            finally:
                await self.stop(service)
            result["rss_mb_peak"] = self.rss_mb[service.name]
            if primary:
                result["baselines"] = await self.baselines(database, e2e, settings)
                result["replay"] = await self.replay(topic, feed)
        return result

    async def baselines(
        self, e2e_database: str, e2e: dict[str, Any], settings: Settings
    ) -> dict[str, Any]:
        """Per-row, COPY and sink rates on the rows of the fresh E2E flood (definitions in
        bench/baselines.py: the headline figures are `per_row` and `copy`)."""
        stack, config = self.stack, self.config
        ranges = {s: (e2e["first_ids"][s], e2e["last_ids"][s]) for s in e2e["last_ids"]}
        rows = await baselines.fetch_rows(stack.dsn_for(e2e_database), ranges)
        if len(rows) != e2e["trades"]:
            self.failures.append(
                f"baselines: {len(rows)} rows of the E2E flood, {e2e['trades']} sent"
            )
        batch = settings.kafka.consumer_max_records
        sample = rows[: config.per_row_sample]
        log.info("[baselines] one INSERT + COMMIT per message: %d rows", len(sample))
        per_row = await baselines.per_row(
            stack.dsn_for(await stack.fresh_database("per_row")), sample
        )
        per_row_autocommit = await baselines.per_row_autocommit(
            stack.dsn_for(await stack.fresh_database("per_row_autocommit")), sample
        )
        log.info(
            "  %.0f rows/s (autocommit, one round trip per row: %.0f rows/s)",
            per_row.per_s, per_row_autocommit.per_s,
        )  # fmt: skip
        # The two figures of the sink ÷ COPY target, one right after the other.
        log.info("[baselines] raw COPY, batches of %d, one txn each: %d rows", batch, len(rows))
        copy = await baselines.copy_batches(
            stack.dsn_for(await stack.fresh_database("copy")), rows, batch
        )
        copy_text = await baselines.copy_batches(
            stack.dsn_for(await stack.fresh_database("copy_text")), rows, batch, text=True
        )
        log.info("  %.0f rows/s (text format: %.0f rows/s)", copy.per_s, copy_text.per_s)
        log.info("[baselines] PostgresSink.write, batches of %d: %d rows", batch, len(rows))
        sink = await baselines.sink(stack.url_for(await stack.fresh_database("sink")), rows, batch)
        log.info("  %.0f rows/s", sink.per_s)
        log.info("[baselines] raw COPY of all rows in one COPY: %d rows", len(rows))
        one_shot_db = stack.dsn_for(await stack.fresh_database("copy_one_shot"))
        one_shot = await baselines.raw_copy(one_shot_db, rows)
        bare = await baselines.raw_copy(one_shot_db, rows, bare=True)
        log.info("  %.0f rows/s (without indexes %.0f rows/s)", one_shot.per_s, bare.per_s)
        return {
            "per_row": {**per_row.as_dict(), "method": "BEGIN; INSERT; COMMIT per message"},
            "per_row_autocommit": {
                **per_row_autocommit.as_dict(),
                "method": "autocommit INSERT per message, prepared, 1 round trip",
            },
            "copy": {
                **copy.as_dict(),
                "batch_size": batch,
                "method": "COPY per batch of the sink's size, one txn each, rows built inside",
            },
            "copy_text": {
                **copy_text.as_dict(),
                "batch_size": batch,
                "method": "COPY per batch in text format (the sink's encoding), one txn each",
            },
            "copy_one_shot": {
                **one_shot.as_dict(),
                "method": "one COPY of all rows in one txn, pre-built tuples",
            },
            "copy_one_shot_no_indexes": {
                **bare.as_dict(),
                "method": "one COPY of all rows in one txn, table without primary key or index",
            },
            "sink": {**sink.as_dict(), "batch_size": batch},
        }

    async def replay(self, topic: str, feed: Feed) -> dict[str, Any]:
        """A consumer-only service, fresh database and group, catching up on the full topic."""
        config, stack = self.config, self.stack
        database = await stack.fresh_database("replay")
        group = f"{stack.prefix}_replay"
        env = self.service_env(database, topic, group, feed, "consumer")
        settings = self.settings(env)
        sent = feed.sent()
        expected = sum(len(ids) for ids in sent.values())
        targets = feed.last_ids()
        profile = RESULTS_DIR if config.profile else None
        service = ServiceProcess("replay", env, self.log_dir / "replay.log", profile)
        log.info("[replay] consumer-only service on the full topic (%d unique trades)", expected)
        try:
            await service.start(config.phase_timeout_s)
            service.profile_start()
            async with StoredProbe(
                stack.dsn_for(database), feed.symbols, config.stall_timeout_s
            ) as probe:
                cpu = stack.cpu_meter(service.pid)
                cpu.start()
                started = await service.wait_assigned(
                    settings.kafka.partitions, config.phase_timeout_s
                )
                already = await probe.count()
                stored_at = await probe.wait_reached(
                    targets, config.progress_poll_s, config.phase_timeout_s
                )
                cpu_cores = cpu.stop()
                profile_path = await service.profile_stop("replay")
                lag = await self.check_lag(settings.kafka)
                self.record(await probe.check_rows(database, sent))
        finally:
            await self.stop(service)
        seconds = stored_at - started
        rate = (expected - already) / seconds
        log.info(
            "  %d rows in %.2f s after assignment: %.0f rows/s", expected - already, seconds, rate
        )
        return {
            "rows": expected,
            "rows_before_clock": already,
            "seconds": round(seconds, 3),
            "rows_per_s": round(rate),
            "lag_end": lag,
            "rss_mb_peak": self.rss_mb[service.name],
            "cpu_cores": cpu_cores,
            "profile": str(profile_path) if profile_path else None,
        }


async def run_bench(config: BenchConfig, stack: BenchStack, log_dir: Path) -> dict[str, Any]:
    """All phases on `stack`; the raw results (see report.build_report for the JSON)."""
    started = time.time()
    run = Run(config, stack, log_dir)
    machine = await machine_info(stack)
    variants: list[dict[str, Any]] = []
    for index, count in enumerate(config.symbol_sets):
        try:
            variants.append(await run.variant(count, primary=index == 0))
        except Exception as exc:
            run.failures.append(f"{count} symbols: {type(exc).__name__}: {exc}")
            log.error(
                "[s%d] failed: %s: %s (service logs in %s)", count, type(exc).__name__, exc, log_dir
            )
            if index == 0:
                break
    history: dict[str, Any] | None = None
    try:
        history = await history_phase(config, stack, log_dir)
        if history["state"] != "done" or history["stored"] != history["expected"]:
            run.failures.append(f"history job: {history['state']}, {history['stored']} stored")
        if history["weight_refused"]:
            run.failures.append(f"history job: {history['weight_refused']} requests refused (429)")
    except Exception as exc:
        run.failures.append(f"history job: {type(exc).__name__}: {exc}")
        log.error("[history] failed: %s: %s (service log in %s)", type(exc).__name__, exc, log_dir)
    return {
        "started_at": started,
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "variants": variants,
        "history": history,
        "checks": run.checks,
        "failures": run.failures,
        "rss_mb": run.rss_mb,
        "service_overrides": {
            k: v for k, v in os.environ.items() if k.startswith(OVERRIDE_PREFIXES)
        },
    }
