"""`BenchStack`: the Kafka broker and PostgreSQL server of one run, and its databases and topics.

By default a fresh LocalKafka + LocalPostgres in a temporary directory (removed afterwards);
with `--use-stack-env` the servers named by `.stack/env` (`make stack-up`). Either way every
database and topic the run creates carries the run's prefix and is dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy.engine import make_url

from bench.cpu import CpuMeter
from devtools.stack import LocalKafka, LocalPostgres
from pipeline.core.settings import DatabaseSettings
from pipeline.kafka.client import start_within
from pipeline.storage import migrate
from pipeline.storage.tables import create_engine

log = logging.getLogger("bench")

ADMIN_DATABASE = "postgres"


@dataclass
class BenchStack:
    """Where the run's services are; `url` names any database on the PostgreSQL server."""

    bootstrap_servers: str
    url: str
    prefix: str = field(default_factory=lambda: f"bench_{uuid.uuid4().hex[:8]}")
    kafka_pid: int | None = None  # known when the run started the servers itself
    postgres_pid: int | None = None
    _databases: list[str] = field(default_factory=list)
    _topics: list[str] = field(default_factory=list)
    _template: str | None = None

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL (the DATABASE_URL form) of `database` on this server."""
        url = make_url(self.url).set(drivername="postgresql+asyncpg", database=database)
        return url.render_as_string(hide_password=False)

    def dsn_for(self, database: str) -> str:
        """asyncpg DSN of `database` on this server."""
        url = make_url(self.url).set(drivername="postgresql", database=database)
        return url.render_as_string(hide_password=False)

    def cpu_meter(self, service_pid: int) -> CpuMeter:
        """A meter of the service, the servers (when known) and this process."""
        processes = {"service": (service_pid, True), "bench": (os.getpid(), False)}
        if self.kafka_pid is not None:
            processes["kafka"] = (self.kafka_pid, True)
        if self.postgres_pid is not None:
            processes["postgres"] = (self.postgres_pid, True)
        return CpuMeter(processes)

    def topic(self, label: str) -> str:
        """A topic name of this run (deleted at the end)."""
        name = f"{self.prefix}_{label}"
        self._topics.extend([name, f"{name}.dlq"])
        return name

    async def fresh_database(self, label: str) -> str:
        """A new database at Alembic head (a copy of the run's migrated template)."""
        if self._template is None:
            self._template = await self._create(f"{self.prefix}_template", template=None)
            engine = create_engine(DatabaseSettings(url=self.url_for(self._template)))
            try:
                await migrate.upgrade(engine)
            finally:
                await engine.dispose()
        return await self._create(f"{self.prefix}_{label}", template=self._template)

    async def server_version(self) -> str:
        connection = await asyncpg.connect(self.dsn_for(ADMIN_DATABASE))
        try:
            return str(await connection.fetchval("SHOW server_version"))
        finally:
            await connection.close()

    async def _create(self, name: str, template: str | None) -> str:
        connection = await asyncpg.connect(self.dsn_for(ADMIN_DATABASE))
        try:
            clause = f' TEMPLATE "{template}"' if template else ""
            await connection.execute(f'CREATE DATABASE "{name}"{clause}')
        finally:
            await connection.close()
        self._databases.append(name)
        return name

    async def cleanup(self) -> None:
        """Drop the run's databases and delete its topics; best effort."""
        if self._databases:
            with contextlib.suppress(Exception):
                connection = await asyncpg.connect(self.dsn_for(ADMIN_DATABASE))
                try:
                    for name in reversed(self._databases):
                        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await connection.close()
        if self._topics:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers)
            with contextlib.suppress(Exception):
                await start_within(admin.start(), 10)
                existing = set(await admin.list_topics())
                doomed = [t for t in self._topics if t in existing]
                if doomed:
                    await asyncio.wait_for(admin.delete_topics(doomed), 30)
            with contextlib.suppress(Exception):
                await admin.close()
        self._databases.clear()
        self._topics.clear()


def read_stack_env(path: Path) -> tuple[str, str]:
    """KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL from the `export` lines `make stack-up` writes."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SystemExit(f"bench: {path} does not exist; run `make stack-up` first") from None
    for line in lines:
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            values[key] = value
    try:
        return values["KAFKA_BOOTSTRAP_SERVERS"], values["DATABASE_URL"]
    except KeyError as exc:
        raise SystemExit(f"bench: {path} lacks {exc.args[0]}") from None


@contextlib.asynccontextmanager
async def own_stack() -> AsyncIterator[BenchStack]:
    """A fresh broker and server in a temporary directory, stopped and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="crypto-bench-"))
    os.chmod(workdir, 0o755)  # PostgreSQL runs as an unprivileged user
    kafka = LocalKafka(workdir / "kafka")
    postgres = LocalPostgres(workdir / "pg", database="bench")
    try:
        log.info("starting Kafka and PostgreSQL in %s", workdir)
        results = await asyncio.gather(
            asyncio.to_thread(kafka.start),
            asyncio.to_thread(postgres.start),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield BenchStack(
            kafka.bootstrap_servers, postgres.url, kafka_pid=kafka.pid, postgres_pid=postgres.pid
        )
    finally:
        await asyncio.gather(
            asyncio.to_thread(kafka.stop), asyncio.to_thread(postgres.stop), return_exceptions=True
        )
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def open_stack(use_stack_env: bool, env_file: Path) -> AsyncIterator[BenchStack]:
    """The run's stack (own, or `.stack/env`'s); its databases and topics removed at the end."""
    if use_stack_env:
        bootstrap, url = read_stack_env(env_file)
        stack = BenchStack(bootstrap, url)
        try:
            yield stack
        finally:
            await stack.cleanup()
        return
    async with own_stack() as stack:
        yield stack
