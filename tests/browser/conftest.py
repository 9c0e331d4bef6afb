"""Fixtures of the browser tests: headless Chromium, the exchange simulator and the service as
users run them (`python -m devtools.simulator`, `python -m uvicorn api.main:app`), each in a
child process so the blocking WebDriver calls never stall them.

Chromium and chromedriver are required, not optional: without them the tests fail and say what
to install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from devtools.stack import LocalKafka, free_port
from tests.factories import service_env

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
INSTALL_HINT = "run `apt-get install chromium chromium-driver`"
WINDOW = (1280, 800)
# Headless and quiet: no sandbox (containers), no network beyond the page (closed network).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIMULATED_SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT,ADAUSDT"
SIMULATOR_RATE = 20.0  # trades/s per symbol
START_TIMEOUT_S = 60.0


class Browser:
    """One headless Chromium for the module, started on first use (so a missing binary fails
    the test that needs it, with the install hint, instead of erroring in setup)."""

    def __init__(self) -> None:
        self._driver: WebDriver | None = None
        self._profile: tempfile.TemporaryDirectory[str] | None = None

    @property
    def driver(self) -> WebDriver:
        if self._driver is None:
            self._driver = self._start()
        return self._driver

    def _start(self) -> WebDriver:
        missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
        if missing:
            pytest.fail(
                f"headless Chromium is needed for the dashboard tests but {', '.join(missing)} "
                f"is missing: {INSTALL_HINT}",
                pytrace=False,
            )
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for argument in [*CHROMIUM_ARGS, f"--user-data-dir={self._profile.name}"]:
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        # The page itself gets WINDOW (the window's frame takes some height in headless too).
        driver.set_window_size(*WINDOW)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(2 * WINDOW[0] - inner[0], 2 * WINDOW[1] - inner[1])
        return driver

    def open(self, url: str) -> WebDriver:
        """Load `url` with an empty console log."""
        driver = self.driver
        driver.get("about:blank")
        driver.get_log("browser")  # type: ignore[no-untyped-call]  # drop earlier pages' log
        driver.get(url)
        return driver

    def quit(self) -> None:
        if self._driver is not None:
            self._driver.quit()
            self._driver = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None


class ChildProcess:
    """A command in a child process, its output in `log`; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self._process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_answering(self, url: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until GET `url` answers 200; fails with the process's output if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                code = self._process.poll()
                state = "timed out" if code is None else f"exited with {code}"
                raise AssertionError(f"{self.name} {state} before {url} answered:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._out.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    browser = Browser()
    yield browser
    browser.quit()


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    """The Binance-compatible exchange; yields its base URL (ws:// and http:// on one port)."""
    port = free_port()
    process = ChildProcess(
        "simulator",
        [
            sys.executable,
            "-m",
            "devtools.simulator",
            "--port",
            str(port),
            "--symbols",
            SIMULATED_SYMBOLS,
            "--rate",
            str(SIMULATOR_RATE),
        ],
        dict(os.environ),
        tmp_path / "simulator.log",
    )
    try:
        process.wait_answering(f"http://{LOOPBACK}:{port}/api/v3/exchangeInfo")
        yield f"{LOOPBACK}:{port}"
    finally:
        process.stop()


StartService = Callable[..., str]


@pytest.fixture
def start_service(
    kafka_broker: LocalKafka, database_url: str, tmp_path: Path
) -> Iterator[StartService]:
    """`start_service(**ENV)`: `uvicorn api.main:app` on a free port against this test's
    database and its own topic and group; returns the base URL once /health answers."""
    started: list[ChildProcess] = []

    def start(**overrides: str) -> str:
        env = {
            **os.environ,
            **service_env(kafka_broker.bootstrap_servers, database_url),
            "LOG_LEVEL": "WARNING",
            **overrides,
        }
        if "API_KEY" not in overrides:
            env.pop("API_KEY", None)
        port = free_port()
        process = ChildProcess(
            f"service-{len(started)}",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:app",
                "--host",
                LOOPBACK,
                "--port",
                str(port),
                "--no-access-log",
            ],
            env,
            tmp_path / f"service-{len(started)}.log",
        )
        started.append(process)
        url = f"http://{LOOPBACK}:{port}"
        process.wait_answering(f"{url}/health")
        return url

    yield start
    for process in reversed(started):
        process.stop()
