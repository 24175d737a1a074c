"""Helpers shared by the harness and every system's runner. Standard library only: the peer
runners import this from their own virtualenv."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Recorder:
    """What a worker process saw: jobs run, first and last start, and enqueue→start latencies."""

    def __init__(self) -> None:
        self.progress: Path | None = None
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.latencies: list[float] = []

    def hit(self, t: float | None) -> None:
        now = time.time()
        if self.first is None:
            self.first = now
        self.last = now
        self.count += 1
        if self.progress is not None and self.count % 500 == 0:
            # The harness reads this instead of polling the database while the run is on.
            self.progress.write_text(str(self.count))
        if t:
            self.latencies.append(now - t)

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps({
            "count": self.count, "first": self.first, "last": self.last,
            "latencies": self.latencies, "pid": os.getpid(),
        }))


def worker_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--dsn", required=True)
    e = sub.add_parser("enqueue")
    e.add_argument("--dsn", required=True)
    e.add_argument("--jobs", type=int, required=True)
    e.add_argument("--chunk", type=int, default=10_000)
    c = sub.add_parser("copy-ceiling", help="the COPY enqueue_many sends, rows rendered once")
    c.add_argument("--dsn", required=True)
    c.add_argument("--jobs", type=int, required=True)
    c.add_argument("--chunk", type=int, default=10_000)
    w = sub.add_parser("worker")
    w.add_argument("--dsn", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--concurrency", type=int, default=100)
    w.add_argument("--batch", type=int, default=100)
    w.add_argument("--latency", action="store_true", help="tuned for latency, not throughput")
    lp = sub.add_parser("produce")
    lp.add_argument("--dsn", required=True)
    lp.add_argument("--jobs", type=int, required=True)
    lp.add_argument("--rate", type=float, required=True)
    return p.parse_args(argv)


async def wait_for_go() -> None:
    """Tell the harness we are connected and idle, then wait for its go line on stdin."""
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.startswith("go"):
        raise SystemExit(0)


def on_stop(callback: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


def _wait_before(start: float, i: int, rate: float) -> float:
    """Seconds until item ``i`` of a steady ``rate`` that began at ``start`` is due."""
    return start + i / rate - time.perf_counter()


async def paced(n: int, rate: float) -> Any:
    """Yield 0..n-1 at a steady rate (bounded: n items, n / rate seconds)."""
    start = time.perf_counter()
    for i in range(n):
        if (delay := _wait_before(start, i, rate)) > 0:
            await asyncio.sleep(delay)
        yield i


def paced_sync(n: int, rate: float) -> Iterator[int]:
    """``paced`` for a blocking producer."""
    start = time.perf_counter()
    for i in range(n):
        if (delay := _wait_before(start, i, rate)) > 0:
            time.sleep(delay)
        yield i


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# -- latency tables (cancel_latency, client_latency) --------------------------------------------

def latency_summary(seconds: list[float]) -> dict[str, float]:
    """n, p50, p99 and max of latencies in seconds, in milliseconds (p99 by nearest rank
    below: of 200 samples, the 199th)."""
    ordered = sorted(seconds)
    return {"n": len(ordered), "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
            "max_ms": ordered[-1] * 1000}


def report_latencies(results: dict[str, dict[str, float]], out: str | Path, *, label: str,
                     width: int, decimals: int) -> None:
    """Print latency_summary rows as a table (``label``: the first column's heading) and
    write them to ``out`` as JSON."""
    print(f"{label:{width}} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in results.items():
        print(f"{name:{width}} {int(r['n']):5d} {r['p50_ms']:8.{decimals}f} "
              f"{r['p99_ms']:8.{decimals}f} {r['max_ms']:8.{decimals}f}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
