"""The version guard of the `_compat` modules: each touches one library's internals, which may
change in any release, so each refuses to import with a release it was not written for.

The range is the one pyproject.toml pins (the unit test of each compat module checks that they
agree): a release the pin allows but the internals no longer fit fails that module's unit test,
never silently in production.
"""

from __future__ import annotations

import re

Release = tuple[int, ...]

_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def release_of(version: str) -> Release:
    """The numeric release of a version string: "0.14.0b1" → (0, 14, 0); ValueError if none."""
    match = _RELEASE.match(version.strip().lstrip("v"))
    if match is None:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(part) for part in match.group().split("."))


def spec_of(at_least: Release, below: Release) -> str:
    """The range as pyproject.toml spells it: ">=0.14,<0.15"."""
    return f">={'.'.join(map(str, at_least))},<{'.'.join(map(str, below))}"


def require_release(library: str, version: str, at_least: Release, below: Release) -> None:
    """ImportError unless `at_least` <= `version` < `below` (release numbers only)."""
    try:
        release = release_of(version)
    except ValueError:
        release = None
    if release is None or not at_least <= release < below:
        raise ImportError(
            f"{library} {version} is installed, but our code that relies on its internals was "
            f"written for {library}{spec_of(at_least, below)} (the range pyproject.toml pins); "
            f"install a release in that range, or check the internals against {version} and "
            "widen the range"
        )
