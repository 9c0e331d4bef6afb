"""What the stack's services share: where they live, ports, log tails."""

from __future__ import annotations

import errno
import logging
import socket
from collections import deque
from pathlib import Path

from pipeline.core.errors import StackError
from pipeline.core.settings import PROJECT_ROOT

log = logging.getLogger("devtools.stack")

# Git-ignored; holds the jar cache, the services' data and `.stack/env`.
STACK_DIR = PROJECT_ROOT / ".stack"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_port_free(port: int) -> None:
    """Fail at once, naming the port, instead of letting a server die or hang on bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the JVM's server sockets: TIME_WAIT leftovers of a killed broker do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StackError(f"port {port} is already in use") from None
            raise StackError(f"cannot bind {LOOPBACK}:{port}: {exc.strerror}") from None


def tail(path: Path, lines: int = 30, offset: int = 0) -> str:
    """The last lines of a log file written after byte `offset`, or a note that there are none."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            last = deque(fh, maxlen=lines)
    except FileNotFoundError:
        return f"({path} does not exist)"
    return b"".join(last).decode("utf-8", errors="replace").rstrip() or f"({path} is empty)"
