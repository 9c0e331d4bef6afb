"""`BenchConfig`: the parameters of one run (full by default, `--quick` for a smoke run)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.settings import PROJECT_ROOT

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
STACK_ENV_FILE = PROJECT_ROOT / ".stack" / "env"


@dataclass(frozen=True)
class BenchConfig:
    """Everything a run depends on; written into the JSON as `parameters`."""

    n: int = 200_000  # trades per flood (unique rows; ~5 % more frames with the duplicates)
    symbol_sets: tuple[int, ...] = (3, 100)  # the first gets every phase, the others E2E only
    duplicate_ratio: float = 0.05
    per_row_sample: int = 10_000  # rows for the one-INSERT-per-transaction baseline
    api_rate: int = 1_000  # offered GET /prices/{symbol} requests per second
    api_connections: int = 32  # keep-alive connections of the load generator
    api_window_s: float = 8.0  # each API measurement window (idle, under ingest)
    latency_rate: int = 1_000  # msg/s of the steady-rate latency phase, all symbols together
    latency_window_s: float = 25.0
    stream_clients: int = 1_000  # SSE clients of the push-feed phase
    stream_rate: int = 100  # msg/s, all symbols together, while the clients' fan-out is measured
    stream_window_s: float = 10.0
    stream_conflate: str = "100ms"  # the dashboards' conflation during the flood with clients
    progress_poll_s: float = 0.02  # how often the stored-rows probe asks PostgreSQL
    latency_poll_s: float = 0.01  # the same during the latency phase (its resolution)
    phase_timeout_s: float = 300.0  # any single wait (rows stored, lag 0, service start)
    stall_timeout_s: float = 60.0  # rows awaited but none stored for this long: fail the phase
    history_trades: int = 480_000  # the history-job phase: two minutes at the REST ceiling
    use_stack_env: bool = False
    profile: bool = False
    quick: bool = False
    seed: int = 1
    output: Path = RESULTS_DIR / "latest.json"

    @classmethod
    def quick_run(cls, **overrides: object) -> BenchConfig:
        """Small N and short phases: the whole run well under two minutes."""
        quick = cls(
            n=5_000,
            symbol_sets=(3,),
            per_row_sample=1_000,
            api_window_s=2.0,
            latency_window_s=5.0,
            stream_clients=100,
            stream_window_s=3.0,
            phase_timeout_s=60.0,
            stall_timeout_s=30.0,
            history_trades=20_000,
            quick=True,
        )
        return dataclasses.replace(quick, **overrides)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        values = dataclasses.asdict(self)
        values["output"] = str(self.output)
        values["symbol_sets"] = list(self.symbol_sets)
        return values
