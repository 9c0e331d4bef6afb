"""Which errors mean PostgreSQL is unreachable (wait it out) and which mean a query is wrong."""

from __future__ import annotations

import socket

import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from pipeline.storage.outage import is_outage


class _Adapted(Exception):
    """What SQLAlchemy's asyncpg dialect puts in `.orig`: its own error carrying the SQLSTATE,
    raised from asyncpg's."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.sqlstate = getattr(cause, "sqlstate", None)
        self.__cause__ = cause


def wrapped(cause: BaseException) -> DBAPIError:
    """`cause` as a query through SQLAlchemy reports it."""
    return DBAPIError("SELECT 1", {}, _Adapted(cause))


OUTAGES = [
    pytest.param(ConnectionRefusedError(111, "refused"), id="connection refused"),
    pytest.param(ConnectionResetError(104, "reset by peer"), id="connection reset"),
    pytest.param(OSError(113, "no route to host"), id="OSError"),
    pytest.param(socket.gaierror(-2, "name not known"), id="host does not resolve"),
    pytest.param(TimeoutError(), id="timeout"),
    pytest.param(asyncpg.CannotConnectNowError("starting up"), id="57P03 cannot connect now"),
    pytest.param(asyncpg.AdminShutdownError("terminating"), id="57P01 admin shutdown"),
    pytest.param(asyncpg.CrashShutdownError("crash"), id="57P02 crash shutdown"),
    pytest.param(asyncpg.QueryCanceledError("canceled"), id="57014 operator intervention"),
    pytest.param(asyncpg.PostgresConnectionError("gone"), id="08000 connection exception"),
    pytest.param(asyncpg.ConnectionDoesNotExistError("closed"), id="08003 no connection"),
    pytest.param(asyncpg.ConnectionFailureError("failed"), id="08006 connection failure"),
    pytest.param(asyncpg.TooManyConnectionsError("too many"), id="53300 too many connections"),
    pytest.param(asyncpg.InsufficientResourcesError("no"), id="53000 insufficient resources"),
    pytest.param(asyncpg.InterfaceError("connection is closed"), id="asyncpg connection closed"),
]

NOT_OUTAGES = [
    pytest.param(asyncpg.UniqueViolationError("duplicate"), id="23505 unique violation"),
    pytest.param(asyncpg.DataError("bad data"), id="22000 data error"),
    pytest.param(asyncpg.NumericValueOutOfRangeError("big"), id="22003 out of range"),
    pytest.param(asyncpg.UndefinedTableError("no table"), id="42P01 undefined table"),
    pytest.param(asyncpg_base.DataError("invalid input for query argument"), id="bad argument"),
    pytest.param(asyncpg_base.ClientConfigurationError("bad dsn"), id="bad configuration"),
    pytest.param(ValueError("bug"), id="ValueError"),
    pytest.param(RuntimeError("bug"), id="RuntimeError"),
]


@pytest.mark.parametrize("error", OUTAGES)
def test_an_unreachable_server_is_an_outage(error: Exception) -> None:
    assert is_outage(error)


@pytest.mark.parametrize("error", OUTAGES)
def test_an_outage_wrapped_by_sqlalchemy_is_still_an_outage(error: Exception) -> None:
    assert is_outage(wrapped(error))
    assert is_outage(DBAPIError("SELECT 1", {}, error))


@pytest.mark.parametrize("error", NOT_OUTAGES)
def test_a_wrong_query_or_a_bug_is_not_an_outage(error: Exception) -> None:
    assert not is_outage(error)


@pytest.mark.parametrize("error", NOT_OUTAGES)
def test_a_wrong_query_wrapped_by_sqlalchemy_is_not_an_outage(error: Exception) -> None:
    assert not is_outage(wrapped(error))


def test_any_error_carrying_an_outage_sqlstate_is_an_outage() -> None:
    class ShuttingDown(Exception):
        sqlstate = "57P01"

    class Duplicate(Exception):
        sqlstate = "23505"

    assert is_outage(ShuttingDown())
    assert is_outage(DBAPIError("SELECT 1", {}, ShuttingDown()))
    assert not is_outage(Duplicate())
    assert not is_outage(DBAPIError("SELECT 1", {}, Duplicate()))


def test_sqlalchemy_connection_errors_are_outages() -> None:
    assert is_outage(OperationalError("SELECT 1", {}, Exception("gone")))
    assert is_outage(InterfaceError("SELECT 1", {}, Exception("connection is closed")))
    invalidated = DBAPIError("SELECT 1", {}, Exception("lost"), connection_invalidated=True)
    assert is_outage(invalidated)


def test_sqlalchemy_query_errors_are_not_outages() -> None:
    assert not is_outage(IntegrityError("INSERT", {}, Exception("duplicate")))
    assert not is_outage(IntegrityError("INSERT", {}, asyncpg.UniqueViolationError("dup")))
    assert not is_outage(DataError("INSERT", {}, asyncpg.DataError("bad")))
    assert not is_outage(ProgrammingError("SELECT", {}, asyncpg.UndefinedTableError("no")))
    assert not is_outage(DBAPIError("SELECT 1", {}, Exception("odd")))


def test_an_outage_raised_as_the_cause_of_another_error_counts() -> None:
    try:
        try:
            raise asyncpg.CannotConnectNowError("starting up")
        except asyncpg.PostgresError as exc:
            raise RuntimeError("cannot read") from exc
    except RuntimeError as outer:
        assert is_outage(outer)


def test_an_error_chain_that_loops_is_not_followed_forever() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not is_outage(first)
