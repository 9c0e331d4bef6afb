"""A real single-node Apache Kafka broker (KRaft) run from the Maven jars as a child process."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devtools.stack.common import LOOPBACK, ensure_port_free, free_port, log, tail
from devtools.stack.jars import DEFAULT_JARS_DIR, KAFKA_VERSION, ensure_kafka_jars, java_executable
from pipeline.core.errors import StackError

READY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 5.0
STATE_FILE = "kafka.json"

LOG4J2_PROPERTIES = """\
# Everything goes to stdout, which LocalKafka redirects to broker.log.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# One line per request otherwise.
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def _server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    return f"""\
# Written by devtools.stack on every start; edit devtools/stack/kafka.py instead.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{LOOPBACK}:{controller_port}
listeners=PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}
advertised.listeners=PLAINTEXT://{LOOPBACK}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
# The product creates its topics itself (pipeline.kafka.admin); a typo must not create a topic.
auto.create.topics.enable=false
num.partitions=3
default.replication.factor=1
offsets.topic.replication.factor=1
# 50 offsets partitions (the default) slow the first group join and every restart on a small
# machine, and one broker gains nothing from them.
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# After a crash the restarted broker cannot register until its old session expires (default
# 9 s of DUPLICATE_BROKER_REGISTRATION); chaos tests kill and restart it often.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
num.network.threads=2
num.io.threads=4
log.retention.hours=24
log.segment.bytes=67108864
"""


