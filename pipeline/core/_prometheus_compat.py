"""The one module of ours that touches prometheus_client's internals: a Histogram's buckets.

Histogram.observe() takes a lock and walks the buckets in Python for every value; the consumer
observes a whole batch's latencies at once, as one update per bucket touched. prometheus_client
has no public call for that, so `observe_many` updates the histogram's bucket and sum values
itself. Importing this module with a release outside the range it was written for raises
ImportError, and so does one whose Histogram no longer has the parts used here.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Sequence
from functools import partial
from importlib.metadata import version

from prometheus_client import Histogram

from pipeline.core.versions import Release, require_release

# The range pyproject.toml pins.
SUPPORTED: tuple[Release, Release] = ((0, 21), (1,))
# What observe_many uses of a Histogram (a labelled child's, or an unlabelled one's).
USED_ATTRIBUTES = ("_raise_if_not_observable", "_buckets", "_upper_bounds", "_sum")


def check_version(installed: str) -> None:
    """ImportError unless `installed` of prometheus_client is one this module was written for."""
    require_release("prometheus_client", installed, *SUPPORTED)


def check_histogram(histogram: object) -> None:
    """ImportError unless `histogram` has every part observe_many uses."""
    missing = [name for name in USED_ATTRIBUTES if not hasattr(histogram, name)]
    if missing:
        raise ImportError(
            f"prometheus_client's Histogram has no {', '.join(missing)} any more: "
            "pipeline.core._prometheus_compat.observe_many needs them"
        )


check_version(version("prometheus-client"))
check_histogram(Histogram("compat_check", "never registered", registry=None))


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """`histogram.observe(value)` for every value, as one update per bucket touched and one of
    the sum.

    Bucket counts come out exactly as with observe(); the sum up to float rounding (added up
    before it is added). Needs an unlabelled histogram (or a labelled child), like observe().
    """
    if not values:
        return
    total = sum(values)
    if math.isnan(total):
        # A NaN (or +inf and -inf) among the values: observe() puts a NaN in no bucket, while
        # bisect would count it in the first one. Never the case for our latencies.
        for value in values:
            histogram.observe(value)
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    buckets = histogram._buckets
    # observe() counts a value in the first bucket whose upper bound is >= it: bisect_left.
    for index, count in Tally(map(partial(bisect_left, histogram._upper_bounds), values)).items():
        buckets[index].inc(count)
    histogram._sum.inc(total)
