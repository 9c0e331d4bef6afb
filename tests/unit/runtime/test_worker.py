"""Worker processes collect reference cycles rarely, and still collect them."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pipeline.runtime.worker import GC_THRESHOLDS, rarer_collections


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    rarer_collections()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # Python's default


@pytest.mark.usefixtures("restored_gc")
def test_a_reference_cycle_made_afterwards_is_reclaimed_without_asking() -> None:
    rarer_collections()

    class Node:
        me: Node

    freed: list[bool] = []
    node = Node()
    node.me = node
    weakref.finalize(node, freed.append, True)
    del node
    kept = [[] for _ in range(GC_THRESHOLDS[0] + 1_000)]  # a batch's worth of live objects
    assert freed == [True]
    assert len(kept) > GC_THRESHOLDS[0]
