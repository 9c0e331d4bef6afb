"""The status contract: one set of types from the roles through a worker's pipe to the API.

A worker encodes its PipelineStatus (worker.report_line), the API process decodes it back into
the same types with validation (processes.read_report); a report that does not decode is no
report at all, never a crash of /pipeline/status.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import msgspec
import orjson
import pytest

from pipeline.core.settings import load_settings
from pipeline.core.status import (
    ConnectionStatus,
    ConsumerStatus,
    Counts,
    ExchangeGap,
    Gaps,
    PipelineStatus,
    ProducerStatus,
    SourceStatus,
    SymbolStatus,
    TaskStatus,
)
from pipeline.runtime.processes import WorkerProcess, read_report
from pipeline.runtime.worker import WorkerReport, report_line

SOURCE = SourceStatus(
    running=True,
    connections=(
        ConnectionStatus(
            name="ws-0",
            state="connected",
            since=1_764_085_200.25,
            url="wss://stream.example/stream?streams=btcusdt@trade/ethusdt@trade",
            streams=("btcusdt@trade", "ethusdt@trade"),
            frames=1_200,
            reconnects=1,
        ),
    ),
    symbols={
        "BTCUSDT": SymbolStatus(last_trade_id=4_012_345_678, last_trade_time=1_764_085_200_120),
        "ETHUSDT": SymbolStatus(last_trade_id=None, last_trade_time=None),
    },
    received=1_200,
    valid=1_198,
    invalid=2,
    reconnects=1,
    gaps_found=3,
    trades_backfilled=40,
    trades_skipped=0,
    exchange_gap_trades=3,
    exchange_gaps=(ExchangeGap("BTCUSDT", 5, 7),),
    backfill_in_progress={"ETHUSDT": 15},
)
PRODUCER = ProducerStatus(
    kafka_up=True,
    queued=2,
    in_flight=5,
    delivered=1_191,
    dead_letters=2,
    delivery_failures=0,
    last_error=None,
)
CONSUMER = ConsumerStatus(
    assigned=(0, 1, 2),
    consumed=10,
    stored=9,
    duplicates=0,
    dead_letters=1,
    batches=2,
    sink_up=True,
    last_error=None,
    last_commit_at=None,
)
TASKS = (
    TaskStatus("source", "running", 0, None, 1_764_085_100.5),
    TaskStatus("producer", "restarting", 2, "KafkaConnectionError: gone", 1_764_085_150.0),
)


def whole_status() -> PipelineStatus:
    return PipelineStatus.of(
        {"producer", "consumer"}, 12.5, TASKS, source=SOURCE, producer=PRODUCER, consumer=CONSUMER
    )


def encoded(status: PipelineStatus) -> dict[str, Any]:
    """A worker's report line as plain JSON, for tests that damage it."""
    report: dict[str, Any] = orjson.loads(report_line(WorkerReport(3, status, "# metrics\n")))
    return report


def test_pipeline_status_adds_the_end_to_end_counts() -> None:
    shaped = PipelineStatus.of(
        ["consumer"],
        1.5,
        [TaskStatus("consumer", "running", 0, None, 1.0)],
        consumer=CONSUMER,
    )
    assert shaped.counts == Counts(received=None, produced=None, stored=9, dead_letters=1)
    assert shaped.gaps is None and shaped.source is None


def test_every_role_counts_towards_the_summary() -> None:
    status = whole_status()
    assert status.roles == ("consumer", "producer")
    assert status.counts == Counts(received=1_200, produced=1_191, stored=9, dead_letters=3)
    assert status.gaps == Gaps(found=3, backfilled=40)


def test_a_status_sent_by_a_worker_arrives_as_the_same_status() -> None:
    sent = WorkerReport(answer=7, status=whole_status(), metrics="# HELP x\nx 1.0\n")
    line = report_line(sent)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one report, one line
    received = read_report(line)
    assert received == sent
    assert isinstance(received.status.source, SourceStatus)
    assert received.status.source.symbols["BTCUSDT"] == SOURCE.symbols["BTCUSDT"]


def test_a_status_without_the_roles_a_worker_does_not_run_arrives_as_sent() -> None:
    sent = WorkerReport(None, PipelineStatus.of(["consumer"], 0.0, (), consumer=CONSUMER), "")
    assert read_report(report_line(sent)) == sent


def test_a_report_missing_a_field_is_rejected() -> None:
    report = encoded(whole_status())
    del report["status"]["producer"]["delivered"]
    with pytest.raises(msgspec.ValidationError, match="delivered"):
        read_report(orjson.dumps(report))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("consumer", "stored"), "9"),
        (("tasks", 0, "state"), "exploded"),
        (("source", "symbols"), [1, 2]),
        (("counts",), None),
    ],
)
def test_a_report_with_a_wrong_type_is_rejected(path: tuple[str | int, ...], value: object) -> None:
    report = encoded(whole_status())
    target = report["status"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(msgspec.ValidationError):
        read_report(orjson.dumps(report))


def test_a_report_that_is_not_json_is_rejected() -> None:
    with pytest.raises(msgspec.DecodeError):
        read_report(b"Traceback (most recent call last):\n")


async def reports_from_a_process(worker: WorkerProcess, lines: list[bytes]) -> None:
    """Let `worker` read `lines` as a worker process's stdout would carry them."""
    echo = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        echo,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    process.stdin.write(b"".join(lines))
    process.stdin.close()
    await worker._read_reports(process)
    await process.wait()


async def test_a_report_that_does_not_decode_leaves_the_last_good_one_standing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = WorkerProcess("consumer", load_settings({}))
    good = WorkerReport(1, PipelineStatus.of(["consumer"], 1.0, TASKS, consumer=CONSUMER), "")
    damaged = encoded(whole_status())
    del damaged["status"]["tasks"]
    with caplog.at_level(logging.WARNING, "pipeline.runtime.processes"):
        await reports_from_a_process(
            worker, [report_line(good), b"not a report\n", orjson.dumps(damaged) + b"\n"]
        )
    assert worker.report == good
    assert worker.tasks()[1:] == list(TASKS)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1  # once, not once per bad line
    assert warnings[0].startswith("consumer worker sent an unreadable report")


async def test_a_worker_whose_reports_never_decode_shows_no_role() -> None:
    worker = WorkerProcess("consumer", load_settings({}))
    await reports_from_a_process(worker, [b'{"answer": 1, "status": {}, "metrics": ""}\n'])
    assert worker.report is None
    assert [task.name for task in worker.tasks()] == ["consumer process"]
