"""`crypto-pipeline`: thin commands over the same modules, failing clearly on bad configuration."""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.storage import migrate


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.runtime.cli", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invalid_configuration_stops_the_command_with_one_line_naming_the_key() -> None:
    result = run_cli("consume", KAFKA__PARTITIONS="0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "crypto-pipeline: invalid setting KAFKA__PARTITIONS (kafka.partitions): "
        "Input should be greater than 0"
    ]


@pytest.mark.integration
def test_migrate_reports_the_database_at_head(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    result = run_cli("migrate", DATABASE_URL=settings.database.url, LOG_FORMAT="console")
    assert result.returncode == 0, result.stderr
    assert f"database at revision {migrate.head_revision()}" in result.stderr + result.stdout
