"""The version ranges pyproject.toml pins, for the tests of the `_compat` modules' guards."""

from __future__ import annotations

import re
import tomllib
from typing import Any

from pipeline.core.settings import PROJECT_ROOT


def pinned_range(distribution: str) -> str:
    """The specifier pyproject.toml gives `distribution` (extras dropped): ">=0.14,<0.15"."""
    project: dict[str, Any] = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text("utf-8"))
    found: list[str] = []
    for requirement in project["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(.*)", requirement)
        if match and _normal(match.group(1)) == _normal(distribution):
            found.append(match.group(2))
    for group in project["tool"]["poetry"]["group"].values():
        for name, spec in group["dependencies"].items():
            if _normal(name) == _normal(distribution):
                found.append(spec if isinstance(spec, str) else spec["version"])
    assert len(found) == 1, f"{distribution} is pinned {len(found)} times in pyproject.toml"
    return found[0].replace(" ", "")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
