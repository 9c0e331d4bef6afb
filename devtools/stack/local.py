"""Kafka + PostgreSQL together, as `make stack-up`, `make run` and the benchmark want them."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devtools.stack.common import STACK_DIR
from devtools.stack.kafka import LocalKafka, last_run
from devtools.stack.postgres import LocalPostgres

DEFAULT_KAFKA_PORT = 19092
DEFAULT_CONTROLLER_PORT = 19093


@dataclass(frozen=True)
class StackEnv:
    """Where the pipeline finds its services: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL."""

    kafka_bootstrap_servers: str
    database_url: str

    def as_shell(self) -> str:
        return (
            f"export KAFKA_BOOTSTRAP_SERVERS={shlex.quote(self.kafka_bootstrap_servers)}\n"
            f"export DATABASE_URL={shlex.quote(self.database_url)}\n"
        )


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    state: Literal["running", "stopped", "external"]
    detail: str


class LocalStack:
    """The local services under `root` (default `<project>/.stack`).

    A service whose variable is set in `environ` (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL) is
    external: `up()` neither starts it nor needs it. A variable that names this stack's own
    service (a sourced `.stack/env`) does not count as external.
    """

    def __init__(
        self,
        root: Path = STACK_DIR,
        *,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.root = root
        self.env_file = root / "env"
        # Ports: as given, else those of the last run here, else the well-known defaults.
        last = last_run(root / "kafka")
        self.kafka = LocalKafka(
            root / "kafka",
            kafka_port or last.get("port") or DEFAULT_KAFKA_PORT,
            controller_port or last.get("controller_port") or DEFAULT_CONTROLLER_PORT,
        )
        self.postgres = LocalPostgres(root / "postgres")
        given_kafka = environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
        given_database = environ.get("DATABASE_URL") or None
        self.external_kafka = given_kafka if given_kafka != self.kafka.bootstrap_servers else None
        self.external_database_url = given_database if given_database != self.postgres.url else None

    def env(self) -> StackEnv:
        return StackEnv(
            kafka_bootstrap_servers=self.external_kafka or self.kafka.bootstrap_servers,
            database_url=self.external_database_url or self.postgres.url,
        )

    def up(self) -> StackEnv:
        """Start what is not external and not yet running; write `root/env`."""
        wanted: list[LocalKafka | LocalPostgres] = []
        # Kafka first: its checks (java, ports) are the ones likely to fail.
        if self.external_kafka is None:
            wanted.append(self.kafka)
        if self.external_database_url is None:
            wanted.append(self.postgres)
        started: list[LocalKafka | LocalPostgres] = []
        try:
            for service in wanted:
                was_running = service.is_running()
                service.start()
                if not was_running:
                    started.append(service)
        except BaseException:
            # All or nothing: a failed `up` leaves nothing behind that `down` must clean.
            for service in reversed(started):
                service.stop()
            raise
        env = self.env()
        self.root.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text(env.as_shell(), encoding="utf-8")
        return env

    def down(self) -> None:
        """Stop this stack's own services, whatever the environment says; remove `root/env`."""
        self.kafka.stop()
        self.postgres.stop()
        self.env_file.unlink(missing_ok=True)

    def status(self) -> list[ServiceStatus]:
        kafka = (
            ServiceStatus("kafka", "external", f"KAFKA_BOOTSTRAP_SERVERS={self.external_kafka}")
            if self.external_kafka
            else _local_status(
                "kafka", self.kafka.pid, self.kafka.bootstrap_servers, self.kafka.log_file
            )
        )
        postgres = (
            ServiceStatus("postgres", "external", f"DATABASE_URL={self.external_database_url}")
            if self.external_database_url
            else _local_status(
                "postgres", self.postgres.pid, self.postgres.url, self.postgres.log_file
            )
        )
        return [kafka, postgres]


def _local_status(name: str, pid: int | None, address: str, log_file: Path) -> ServiceStatus:
    if pid is None:
        return ServiceStatus(name, "stopped", f"{address} (log {log_file})")
    return ServiceStatus(name, "running", f"{address} pid {pid} (log {log_file})")
