"""Health, readiness, status, metrics and start-up of the API (real Kafka and PostgreSQL)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from api.main import create_app
from pipeline.core.settings import Settings
from tests.api_harness import serve

pytestmark = pytest.mark.integration


@pytest.fixture
def api_settings(make_settings: Callable[..., Settings]) -> Settings:
    """API only: no pipeline roles, so start and stop are instant."""
    return make_settings(PIPELINE_ROLES="none")


async def test_health_answers_ok_while_the_process_lives(api_settings: Settings) -> None:
    async with serve(api_settings) as client:
        response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_reports_every_check_when_all_dependencies_answer(
    api_settings: Settings,
) -> None:
    async with serve(api_settings) as client:
        response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"postgres", "migrations", "kafka", "tasks", "sink"}
    assert all(check["ok"] for check in body["checks"].values())


async def test_ready_is_503_naming_kafka_when_kafka_is_unreachable(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(PIPELINE_ROLES="none", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    async with serve(settings) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    detail = response.json()["detail"]
    assert detail["status"] == "not ready"
    assert detail["checks"]["kafka"]["ok"] is False
    assert detail["checks"]["postgres"]["ok"] is True
    assert detail["checks"]["migrations"]["ok"] is True


async def test_pipeline_status_of_an_api_only_instance_lists_no_roles(
    api_settings: Settings,
) -> None:
    async with serve(api_settings) as client:
        response = await client.get("/pipeline/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["roles"] == []
    assert body["tasks"] == []
    assert body["counts"] == {"received": None, "produced": None, "stored": None, "dead_letters": 0}
    assert body["source"] is None and body["consumer"] is None and body["gaps"] is None


async def test_metrics_are_served_in_prometheus_text_format(api_settings: Settings) -> None:
    async with serve(api_settings) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "pipeline_rows_stored_total" in response.text


async def test_openapi_documents_every_endpoint_of_the_contract(api_settings: Settings) -> None:
    async with serve(api_settings) as client:
        schema = (await client.get("/openapi.json")).json()
    operations = {
        (method.upper(), path) for path, item in schema["paths"].items() for method in item
    }
    assert operations == {
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/symbols"),
        ("POST", "/symbols"),
        ("DELETE", "/symbols/{symbol}"),
        ("GET", "/prices"),
        ("GET", "/prices/{symbol}"),
        ("GET", "/prices/{symbol}/history"),
        ("GET", "/prices/{symbol}/candles"),
        ("POST", "/backfills"),
        ("GET", "/backfills"),
        ("GET", "/backfills/{job_id}"),
        ("DELETE", "/backfills/{job_id}"),
        ("GET", "/consumer/lag"),
        ("GET", "/pipeline/status"),
        ("GET", "/metrics"),
        ("GET", "/stream"),
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert operation.get("tags"), f"{method} {path} has no tag"


async def test_startup_fails_with_one_line_naming_an_invalid_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    caplog.set_level(logging.ERROR)
    with pytest.raises(Exception, match="PORT"):
        async with serve(None):
            pass
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("PORT" in message and "\n" not in message for message in errors), errors


async def test_startup_refuses_when_postgresql_stays_unreachable(
    make_settings: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(DATABASE_URL=f"postgresql+asyncpg://postgres@/crypto?host={tmp_path}")
    with pytest.raises(Exception, match="did not answer"):
        async with serve(settings, database_wait_s=1.5):
            pass
    assert any("DATABASE_URL" in r.getMessage() for r in caplog.records)


def test_importing_the_app_needs_no_configuration() -> None:
    app = create_app()
    assert app.title == "crypto-streaming-pipeline"
