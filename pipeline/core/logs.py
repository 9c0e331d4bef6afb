"""Logging for the service and the CLI: structured, quiet by default.

Every record — the pipeline's stdlib `logging` calls, structlog loggers, uvicorn, aiokafka —
goes through one handler on the root logger, rendered by structlog: JSON lines for
`LOG_FORMAT=json` (log shippers), a readable console format otherwise (local runs).

Quiet by default: INFO carries lifecycle events only (start, stop, reconnects, created topics);
nothing is logged per message. Chatty libraries are held at WARNING (INFO with `LOG_LEVEL=DEBUG`),
and uvicorn's access log is off unless `LOG_LEVEL=DEBUG`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog

from pipeline.core.settings import Settings

# Libraries that log per request or per connection attempt at INFO.
QUIET_LIBRARIES = ("aiokafka", "kafka", "websockets", "httpx", "httpcore", "alembic", "asyncio")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_HANDLER_MARK = "_crypto_pipeline_handler"
REPEAT_WINDOW_S = 10.0


class ThrottleLibraryRepeats(logging.Filter):
    """Lets each message template of a library through once per window.

    While the broker is down aiokafka logs thousands of identical errors a second; one line
    every few seconds says the same. Our own modules count and throttle their own logs.
    """

    def __init__(self, window_s: float = REPEAT_WINDOW_S) -> None:
        super().__init__()
        self._window_s = window_s
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(QUIET_LIBRARIES):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self._window_s) < self._window_s:
            return False
        self._last[key] = now
        return True


def _shared_processors() -> list[Any]:
    """Applied to every record, from structlog or from the stdlib alike."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def _renderer(log_format: str, stream: TextIO) -> list[Any]:
    if log_format == "json":
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    colors = bool(getattr(stream, "isatty", lambda: False)())
    # Plain tracebacks: structlog's default (rich, with every frame's locals) rendered one
    # database error as 17 000 lines and held the event loop for ~8 s, long enough for the
    # consumer to drop out of its group.
    return [
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def build_handler(log_format: str = "console", stream: TextIO | None = None) -> logging.Handler:
    """A stdlib handler that renders records with structlog in `log_format`."""
    stream = stream if stream is not None else sys.stderr
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderer(log_format, stream),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(ThrottleLibraryRepeats())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(settings: Settings | None = None, *, stream: TextIO | None = None) -> None:
    """Install the handler (idempotent: a second call replaces the first one's handler).

    Without settings (e.g. the configuration itself is invalid) it logs INFO to the console.
    Handlers installed by others (pytest's capture, for one) are left in place.
    """
    level_name = settings.log_level if settings is not None else "INFO"
    log_format = settings.log_format if settings is not None else "console"
    level = logging.getLevelName(level_name)
    debug = level <= logging.DEBUG

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.addHandler(build_handler(log_format, stream))
    root.setLevel(level)

    # uvicorn installs its own handlers (propagate=False); route it through ours instead.
    for name in UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
        uvicorn_logger.setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").setLevel(logging.DEBUG if debug else logging.WARNING)

    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
