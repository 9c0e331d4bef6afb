"""Symbol names from outside (exchangeInfo, rows of tracked_symbols): the valid ones kept, the
others skipped and reported once each.

Any name that reaches the source is subscribed to, so it must match the symbol pattern; a name
that does not (a listing like "BTC-USDT", a row written by an older version) is no reason to
stop: it is skipped, logged and counted in `pipeline_symbols_skipped_total` the first time it is
seen, and silently after that (the same bad listing is in every poll of exchangeInfo).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeGuard

from pipeline.core import metrics
from pipeline.core.trade_checks import SYMBOL_PATTERN

logger = logging.getLogger(__name__)

# Distinct bad names remembered per origin; past that, further ones are skipped unreported (a
# feed of made-up names must not grow memory or the log without end).
MAX_REPORTED = 10_000
SHOWN_CHARS = 64


def is_valid_name(name: object) -> TypeGuard[str]:
    """A str matching the symbol pattern (no case folding, no stripping: stored as it is)."""
    return type(name) is str and SYMBOL_PATTERN.fullmatch(name) is not None


def shown(name: object) -> str:
    """A name as a log line shows it: repr (no control characters, no log injection), cut."""
    text = repr(name)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class SkippedNames:
    """The invalid names from one origin ("exchange", "registry"), each reported once."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._seen: set[str] = set()
        self._full = False
        self._counter = metrics.SYMBOLS_SKIPPED.labels(origin)

    @property
    def names(self) -> tuple[str, ...]:
        """The invalid names seen so far, as `shown()` renders them."""
        return tuple(sorted(self._seen))

    def valid(self, names: Iterable[object]) -> list[str]:
        """The valid names, in order; every other one is reported (the first time)."""
        kept: list[str] = []
        for name in names:
            if is_valid_name(name):
                kept.append(name)
            else:
                self.report(name)
        return kept

    def report(self, name: object) -> None:
        text = shown(name)
        if text in self._seen:
            return
        if len(self._seen) >= MAX_REPORTED:
            if not self._full:
                self._full = True
                logger.warning(
                    "%d invalid %s symbol names reported; further ones are skipped unreported",
                    MAX_REPORTED,
                    self.origin,
                )
            return
        self._seen.add(text)
        self._counter.inc()
        logger.warning(
            "symbol skipped: %s name %s does not match %s (reported once)",
            self.origin,
            text,
            SYMBOL_PATTERN.pattern,
        )
