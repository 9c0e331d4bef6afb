"""Apache Kafka's broker jars, resolved once from Maven Central and cached on disk."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import re
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from devtools.stack.common import STACK_DIR, log
from pipeline.core.errors import StackError

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17
DEFAULT_JARS_DIR = STACK_DIR / f"kafka-{KAFKA_VERSION}"
# Proof that the resolution is complete and that the broker will log (the binding jars).
REQUIRED_JARS = (
    f"kafka-server-{KAFKA_VERSION}.jar",
    "log4j-slf4j-impl-2.24.3.jar",
    "slf4j-api-1.7.36.jar",
)
MVN_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"
MVN_TIMEOUT_S = 900
# Holds the pom's hash: a changed pom (say, another Kafka version) resolves again.
MARKER = ".complete"


def _pom_text() -> str:
    return resources.files("devtools.stack").joinpath("kafka-pom.xml").read_text("utf-8")


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` is not on PATH: {hint}")
    return path


@functools.cache
def java_executable() -> str:
    """Path of a `java` that can run the broker; StackError says what to install otherwise."""
    java = _tool("java", f"install a Java {MIN_JAVA}+ runtime (apt-get install openjdk-17-jre)")
    # `java -version` writes to stderr, e.g. `openjdk version "17.0.15"` or `"1.8.0_392"`.
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=30, check=False
    ).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found is None:
        raise StackError(f"cannot tell the version of {java}: {out.strip()[:200]}")
    major = int(found[1])
    if major == 1 and found[2]:  # Java 8 and older call themselves 1.x
        major = int(found[2])
    if major < MIN_JAVA:
        raise StackError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but {java} is Java {major}: "
            "install openjdk-17-jre (or newer) and put it first on PATH"
        )
    return java


def _complete(cache_dir: Path, pom_hash: str) -> bool:
    marker = cache_dir / MARKER
    lib = cache_dir / "lib"
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8").strip() == pom_hash
        and all((lib / jar).is_file() for jar in REQUIRED_JARS)
    )


def ensure_kafka_jars(cache_dir: Path = DEFAULT_JARS_DIR) -> Path:
    """Return the directory of the broker's jars (the classpath), fetching them on first use.

    The download runs Maven once; later calls only check the marker file. A file lock lets
    parallel callers (a test run and `make stack-up`) share one download.
    """
    pom = _pom_text()
    pom_hash = hashlib.sha256(pom.encode()).hexdigest()
    lib = cache_dir / "lib"
    if _complete(cache_dir, pom_hash):
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(cache_dir, pom_hash):  # another process may have finished meanwhile
            _fetch(cache_dir, pom, pom_hash)
    return lib


def _fetch(cache_dir: Path, pom: str, pom_hash: str) -> None:
    java_executable()  # Maven needs it too, and the jars are useless without it
    mvn = _tool("mvn", "install Maven (apt-get install maven) to fetch the Kafka jars once")
    lib = cache_dir / "lib"
    # Jars of an older pom would sit on the classpath next to the new ones.
    shutil.rmtree(lib, ignore_errors=True)
    (cache_dir / MARKER).unlink(missing_ok=True)
    pom_file = cache_dir / "pom.xml"
    pom_file.write_text(pom, encoding="utf-8")
    log.info("fetching Kafka %s jars from Maven Central (first run only)…", KAFKA_VERSION)
    started = time.monotonic()
    cmd = [
        mvn, "-B", "-q", "-f", str(pom_file), MVN_GOAL,
        f"-DoutputDirectory={lib}", "-DincludeScope=runtime",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=MVN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"Maven did not finish fetching the Kafka jars in {MVN_TIMEOUT_S} s; "
            f"check access to Maven Central and run again (cache: {cache_dir})"
        ) from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise StackError(
            f"Maven could not fetch the Kafka jars (exit {result.returncode}); "
            "check access to Maven Central. Last lines:\n" + "\n".join(output)
        )
    missing = [jar for jar in REQUIRED_JARS if not (lib / jar).is_file()]
    if missing:
        raise StackError(f"Maven ran but {lib} lacks {', '.join(missing)}; check {pom_file}")
    (cache_dir / MARKER).write_text(pom_hash + "\n", encoding="utf-8")
    jars = sum(1 for _ in lib.glob("*.jar"))
    log.info("done in %.0f s, %d jars in %s", time.monotonic() - started, jars, lib)