def _random_cluster_id() -> str:
    """What `StorageTool random-uuid` prints (base64url of a UUID), without starting a JVM."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's Uuid.randomUuid() skips ids starting with "-": they read as CLI options.
        if not cluster_id.startswith("-"):
            return cluster_id


async def _accepts_tcp(bootstrap: str) -> bool:
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


async def _list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


async def _poll_ready(
    bootstrap: str, timeout: float, alive: Callable[[], bool] | None = None
) -> list[str]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error = "nothing listens yet"
    while alive is None or alive():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise StackError(f"Kafka at {bootstrap} not ready after {timeout:.0f} s ({last_error})")
        # aiokafka logs every refused connection at ERROR; a plain TCP probe first keeps the
        # output clean while the JVM boots.
        if await _accepts_tcp(bootstrap):
            try:
                return await asyncio.wait_for(
                    _list_topics(bootstrap), min(remaining, PROBE_TIMEOUT_S)
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.2)
    raise StackError(f"the Kafka broker for {bootstrap} exited during start-up")


async def wait_kafka_ready(bootstrap: str, timeout: float = READY_TIMEOUT_S) -> list[str]:
    """Wait until an admin client can list topics at `bootstrap`; return the topic names.

    Raises StackError after `timeout` seconds.
    """
    return await _poll_ready(bootstrap, timeout)


def last_run(workdir: Path) -> dict[str, Any]:
    """Ports and cluster id of the broker last started in `workdir` ({} if none was)."""
    try:
        state: dict[str, Any] = json.loads((workdir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return state


class LocalKafka:
    """A single-node KRaft broker whose config, data and log live in `workdir`.

    Ports left as None are reused from the workdir's last run, else picked free, so a restart
    (in this process or another) keeps ports and data. The broker runs in its own session, so
    it survives the Python process that started it until `stop()` or `kill()`.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        *,
        jars_dir: Path = DEFAULT_JARS_DIR,
    ) -> None:
        self.workdir = workdir.resolve()
        self.jars_dir = jars_dir
        self.server_properties = self.workdir / "server.properties"
        self.log_file = self.workdir / "broker.log"
        self.data_dir = self.workdir / "data"
        self._state_file = self.workdir / STATE_FILE
        self._pid_file = self.workdir / "broker.pid"
        state = last_run(self.workdir)
        self.port: int = port or state.get("port") or free_port()
        self.controller_port: int = controller_port or state.get("controller_port") or free_port()
        while controller_port is None and self.controller_port == self.port:
            self.controller_port = free_port()
        if self.controller_port == self.port:
            raise StackError(f"Kafka and its controller cannot share port {self.port}")
        self.cluster_id: str = state.get("cluster_id") or _random_cluster_id()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's pid while it runs (also when another process started it)."""
        if self._proc is not None:
            return self._proc.pid if self._proc.poll() is None else None
        pid = self._read_pid()
        return pid if pid is not None and self._is_our_broker(pid) else None

    def is_running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Start the broker (or adopt the one already running here) and wait until it serves."""
        if self.is_running():
            log.info("Kafka already runs at %s (pid %s)", self.bootstrap_servers, self.pid)
            self._wait_ready(timeout)
            return
        java = java_executable()
        ensure_port_free(self.port)
        ensure_port_free(self.controller_port)
        lib = ensure_kafka_jars(self.jars_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save_state()
        self.server_properties.write_text(
            _server_properties(self.port, self.controller_port, self.data_dir), encoding="utf-8"
        )
        log4j = self.workdir / "log4j2.properties"
        log4j.write_text(LOG4J2_PROPERTIES, encoding="utf-8")
        classpath = f"{lib}/*"
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath)
        log.info(
            "starting Kafka %s at %s (controller port %d, log %s)",
            KAFKA_VERSION, self.bootstrap_servers, self.controller_port, self.log_file,
        )  # fmt: skip
        cmd = [
            java, "-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", classpath, "kafka.Kafka", str(self.server_properties),
        ]  # fmt: skip
        started = time.monotonic()
        with self.log_file.open("ab") as out:
            self._log_offset = out.tell()  # errors show this start's lines, not older runs
            # Own session: Ctrl+C in a terminal or the exit of the CLI does not reach the JVM,
            # and stop() can signal the whole group.
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._pid_file.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        self._wait_ready(timeout)
        log.info(
            "Kafka ready at %s in %.1f s (pid %d)",
            self.bootstrap_servers, time.monotonic() - started, self._proc.pid,
        )  # fmt: skip

    def stop(self, timeout: float = 20.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after `timeout` seconds; data is kept."""
        pid = self.pid
        if pid is None:
            self._forget()
            return
        with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
            os.killpg(pid, signal.SIGTERM)
        if not self._wait_exit(pid, timeout):
            log.warning("Kafka (pid %d) ignored SIGTERM for %.0f s; killing it", pid, timeout)
            self._killpg(pid)
        self._forget()
        log.info("Kafka stopped")

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (for chaos tests); data is kept."""
        pid = self.pid
        if pid is not None:
            self._killpg(pid)
        self._forget()

    def _killpg(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not self._wait_exit(pid, 10.0):
            raise StackError(f"Kafka (pid {pid}) survived SIGKILL")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        try:
            if self._proc is not None:
                self._proc.wait(timeout)
            else:
                psutil.Process(pid).wait(timeout)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            return False
        except psutil.NoSuchProcess:
            pass
        return True

    def _forget(self) -> None:
        self._proc = None
        self._pid_file.unlink(missing_ok=True)

    def _wait_ready(self, timeout: float) -> None:
        # A private loop on a worker thread: works from plain code and from inside a running
        # event loop (async fixtures) alike.
        probe = _poll_ready(self.bootstrap_servers, timeout, self.is_running)
        launched = self._proc is not None  # else an adopted broker, which is not ours to kill
        with ThreadPoolExecutor(1, thread_name_prefix="kafka-ready") as pool:
            future = pool.submit(asyncio.run, probe)
            try:
                future.result()
            except StackError as exc:
                code = self._proc.poll() if self._proc is not None else None
                if launched:
                    self.kill()
                reason = f"the Kafka broker exited with code {code}" if code is not None else exc
                raise StackError(
                    f"{reason}; last lines of {self.log_file}:\n"
                    + tail(self.log_file, offset=self._log_offset)
                ) from None
            except BaseException:
                # Ctrl+C: leave no half-started broker behind; its death also ends the probe.
                if launched:
                    self.kill()
                raise

    def _format(self, java: str, classpath: str) -> None:
        cmd = [
            java, "-cp", classpath, "kafka.tools.StorageTool", "format",
            "-c", str(self.server_properties), "-t", self.cluster_id, "--ignore-formatted",
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise StackError(
                f"formatting Kafka storage in {self.data_dir} failed (exit {result.returncode}):"
                f"\n{(result.stdout + result.stderr).strip()}"
            )

    def _is_our_broker(self, pid: int) -> bool:
        # The pid file may be stale and its pid reused: check it is this workdir's broker.
        try:
            proc = psutil.Process(pid)
            return (
                proc.status() != psutil.STATUS_ZOMBIE
                and str(self.server_properties) in proc.cmdline()
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _read_pid(self) -> int | None:
        try:
            return int(self._pid_file.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None

    def _save_state(self) -> None:
        # The cluster id must match the formatted storage, so it is kept with the ports.
        state = {
            "port": self.port,
            "controller_port": self.controller_port,
            "cluster_id": self.cluster_id,
        }
        self._state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
