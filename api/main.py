"""The service: FastAPI control plane + the pipeline's roles, started by one lifespan.

`uvicorn api.main:app` runs it. Importing never fails: settings are loaded when the lifespan
starts (unless passed to `create_app`), and bad configuration stops the start with one line
naming the key.

Lifespan, acquired in order and released in reverse:
settings → logging → engine → migrations (waiting up to 30 s for PostgreSQL) → durability
check → reads → push feed (api.stream; its Kafka tail runs while streams are open) → exchange
client → pipeline roles → serve → stop roles (bounded) → close client → close the push feed's
streams and tail → close reads → dispose engine. A SIGTERM/SIGINT closes the open streams first:
uvicorn waits for open responses before the lifespan ends, and an event stream never ends by
itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, HTTPException, status
from fastapi.responses import JSONResponse
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import AppState
from api.errors import install_error_handlers
from api.probes import LagProbe, ReadinessProbe
from api.reads.prices import PriceReads
from api.routes import api_router
from api.stream.hub import StreamHub
from api.stream.signals import on_exit_signal
from pipeline.core.errors import ConfigError
from pipeline.core.logs import configure_logging
from pipeline.core.retry import Backoff
from pipeline.core.settings import ApiPriority, ApiSettings, Settings, load_settings
from pipeline.exchange.client import ExchangeClient
from pipeline.runtime.pipeline import Pipeline, PipelineControl
from pipeline.runtime.priority import raise_priority
from pipeline.runtime.processes import ProcessPipeline
from pipeline.storage import migrate
from pipeline.storage.outage import is_outage
from pipeline.storage.tables import create_engine

logger = logging.getLogger("api")

DATABASE_WAIT_S = 30.0
DATABASE_RETRY_S = 1.0
# Pipeline.stop() keeps to settings.shutdown_timeout_s; this is the hard bound on top.
SHUTDOWN_GRACE_S = 2.0

TAGS = [
    {"name": "health", "description": "Liveness and readiness probes."},
    {"name": "symbols", "description": "The tracked symbols; changes reach every producer ≤ 2 s."},
    {"name": "prices", "description": "Stored trades: latest, history, candles."},
    {
        "name": "backfills",
        "description": "History jobs: a symbol's past trades, fetched on demand.",
    },
    {"name": "pipeline", "description": "Consumer lag and this instance's status."},
    {"name": "metrics", "description": "Prometheus metrics."},
    {"name": "stream", "description": "Live trades pushed as they reach Kafka, resumable exactly."},
]
DESCRIPTION = """\
Binance trades → Kafka → PostgreSQL, steered and observed over HTTP.

* Reads are open. `POST`/`DELETE /symbols` need the `X-API-Key` header when the service runs
  with `API_KEY`; without it they are accepted only from clients on the service's host that
  talk to it directly: a loopback peer, a loopback `Host` and no proxy header (403 otherwise).
  `GET /stream` and `WS /ws` need the key too when `STREAM_REQUIRES_KEY` is true (and `API_KEY`
  set).
* Range reads are bounded: candles cover a limited span per interval (422 beyond it), and a
  read that takes longer than `api.read_timeout_ms` is cancelled (503).
* `GET /stream?symbols=A,B` (Server-Sent Events) and `WS /ws?symbols=A,B` push every trade as it
  reaches Kafka; the event id resumes exactly (`Last-Event-ID`, or `?after=` on the WebSocket).
* Symbols are case-insensitive on input and upper case everywhere after (`^[A-Z0-9]{2,20}$`).
* Prices and quantities are decimal strings exactly as stored; times are epoch milliseconds.
* Every error is JSON `{"detail": ...}`.
"""


class StartupAborted(Exception):
    """The service cannot start; the message (already logged) says why and what to fix."""


def _version() -> str:
    try:
        return version("crypto-streaming-pipeline")
    except PackageNotFoundError:
        return "0.1.0"


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<DATABASE_URL>"


async def _migrate(engine: AsyncEngine, url: str, wait_s: float) -> None:
    """Upgrade to head, retrying while PostgreSQL is unreachable, for at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    # A steady pace: the whole wait is bounded by `wait_s` anyway.
    backoff = Backoff(DATABASE_RETRY_S, DATABASE_RETRY_S)
    warned = False
    while True:
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, DATABASE_RETRY_S) + 5.0):
                await migrate.upgrade(engine)
            return
        except Exception as exc:
            if not is_outage(exc):
                raise
            if time.monotonic() >= deadline:
                raise StartupAborted(
                    f"PostgreSQL at {_safe_url(url)} did not answer for {wait_s:.0f} s "
                    f"(DATABASE_URL): {type(exc).__name__}: {exc}; not starting"
                ) from None
            if not warned:
                logger.warning(
                    "PostgreSQL unreachable, retrying for up to %.0f s: %s", remaining, exc
                )
                warned = True
            await asyncio.sleep(min(backoff.next_delay(), max(deadline - time.monotonic(), 0)))


