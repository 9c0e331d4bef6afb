"""Property-based API test: schemathesis drives a real `uvicorn api.main:app` from its OpenAPI.

Positive and negative cases for every operation (with the API key); no answer may be a 5xx, and
every answer must match the documented status codes, content types and response schemas.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from devtools.stack import free_port
from pipeline.core.settings import Settings
from tests.api_harness import insert_trades, trade_row

pytestmark = pytest.mark.integration

KEY = "schemathesis-key"
EXAMPLES_PER_OPERATION = 60
ROOT = Path(__file__).resolve().parents[3]
# An event stream answers for as long as the client listens: a generated request would never
# end. tests/integration/api/test_stream.py covers it, its refusals included.
STREAMING_PATHS = {"/stream"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def uvicorn_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The service as users run it: `uvicorn api.main:app`, configured by the environment."""
    port = free_port()
    env = {
        **os.environ,
        "SETTINGS_FILE": str(ROOT / "config" / "settings.yaml"),
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "KAFKA_TOPIC": settings.kafka.topic,
        "KAFKA__GROUP_ID": settings.kafka.group_id,
        "DATABASE_URL": settings.database.url,
        "PIPELINE_ROLES": "none",
        "BINANCE__VERIFY_SYMBOLS": "false",
        "API_KEY": KEY,
        "LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "uvicorn.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "uvicorn.log").read_text())
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    url: str,
    session: requests.Session,
    statuses: collections.Counter[str],
) -> None:
    """Up to EXAMPLES_PER_OPERATION generated requests; raises on the first failed check."""
    checks = CHECKS + ([negative_data_rejection] if mode.is_negative else [])
    name = f"{operation.method.upper()} {operation.path}"

    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, session=session, headers={"X-API-Key": KEY})
        statuses[f"{name} {response.status_code}"] += 1
        case.validate_response(response, checks=checks, headers={"X-API-Key": KEY})

    run()


def _fuzz(url: str) -> tuple[collections.Counter[str], list[str]]:
    """Every operation in both generation modes; the status codes seen and the failures."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in STREAMING_PATHS:
                continue
            for mode in modes:
                try:
                    _fuzz_operation(operation, mode, url, session, statuses)
                except Unsatisfiable:
                    continue  # no parameters to break: nothing negative to send
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # one failure per operation and mode is enough
                    failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return statuses, failures


async def test_generated_requests_never_get_a_5xx_or_an_undocumented_answer(
    uvicorn_url: str, engine: AsyncEngine
) -> None:
    await insert_trades(
        engine, [trade_row("BTCUSDT", i, 1_764_000_000_000 + i * 500) for i in range(1, 200)]
    )
    statuses, failures = await asyncio.to_thread(_fuzz, uvicorn_url)
    summary = "\n".join(f"{count:5d}  {key}" for key, count in sorted(statuses.items()))
    print(f"\nschemathesis: {sum(statuses.values())} requests\n{summary}")
    assert not failures, "\n\n".join(failures)
    assert not [key for key in statuses if key.rsplit(" ", 1)[1].startswith("5")]
