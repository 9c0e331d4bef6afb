"""Error answers: always JSON `{"detail": ...}`.

A client's input is validated before it reaches PostgreSQL, so the only 5xx left are the
service's own conditions: 503 while PostgreSQL (or Kafka, for /consumer/lag) is unreachable,
500 for a bug (logged with its traceback, never shown to the client).
"""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.routing import Match

from pipeline.storage.outage import is_outage

logger = logging.getLogger(__name__)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_outage(exc):
        return await _unexpected(request, exc)
    logger.warning("%s %s: PostgreSQL unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "PostgreSQL is unavailable; retry later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
    )


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 whose Allow header lists every method of the path (Starlette names one route's)."""
    allowed: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        methods = getattr(route, "methods", None)
        if match is not Match.NONE and methods:
            allowed.update(methods)
    return JSONResponse(
        {"detail": "Method Not Allowed"},
        status_code=status.HTTP_405_METHOD_NOT_ALLOWED,
        headers={"Allow": ", ".join(sorted(allowed))},
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(status.HTTP_405_METHOD_NOT_ALLOWED, _method_not_allowed)
    # The types a PostgreSQL outage arrives as (asyncpg's own errors come unwrapped when a new
    # connection is refused); `_database_error` answers 500 for those that are not an outage.
    for outage in (
        DBAPIError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    ):
        app.add_exception_handler(outage, _database_error)
    app.add_exception_handler(Exception, _unexpected)