async def _check_durability(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        value = await connection.scalar(text("SHOW synchronous_commit"))
    if value == "off":
        logger.warning(
            "PostgreSQL runs with synchronous_commit=off: a crash can lose batches whose Kafka "
            "offsets are already committed (lost trades). Set synchronous_commit=on."
        )


async def _stop_pipeline(pipeline: PipelineControl, timeout_s: float) -> None:
    try:
        async with asyncio.timeout(timeout_s + SHUTDOWN_GRACE_S):
            await pipeline.stop()
    except TimeoutError:
        logger.error("pipeline did not stop within %.0f s; abandoning its tasks", timeout_s)


def _loop_priority(settings: Settings) -> ApiPriority:
    """`api_priority`, for a loop that only serves the API: roles run as tasks on it (isolation
    task) would take a core at real-time priority from the broker and the database they need."""
    if settings.api_priority == "realtime" and settings.isolation == "task" and settings.roles:
        logger.info("api_priority realtime not applied: the roles run on the API's event loop")
        return "normal"
    return settings.api_priority


def _lifespan(
    given: Settings | None, database_wait_s: float
) -> Callable[[FastAPI], AbstractAsyncContextManager[AppState]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
        try:
            settings = given if given is not None else load_settings()
        except ConfigError as exc:
            configure_logging()
            logger.error("%s", exc)
            raise StartupAborted(str(exc)) from None
        configure_logging(settings)
        started = time.monotonic()
        async with AsyncExitStack() as stack:
            engine = create_engine(settings.database)
            stack.push_async_callback(engine.dispose)
            try:
                await _migrate(engine, settings.database.url, database_wait_s)
            except StartupAborted as exc:
                logger.error("%s", exc)
                raise
            await _check_durability(engine)
            reads = await PriceReads.open(settings.database, settings.api)
            stack.push_async_callback(reads.close)
            stream = StreamHub(settings, reads) if settings.stream.enabled else None
            if stream is not None:
                await stream.start()
                stack.push_async_callback(stream.close)
                stack.callback(on_exit_signal(stream.shut_down_streams))
            exchange = ExchangeClient(settings.binance)
            stack.push_async_callback(exchange.close)
            pipeline: PipelineControl = (
                ProcessPipeline(settings, engine)
                if settings.isolation == "process"
                else Pipeline(settings, engine, exchange)
            )
            stack.push_async_callback(_stop_pipeline, pipeline, settings.shutdown_timeout_s)
            await pipeline.start()
            state = AppState(
                settings=settings,
                engine=engine,
                exchange=exchange,
                pipeline=pipeline,
                readiness=ReadinessProbe(engine, settings.kafka, pipeline, migrate.head_revision()),
                lag=LagProbe(settings.kafka),
                reads=reads,
                stream=stream,
            )
            logger.info(
                "service started in %.1f s roles=%s auth=%s",
                time.monotonic() - started,
                ",".join(sorted(settings.roles)) or "none",
                "api-key" if settings.api.api_key is not None else "local-direct-only",
            )
            stack.callback(raise_priority(_loop_priority(settings)))
            yield state
            logger.info("service stopping")
        logger.info("service stopped")

    return lifespan


class BodyLimitMiddleware:
    """413 `{"detail": ...}` for request bodies over `api.max_body_bytes` (declared or streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = scope.get("state", {}).get("settings")
        limit = (settings.api if settings is not None else ApiSettings()).max_body_bytes
        detail = f"request body larger than {limit} bytes"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = JSONResponse({"detail": detail}, status.HTTP_413_CONTENT_TOO_LARGE)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail)
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class StartupFailureReported:
    """Keeps a failed start to the one line the lifespan logged (no traceback from uvicorn)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def reported(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and isinstance(
                sys.exc_info()[1], StartupAborted
            ):
                message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, reported)


def create_app(
    settings: Settings | None = None, *, database_wait_s: float = DATABASE_WAIT_S
) -> FastAPI:
    """The app; `settings` None loads them (YAML + environment) when the lifespan starts."""
    app = FastAPI(
        title="crypto-streaming-pipeline",
        version=_version(),
        summary="Binance trades → Kafka → PostgreSQL, with a FastAPI control plane",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan(settings, database_wait_s),
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(StartupFailureReported)
    app.include_router(api_router)
    return app


app = create_app()
