"""pipeline.core.logs: JSON lines for LOG_FORMAT=json, a readable console line otherwise, quiet libraries."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from pipeline.core.logs import configure_logging
from pipeline.core.settings import load_settings


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_format_writes_one_json_object_per_record() -> None:
    stream = io.StringIO()
    configure_logging(load_settings({"LOG_FORMAT": "json"}), stream=stream)
    logging.getLogger("pipeline.test").info("symbols set count=%d", 3)
    record = json.loads(stream.getvalue().strip())
    assert record["event"] == "symbols set count=3"
    assert record["level"] == "info"
    assert record["logger"] == "pipeline.test"
    assert "timestamp" in record


def test_configuring_twice_keeps_a_single_handler() -> None:
    stream = io.StringIO()
    settings = load_settings({"LOG_FORMAT": "console"})
    configure_logging(settings, stream=io.StringIO())
    configure_logging(settings, stream=stream)
    logging.getLogger("api").warning("once")
    assert stream.getvalue().count("once") == 1


def test_access_log_and_chatty_libraries_are_quiet_unless_debug() -> None:
    configure_logging(load_settings({}), stream=io.StringIO())
    assert not logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)
    assert not logging.getLogger("aiokafka").isEnabledFor(logging.INFO)
    assert logging.getLogger("uvicorn.error").isEnabledFor(logging.INFO)

    configure_logging(load_settings({"LOG_LEVEL": "debug"}), stream=io.StringIO())
    assert logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO)


def test_structlog_loggers_render_through_the_same_handler() -> None:
    stream = io.StringIO()
    configure_logging(load_settings({"LOG_FORMAT": "json"}), stream=stream)
    structlog.get_logger("api.test").info("symbol added", symbol="ADAUSDT")
    structlog.get_logger("api.test").debug("hidden at INFO")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines == [
        {
            "event": "symbol added",
            "symbol": "ADAUSDT",
            "level": "info",
            "logger": "api.test",
            "timestamp": lines[0]["timestamp"],
        }
    ]


def test_a_library_repeating_one_message_is_let_through_once_per_window() -> None:
    from pipeline.core.logs import ThrottleLibraryRepeats

    throttle = ThrottleLibraryRepeats(window_s=60)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None, None)

    flood = [
        throttle.filter(record("aiokafka.producer", "Unable to connect to %s")) for _ in range(1000)
    ]
    assert flood.count(True) == 1
    assert throttle.filter(record("aiokafka.producer", "another message"))
    assert all(
        throttle.filter(record("pipeline.kafka.producer", "kafka unavailable")) for _ in range(5)
    )
