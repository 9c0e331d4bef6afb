"""CPU priorities: the source's worker first, the API second, the sink's worker last; what each
setting asks of the scheduler, and what the API does when real-time is refused."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from pipeline.core.settings import PROJECT_ROOT, Role, WorkerPriority, load_settings
from pipeline.runtime import priority
from pipeline.runtime.worker import worker_priority


def test_normal_priority_leaves_the_thread_as_it_is() -> None:
    before = os.sched_getscheduler(0)
    undo = priority.raise_priority("normal")
    assert os.sched_getscheduler(0) == before
    undo()
    assert os.sched_getscheduler(0) == before


def test_a_refused_realtime_request_warns_how_to_allow_or_opt_out_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    before = os.sched_getscheduler(0)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    undo = priority.raise_priority("realtime")
    undo()
    assert os.sched_getscheduler(0) == before
    (record,) = [r for r in caplog.records if r.name == "pipeline.runtime.priority"]
    assert record.levelname == "WARNING"
    message = record.getMessage()
    assert message.startswith("api_priority realtime not permitted (Operation not permitted)")
    assert "CAP_SYS_NICE" in message and "PIPELINE_API_PRIORITY=normal" in message


@pytest.mark.parametrize(
    ("roles", "expected"),
    [({"producer"}, "normal"), ({"consumer"}, "low"), ({"producer", "consumer"}, "normal")],
)
def test_with_the_shipped_config_only_the_sinks_worker_runs_below_normal(
    roles: set[Role], expected: WorkerPriority
) -> None:
    """A worker that runs the source at all runs at the source's priority."""
    settings = load_settings({}).model_copy(update={"roles": frozenset(roles)})
    assert worker_priority(settings) == expected


def _lowered(level: WorkerPriority) -> tuple[int, int]:
    """(scheduling policy, nice) of a fresh process after lower_priority(level)."""
    probe = (
        "import os; from pipeline.runtime.priority import lower_priority; "
        f"lower_priority({level!r}); print(os.sched_getscheduler(0), os.nice(0))"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True, env=env
    ).stdout.split()
    return int(out[0]), int(out[1])


def test_each_worker_priority_is_taken_without_privilege() -> None:
    """Lowering one's own priority is always permitted: none of these can fail at start."""
    base = os.nice(0)
    assert _lowered("normal") == (os.SCHED_OTHER, base)
    assert _lowered("low") == (os.SCHED_OTHER, min(base + priority.LOW_NICE, 19))
    assert _lowered("idle") == (os.SCHED_IDLE, base)
