"""The local stack, with real processes: a Kafka 4.1.1 broker from Maven jars and PostgreSQL."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from devtools.stack import (
    DEFAULT_JARS_DIR,
    LocalKafka,
    LocalPostgres,
    LocalStack,
    StackError,
    ensure_kafka_jars,
    free_port,
    jars,
    wait_kafka_ready,
)
from devtools.stack.jars import REQUIRED_JARS, java_executable, locked_jars
from pipeline.core.settings import PROJECT_ROOT
from tests.conftest import public_workdir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    with public_workdir("crypto-stack-pg-") as workdir:
        server = LocalPostgres(workdir)
        server.start()
        yield server
        server.stop()


@pytest.fixture
def uncached_java() -> Iterator[None]:
    """The java lookup is cached per process; these tests change PATH under it."""
    java_executable.cache_clear()
    yield
    java_executable.cache_clear()


def _path_of_only(monkeypatch: pytest.MonkeyPatch, bin_dir: Path, **tools: Path) -> None:
    """PATH becomes `bin_dir`, holding just `tools` (name -> executable)."""
    bin_dir.mkdir()
    for name, target in tools.items():
        (bin_dir / name).symlink_to(target)
    monkeypatch.setenv("PATH", str(bin_dir))


async def _create_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()


async def test_broker_on_free_ports_round_trips_a_record_with_aiokafka(kafka: LocalKafka) -> None:
    assert kafka.is_running()
    assert kafka.bootstrap_servers == f"127.0.0.1:{kafka.port}"
    await _create_topic(kafka.bootstrap_servers, "roundtrip")
    assert "roundtrip" in await wait_kafka_ready(kafka.bootstrap_servers, timeout=10)

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        sent = await asyncio.wait_for(
            producer.send_and_wait("roundtrip", b'{"p":"1.5"}', key=b"BTCUSDT"), 10
        )
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        "roundtrip",
        bootstrap_servers=kafka.bootstrap_servers,
        group_id="stack-test",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 20
        records: list[ConsumerRecord[bytes, bytes]] = []
        while not records and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            records = [record for batch in batches.values() for record in batch]
        await consumer.commit()
    finally:
        await consumer.stop()
    assert [(r.key, r.value, r.partition, r.offset) for r in records] == [
        (b"BTCUSDT", b'{"p":"1.5"}', sent.partition, sent.offset)
    ]


async def test_restarted_broker_keeps_ports_and_topics(kafka: LocalKafka) -> None:
    await _create_topic(kafka.bootstrap_servers, "survives-restart")
    bootstrap, first_pid = kafka.bootstrap_servers, kafka.pid

    kafka.stop()
    assert not kafka.is_running()
    kafka.start()

    assert kafka.bootstrap_servers == bootstrap
    assert kafka.pid != first_pid
    assert "survives-restart" in await wait_kafka_ready(bootstrap, timeout=10)


async def test_killed_broker_restarts_with_its_data(kafka: LocalKafka) -> None:
    await _create_topic(kafka.bootstrap_servers, "survives-kill")
    kafka.kill()
    assert not kafka.is_running()
    kafka.start()
    assert "survives-kill" in await wait_kafka_ready(kafka.bootstrap_servers, timeout=10)


def test_taken_port_fails_fast_naming_the_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = LocalKafka(tmp_path / "kafka", port=port)
        started = time.monotonic()
        with pytest.raises(StackError, match=f"^port {port} is already in use$"):
            broker.start()
    assert time.monotonic() - started < 5
    assert not broker.is_running()


def test_cached_jars_are_not_fetched_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ensure_kafka_jars()  # fetches only if no broker of this run needed the jars yet
    # An unreachable repository: any attempt to fetch would raise StackError.
    monkeypatch.setenv("MAVEN_REPO_URL", "http://127.0.0.1:9")
    started = time.monotonic()
    lib = ensure_kafka_jars(DEFAULT_JARS_DIR)
    assert time.monotonic() - started < 1
    assert all((lib / jar).is_file() for jar in REQUIRED_JARS)


@pytest.fixture
def maven_mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Maven repository on 127.0.0.1 holding the locked jars (copied from the cache), and
    its root directory, so tests can alter what it serves."""
    lib = ensure_kafka_jars()
    root = tmp_path / "mirror"
    for jar in locked_jars():
        target = root / jar.url("").lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib / jar.file_name, target)
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_jars_are_fetched_without_maven_and_checked_against_the_lock(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, maven_mirror: tuple[str, Path]
) -> None:
    url, _ = maven_mirror
    monkeypatch.setenv("MAVEN_REPO_URL", url)
    _path_of_only(monkeypatch, tmp_path / "bin")  # no mvn, no java
    lib = ensure_kafka_jars(tmp_path / "cache")
    locked = locked_jars()
    assert sorted(p.name for p in lib.iterdir()) == sorted(jar.file_name for jar in locked)
    assert all((lib / jar).is_file() for jar in REQUIRED_JARS)


