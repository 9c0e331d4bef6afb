"""`python -m bench.profiled --host H --port P`: the service under pyinstrument.

Runs `api.main:app` exactly as `uvicorn` does (uvloop, httptools), with a sampling profiler on
the main thread (the event loop: where the service's CPU goes) between SIGUSR1 (start) and
SIGUSR2 (stop); each window gets a fresh profiler. On stop it writes to $BENCH_PROFILE_OUT a
summary — own time per package and per function — then pyinstrument's call tree.

On uvloop the loop itself is C: its idle time (epoll) and its socket I/O show up as the own time
of `Runner.run`, so the summary reports that line separately from the Python work.
"""

from __future__ import annotations

import argparse
import os
import signal
from collections import defaultdict
from pathlib import Path
from types import FrameType

import uvicorn
from pyinstrument import Profiler
from pyinstrument.frame import Frame
from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

SAMPLE_INTERVAL_S = 0.001
TREE_OPTIONS = {"filter_threshold": 0.01}  # hide frames under 1 % of the window
TOP = 40
LOOP_FRAME = "Runner.run"


def _name(frame: Frame) -> str:
    qualified = f"{frame.class_name}.{frame.function}" if frame.class_name else frame.function
    return f"{qualified}  {frame.file_path_short}:{frame.line_no}"


def _package(frame: Frame) -> str:
    path = (frame.file_path_short or "").replace("\\", "/")
    if path.startswith("<"):
        return "builtins (C)"
    first = path.split("/", 1)[0]
    return first.removesuffix(".py") or "?"


def own_times(root: Frame) -> tuple[dict[str, float], dict[str, float]]:
    """Own (self) time per function and per top-level package, over the whole tree."""
    functions: defaultdict[str, float] = defaultdict(float)
    packages: defaultdict[str, float] = defaultdict(float)
    stack = [root]
    while stack:
        frame = stack.pop()
        children = [child for child in frame.children if not child.is_synthetic]
        own = frame.time - sum(child.time for child in children)
        if own > 0 and not frame.is_synthetic:
            functions[_name(frame)] += own
            packages[_package(frame)] += own
        stack.extend(children)
    return functions, packages


def _largest(times: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(times.items(), key=lambda item: item[1], reverse=True)[:n]


def summarize(session: Session) -> str:
    root = session.root_frame()
    wall = session.duration or 1e-9
    lines = [f"window {wall:.2f} s wall, {session.cpu_time:.2f} s CPU of the service process", ""]
    if root is None:
        return "\n".join(lines)
    functions, packages = own_times(root)
    loop = sum(t for name, t in functions.items() if name.startswith(LOOP_FRAME + " "))
    lines.append(f"{loop / wall:6.1%}  event loop in C (uvloop: idle epoll + socket I/O)")
    lines += ["", "own time per package (% of wall)"]
    lines += [f"{t / wall:6.1%}  {name}" for name, t in _largest(packages, 20)]
    lines += ["", f"own time per function, top {TOP} (% of wall)"]
    lines += [f"{t / wall:6.1%}  {name}" for name, t in _largest(functions, TOP)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profiled")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    out = Path(os.environ["BENCH_PROFILE_OUT"])
    profilers: list[Profiler] = []

    def start(signum: int, frame: FrameType | None) -> None:
        if not profilers:
            # Wall-clock samples of the main thread, without asyncio's await folding.
            profilers.append(Profiler(interval=SAMPLE_INTERVAL_S, async_mode="disabled"))
            profilers[0].start()

    def stop(signum: int, frame: FrameType | None) -> None:
        if not profilers:
            return
        session = profilers.pop().stop()
        tree = ConsoleRenderer(time="percent_of_total", processor_options=TREE_OPTIONS).render(
            session
        )
        partial = out.with_suffix(".partial")
        partial.write_text(f"{summarize(session)}\n\n{tree}", encoding="utf-8")
        partial.rename(out)  # the bench waits for this name: write it whole

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    uvicorn.run("api.main:app", host=args.host, port=args.port, access_log=False)


if __name__ == "__main__":
    main()
