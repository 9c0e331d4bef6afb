"""`api_priority`: what the API process asks of the scheduler, and what it does when refused."""

from __future__ import annotations

import errno
import os

import pytest

from pipeline.runtime import priority


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
