"""The bench report judges targets on the measured ratios, not on their rounded display, and
says which processes of the API windows ran at real-time priority."""

from __future__ import annotations

from typing import Any

from bench.config import BenchConfig
from bench.report import build_report


def report_for(
    e2e: float, copy: float, windows: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
) -> dict[str, Any]:
    raw = {
        "variants": [
            {
                "symbols": 3,
                "e2e": {"rows_per_s": e2e},
                "api_idle": windows[0],
                "api_ingest": windows[1],
                "baselines": {
                    "copy": {"rows_per_s": copy},
                    "per_row": {"rows_per_s": 2_000},
                    "sink": {"rows_per_s": 150_000},
                },
            }
        ],
        "rss_mb": {"e2e-s3": 250.0},
        "machine": {},
        "failures": [],
        "checks": [],
        "service_overrides": {},
        "started_at": 0.0,
        "duration_s": 1.0,
    }
    return build_report(BenchConfig(symbol_sets=(3,)), raw)


def test_a_ratio_just_below_its_target_is_not_met_though_it_shows_rounded_up() -> None:
    target = report_for(e2e=54_158, copy=181_306)["targets"]["ratios.e2e_vs_copy"]
    assert target["value"] == 0.3  # 0.2987, shown with two digits
    assert target["exact"] < 0.3
    assert target["met"] is False


def test_a_ratio_at_or_above_its_target_is_met() -> None:
    target = report_for(e2e=54_400, copy=181_306)["targets"]["ratios.e2e_vs_copy"]
    assert target["exact"] >= 0.3
    assert target["met"] is True


def test_real_time_priority_is_reported_only_when_both_api_windows_had_it() -> None:
    both = {"api_realtime": True, "realtime": True}
    api_only = {"api_realtime": True, "realtime": False}
    assert report_for(54_400, 181_306, (both, both))["api"]["realtime"] == {
        "api": True,
        "load_generator": True,
    }
    assert report_for(54_400, 181_306, (both, api_only))["api"]["realtime"] == {
        "api": True,
        "load_generator": False,
    }
    assert report_for(54_400, 181_306)["api"]["realtime"] == {
        "api": False,
        "load_generator": False,
    }
