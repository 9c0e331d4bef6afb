"""Session-wide real services, and per-test isolation on top of them.

One Kafka broker and one PostgreSQL server start per test session, lazily (only when a test
asks), with the same code as `make stack-up`. Each test then gets its own database (a copy
of a migrated template, ~0.1 s) and its own topic and consumer group, so tests never see each
other's data.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.stack import LocalKafka, LocalPostgres
from pipeline.core.settings import DatabaseSettings, Settings, load_settings
from pipeline.storage import migrate
from pipeline.storage.tables import create_engine
from tests.factories import service_env

TEMPLATE_DB = "crypto_template"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@contextlib.contextmanager
def public_workdir(prefix: str) -> Iterator[Path]:
    """A fresh directory that an unprivileged PostgreSQL can use, removed afterwards.

    Not under pytest's tmp dir: pytest keeps that private to root (0700) and makes it private
    again at the start of every session, which would lock out a server that is running.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    with public_workdir("crypto-pg-") as workdir:
        server = LocalPostgres(workdir, database=TEMPLATE_DB)
        server.start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
async def migrated_template(postgres_server: LocalPostgres) -> str:
    """The template database at Alembic head; tests copy it instead of migrating again."""
    engine = create_engine(DatabaseSettings(url=postgres_server.url))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    return TEMPLATE_DB


async def _admin_connection(server: LocalPostgres) -> asyncpg.Connection:
    return await asyncpg.connect(server.dsn.replace(f"/{TEMPLATE_DB}?", "/postgres?"))


@pytest.fixture
async def database_url(
    postgres_server: LocalPostgres, migrated_template: str
) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (SQLAlchemy URL)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await _admin_connection(postgres_server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{migrated_template}"')
    finally:
        await admin.close()
    yield postgres_server.url.replace(f"/{TEMPLATE_DB}?", f"/{name}?")
    admin = await _admin_connection(postgres_server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def make_settings(
    kafka_broker: LocalKafka, database_url: str, tmp_path: Path
) -> Callable[..., Settings]:
    """Settings for this test: real services, a topic and group of its own; env-style overrides."""
    base = service_env(kafka_broker.bootstrap_servers, database_url)

    def build(**overrides: str) -> Settings:
        return load_settings({**base, **overrides})

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database)
    yield engine
    await engine.dispose()
