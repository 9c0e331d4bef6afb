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
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.routing import Match

logger = logging.getLogger(__name__)

# SQLSTATE classes of an unusable server: 08 connection exception, 53 insufficient resources
# (too many connections), 57 operator intervention (shutdown, starting up).
OUTAGE_SQLSTATE_CLASSES = ("08", "53", "57")


def _sqlstates(exc: BaseException) -> list[str]:
    found = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str):
            found.append(state)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return found


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` means PostgreSQL is unreachable, rather than a query being wrong."""
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    # asyncpg's own errors reach us unwrapped when a new connection is refused (e.g. 57P03 "the
    # database system is starting up"): the SQLSTATE tells an outage either way.
    return any(state[:2] in OUTAGE_SQLSTATE_CLASSES for state in _sqlstates(exc))


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_database_outage(exc):
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
    for outage in (DBAPIError, asyncpg.PostgresError, OSError, TimeoutError):
        app.add_exception_handler(outage, _database_error)
    app.add_exception_handler(Exception, _unexpected)
