"""The figures each chaos scenario reports, their JSON summary and the table in reliability.md.

`python -m tests.chaos.report [summary.json]` prints the Markdown table of a run (default: the
newest summary under $CHAOS_REPORT_DIR, else <tmp>/crypto-chaos).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def report_dir() -> Path:
    return Path(os.environ.get("CHAOS_REPORT_DIR") or Path(tempfile.gettempdir()) / "crypto-chaos")


@dataclass
class Figures:
    scenario: str
    fault: str
    repetitions: int  # faults injected
    trades: int  # trades on the tape inside the window
    stored: int  # rows of the window's symbols in crypto_prices
    lost: int  # on the tape, not stored
    duplicated: int  # count(*) - count(DISTINCT (symbol, trade_id))
    unexpected: int  # stored, not on the tape
    dlq: int  # records in <topic>.dlq
    recovery_s: float  # worst recovery of the scenario
    recovery_bound_s: float
    runtime_s: float
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Summary:
    mode: str
    figures: list[Figures] = field(default_factory=list)

    def add(self, figures: Figures) -> None:
        self.figures.append(figures)

    def write(self) -> Path | None:
        if not self.figures:
            return None
        directory = report_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"summary-{self.mode}.json"
        data = {"mode": self.mode, "figures": [asdict(f) for f in self.figures]}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path


def markdown(data: dict[str, Any]) -> str:
    head = (
        "| scenario | fault injected | faults | trades sent | rows stored | lost | duplicated "
        "| not on tape | DLQ | worst recovery (bound) | runtime |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = []
    for f in data["figures"]:
        lines.append(
            f"| {f['scenario']} | {f['fault']} | {f['repetitions']} | {f['trades']} "
            f"| {f['stored']} | {f['lost']} | {f['duplicated']} | {f['unexpected']} | {f['dlq']} "
            f"| {f['recovery_s']:.1f} s ({f['recovery_bound_s']:.0f} s) | {f['runtime_s']:.0f} s |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv:
        path = Path(argv[0])
    else:
        found = sorted(report_dir().glob("summary-*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            print(f"no summary under {report_dir()}", file=sys.stderr)
            return 1
        path = found[-1]
    data = json.loads(path.read_text(encoding="utf-8"))
    print(f"<!-- {path} ({data['mode']}) -->")
    print(markdown(data), end="")
    for f in data["figures"]:
        if f.get("extra"):
            print(f"- {f['scenario']}: " + ", ".join(f"{k}={v}" for k, v in f["extra"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
