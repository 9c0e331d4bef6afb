"""Whether an error means PostgreSQL is unreachable: the one answer the sink, the registry and the
API share.

An outage is worth waiting out (the sink retries without committing, the registry keeps its
last answer, the API says 503 with Retry-After); anything else is a bug in a query or its data,
and retrying it would wedge whatever waits on it. The same outage reaches us in several shapes:
asyncpg's own errors (unwrapped when a new connection is refused, e.g. 57P03 while the server
starts up), SQLAlchemy's DBAPIError wrapping them, or the socket's OSError/TimeoutError.
"""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# SQLSTATE classes of an unusable server: 08 connection exception, 53 insufficient resources
# (too many connections), 57 operator intervention (shutdown, crash, starting up).
OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def is_outage(exc: BaseException) -> bool:
    """Whether `exc`, or what it wraps, means PostgreSQL is unreachable (not a wrong query)."""
    chain = list(_chain(exc))
    # asyncpg's client-side InterfaceErrors that are also ValueErrors (a query argument it cannot
    # encode, a bad DSN) are our mistakes, however they are wrapped.
    if any(
        isinstance(link, asyncpg.InterfaceError) and isinstance(link, ValueError) for link in chain
    ):
        return False
    return any(_is_outage_itself(link) for link in chain)


def _is_outage_itself(exc: BaseException) -> bool:
    # OSError covers ConnectionError (refused, reset) and a host that does not resolve.
    if isinstance(exc, OSError | TimeoutError | OperationalError | InterfaceError):
        return True
    # asyncpg's own InterfaceError: "connection is closed", a pool closing under us.
    if isinstance(exc, asyncpg.InterfaceError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state[:2] in OUTAGE_SQLSTATE_CLASSES


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `.orig`, else the explicit `__cause__`."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
