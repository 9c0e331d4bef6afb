"""`make bench` in miniature: every phase runs on tiny N and the report holds what scripts read.

No timing is asserted — a benchmark is not a test — only that the harness works end to end and
that its built-in correctness check passes.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from bench.config import BenchConfig
from bench.report import build_report, format_table, write_json
from bench.run import run_bench
from bench.stack import BenchStack
from devtools.stack import LocalKafka, LocalPostgres

pytestmark = pytest.mark.integration

KEYS_SCRIPTS_READ = (
    "correct",
    "ratios.e2e_vs_per_row",
    "ratios.sink_vs_copy",
    "ratios.e2e_vs_copy",
    "ratios.replay_vs_fresh",
    "ratios.api_p99_ingest_vs_idle",
    "rates.e2e_msgs_per_s",
    "latency_ms.e2e_p99_at_1k",
    "rss_mb_peak",
    "ratios.e2e_with_stream_clients_vs_e2e",
    "rates.stream_events_per_s",
    "latency_ms.stream_p99",
)


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} missing from the report"
        node = node[part]
    return node


@pytest.mark.timeout(120)
async def test_tiny_bench_run_is_correct_and_reports_every_key(
    kafka_broker: LocalKafka, postgres_server: LocalPostgres, tmp_path: Path
) -> None:
    config = BenchConfig.quick_run(
        n=2_000,
        per_row_sample=200,
        api_rate=200,
        api_connections=4,
        api_window_s=1.0,
        latency_rate=200,
        latency_window_s=1.5,
        stream_clients=20,
        stream_window_s=1.5,
        phase_timeout_s=45.0,
        output=tmp_path / "latest.json",
    )
    stack = BenchStack(kafka_broker.bootstrap_servers, postgres_server.url)
    try:
        raw = await run_bench(config, stack, tmp_path)
    finally:
        await stack.cleanup()
    write_json(build_report(config, raw), config.output)

    report = json.loads(config.output.read_text(encoding="utf-8"))
    assert report["correct"] is True, report["failures"]
    for key in KEYS_SCRIPTS_READ:
        assert lookup(report, key) is not None, f"{key} has no value"
    assert report["machine"]["kafka"] == "4.1.1"
    assert report["parameters"]["n"] == 2_000
    assert "E2E sustained" in format_table(report)