def test_a_jar_that_does_not_match_its_sha256_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, maven_mirror: tuple[str, Path]
) -> None:
    url, root = maven_mirror
    tampered = next(jar for jar in locked_jars() if jar.artifact == "kafka-server")
    (root / tampered.url("").lstrip("/")).write_bytes(b"not the jar")
    monkeypatch.setenv("MAVEN_REPO_URL", url)
    with pytest.raises(StackError, match=r"kafka-server-.*does not match the sha256"):
        ensure_kafka_jars(tmp_path / "cache")
    assert not (tmp_path / "cache" / "lib").exists()


def test_an_unreachable_repository_is_one_actionable_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAVEN_REPO_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(
        StackError, match=r"^cannot fetch http://127.0.0.1:.*Maven Central$"
    ) as info:
        ensure_kafka_jars(tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / "lib").exists()


@pytest.mark.usefixtures("uncached_java")
def test_old_java_on_path_gives_way_to_the_bundled_jdk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    _path_of_only(monkeypatch, tmp_path / "bin", java=fake)
    java = java_executable()
    assert java != str(tmp_path / "bin" / "java")
    version = subprocess.run([java, "-version"], capture_output=True, text=True, check=True)
    assert 'version "' in version.stderr


@pytest.mark.usefixtures("uncached_java")
def test_old_java_without_a_bundled_jdk_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "java"
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake.chmod(0o755)
    _path_of_only(monkeypatch, tmp_path / "bin", java=fake)
    monkeypatch.setattr(jars, "_bundled_java", lambda: None)
    with pytest.raises(StackError, match=r"needs Java 17\+, but .* is Java 11"):
        java_executable()


async def test_postgres_is_durable_and_keeps_data_across_restarts(
    postgres: LocalPostgres,
) -> None:
    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SHOW synchronous_commit") == "on"
        assert await connection.fetchval("SHOW fsync") == "on"
        assert await connection.fetchval("SELECT current_database()") == "crypto"
        await connection.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        await connection.execute("INSERT INTO kept VALUES (1)")
    finally:
        await connection.close()

    postgres.stop()
    assert not postgres.is_running()
    postgres.start()
    postgres.kill()  # a crash: committed rows must come back through WAL recovery
    postgres.start()

    connection = await asyncpg.connect(postgres.dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM kept") == 1
    finally:
        await connection.close()


async def test_postgres_url_works_with_sqlalchemy_asyncpg(postgres: LocalPostgres) -> None:
    assert postgres.url.startswith("postgresql+asyncpg://postgres@/crypto?host=/")
    engine = create_async_engine(postgres.url)
    try:
        async with engine.connect() as connection:
            row = (await connection.execute(text("SELECT current_database(), 1"))).one()
    finally:
        await engine.dispose()
    assert tuple(row) == ("crypto", 1)


def test_stack_uses_external_services_instead_of_starting_them(tmp_path: Path) -> None:
    environ = {"KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9092", "DATABASE_URL": "postgresql://x"}
    stack = LocalStack(tmp_path / "stack", environ=environ)
    env = stack.up()
    assert (env.kafka_bootstrap_servers, env.database_url) == tuple(environ.values())
    assert not stack.kafka.workdir.exists()
    assert not stack.postgres.workdir.exists()
    assert stack.env_file.read_text() == (
        "export KAFKA_BOOTSTRAP_SERVERS=kafka.example:9092\nexport DATABASE_URL=postgresql://x\n"
    )


def test_cli_up_leaves_services_running_and_down_stops_them() -> None:
    with public_workdir("crypto-stack-") as root:
        cli_up_leaves_services_running_and_down_stops_them(root)


def cli_up_leaves_services_running_and_down_stops_them(root: Path) -> None:
    kafka_port, controller_port = free_port(), free_port()
    environ = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    ports = ["--kafka-port", str(kafka_port), "--controller-port", str(controller_port)]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "devtools.stack", "--root", str(root), *args],
            cwd=PROJECT_ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    stack = LocalStack(root, kafka_port=kafka_port, controller_port=controller_port, environ={})
    try:
        up = cli("up", *ports)
        assert up.returncode == 0, up.stderr
        assert up.stdout == stack.env_file.read_text() == stack.env().as_shell()
        # The CLI has exited; both servers must still run.
        assert [s.state for s in stack.status()] == ["running", "running"]
        assert cli("status").returncode == 0

        again = cli("up", *ports)
        assert again.returncode == 0, again.stderr
        assert again.stdout == up.stdout
        assert "already runs" in again.stderr

        assert cli("down").returncode == 0
        assert [s.state for s in stack.status()] == ["stopped", "stopped"]
        assert not stack.env_file.exists()
        assert cli("status").returncode == 1
    finally:
        stack.down()
