"""Create a Python environment with Poetry in it, on a machine that has only `python3`.

    python3 devtools/bootstrap.py DIR 'poetry>=2.1,<3'

Debian's python3 lacks ensurepip (it is in python3-venv, which a minimal system does not have),
so `python3 -m venv DIR` fails there. This script needs only the standard library: it makes
the environment without pip (`venv --without-pip`, which works without python3-venv), fetches
pip's wheel from PyPI, checks its sha256 against the index, and lets that wheel install pip and
the requested packages. Downloads trust SSL_CERT_FILE / REQUESTS_CA_BUNDLE when set (a
TLS-intercepting proxy's CA), and PIP_INDEX_URL names another index.

Standalone on purpose: it runs before any dependency of the project is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
from pathlib import Path

INDEX = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
TIMEOUT_S = 120


def tls_context() -> ssl.SSLContext:
    bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle if bundle and Path(bundle).is_file() else None)


def latest_pip_wheel() -> tuple[str, str, str]:
    """File name, URL and sha256 of the newest pip wheel for any Python 3 (PEP 691 JSON index)."""
    request = urllib.request.Request(
        f"{INDEX}/pip/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=tls_context()) as response:
        files = json.load(response)["files"]
    wheels = [
        f
        for f in files
        if f["filename"].endswith("-py3-none-any.whl")
        and not f.get("yanked")
        and "sha256" in f.get("hashes", {})
    ]
    if not wheels:
        raise SystemExit(f"bootstrap: no pip wheel listed at {INDEX}/pip/")
    newest = max(wheels, key=lambda f: _version(f["filename"].split("-")[1]))
    url = urllib.parse.urljoin(f"{INDEX}/pip/", newest["url"])
    return newest["filename"], url, newest["hashes"]["sha256"]


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if digits != piece:  # a pre-release (b1, rc2): never newer than a release
            return (*parts, -1)
        parts.append(int(digits))
    return tuple(parts)


def download(url: str, sha256: str, target: Path) -> None:
    digest = hashlib.sha256()
    with (
        urllib.request.urlopen(url, timeout=TIMEOUT_S, context=tls_context()) as response,
        target.open("wb") as out,
    ):
        while chunk := response.read(1 << 16):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise SystemExit(f"bootstrap: {url} does not match its sha256 in the index; not used")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    env_dir = Path(argv[0]).resolve()
    packages = argv[1:]
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env_dir)
    has_pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode
    with tempfile.TemporaryDirectory() as tmp:
        if has_pip == 0:
            installer = [str(python), "-m", "pip"]
        else:
            name, url, sha256 = latest_pip_wheel()
            print(f"bootstrap: fetching {name} from {INDEX}", flush=True)
            wheel = Path(tmp) / name
            download(url, sha256, wheel)
            # A wheel is a zip that Python can run: pip installs itself from its own wheel.
            installer = [str(python), f"{wheel}/pip"]
            packages = [str(wheel), *packages]
        command = [*installer, "install", "--quiet", "--disable-pip-version-check", *packages]
        return subprocess.run(command).returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
