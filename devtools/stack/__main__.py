"""`python -m devtools.stack up|down|status|lock-jars`: the local Kafka + PostgreSQL.

`up` leaves both servers running after it exits and writes `.stack/env` (shell `export` lines
for KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL), which it also prints. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from devtools.stack.common import STACK_DIR, log
from devtools.stack.jars import LOCK_FILE, write_lock
from devtools.stack.local import DEFAULT_CONTROLLER_PORT, DEFAULT_KAFKA_PORT, LocalStack
from pipeline.core.errors import StackError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stack",
        description="Local Kafka + PostgreSQL for development, tests and the benchmark.",
    )
    parser.add_argument(
        "--root", type=Path, default=STACK_DIR, help=f"state directory (default {STACK_DIR})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up",
        help="start both in the background, write and print the env "
        "(skips Kafka if KAFKA_BOOTSTRAP_SERVERS is set, PostgreSQL if DATABASE_URL is set)",
    )
    up.add_argument(
        "--kafka-port",
        type=int,
        help=f"broker port (default: the last run's, else {DEFAULT_KAFKA_PORT})",
    )
    up.add_argument(
        "--controller-port",
        type=int,
        help=f"KRaft controller port (default: the last run's, else {DEFAULT_CONTROLLER_PORT})",
    )
    commands.add_parser("down", help="stop both (data is kept) and remove the env file")
    commands.add_parser("status", help="show what runs; exit 1 unless everything is available")
    commands.add_parser(
        "lock-jars", help=f"resolve kafka-pom.xml with Maven and rewrite {LOCK_FILE} (maintainers)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="stack: %(message)s", stream=sys.stderr)
    try:
        if args.command == "lock-jars":
            here = Path(__file__).resolve().parent
            count = write_lock(here / "kafka-pom.xml", here / LOCK_FILE)
            log.info("%d jars written to %s", count, here / LOCK_FILE)
            return 0
        stack = LocalStack(
            args.root,
            kafka_port=getattr(args, "kafka_port", None),
            controller_port=getattr(args, "controller_port", None),
        )
        if args.command == "up":
            print(stack.up().as_shell(), end="")
            log.info("env written to %s", stack.env_file)
        elif args.command == "down":
            stack.down()
        else:
            statuses = stack.status()
            for status in statuses:
                print(f"{status.name:<9} {status.state:<8} {status.detail}")
            return 0 if all(status.state != "stopped" for status in statuses) else 1
    except StackError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
