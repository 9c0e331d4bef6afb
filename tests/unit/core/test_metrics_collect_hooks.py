"""on_collect hooks: counts kept on a hot path reach Prometheus before every exposition."""

from __future__ import annotations

import gc

from prometheus_client import REGISTRY, Counter

from pipeline.core import metrics

COUNTER = Counter("test_hooked_total", "counted by a hot path, reported by a hook")


class HotPath:
    def __init__(self) -> None:
        self.count = self.reported = 0
        metrics.on_collect(self.report)

    def report(self) -> None:
        COUNTER.inc(self.count - self.reported)
        self.reported = self.count


def value() -> float:
    return REGISTRY.get_sample_value("test_hooked_total") or 0.0


def test_exposition_includes_counts_kept_by_hooks() -> None:
    start = value()
    hot = HotPath()
    hot.count += 3
    assert f"test_hooked_total {start + 3}".encode() in metrics.exposition()
    metrics.collect_pending()
    hot.count += 2
    metrics.collect_pending()
    assert value() == start + 5


def test_hook_goes_away_with_its_object() -> None:
    hot = HotPath()
    assert any(ref() == hot.report for ref in metrics._collect_hooks)
    del hot
    gc.collect()
    metrics.collect_pending()
    assert all(ref() is not None for ref in metrics._collect_hooks)
