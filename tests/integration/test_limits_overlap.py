"""A concurrency limit measured where it matters: handlers running at once, from the times
the handlers themselves wrote, across worker processes. Not from inside the claiming
transaction (an audit trigger there sees its own snapshot and cannot see a race).

The limit is above the unlocked pass's margin for the bigger worker, so its claims go
without the lock while the task is far from its cap and with it near the cap: the two
passes interleave as in production."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from skiplock import Client
from tests.conftest import WorkerProcess
from tests.integration.limit_overlap_tasks import OVERLAP_LIMIT
from tests.support.waits import wait_until

APP = "tests.integration.limit_overlap_tasks:app"
Sql = Callable[..., list[tuple[Any, ...]]]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same instant)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda x: (x[0], x[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_max_overlap_counts_open_intervals() -> None:
    assert max_overlap([(0, 2), (1, 3), (2, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1


def test_handlers_never_run_beyond_the_limit(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    log = tmp_path / "intervals"
    spawn_worker(APP, "-q", "overlap", "-c", "10", "--poll-interval", "0.05", name="big")
    spawn_worker(APP, "-q", "overlap", "-c", "2", "--poll-interval", "0.05", name="small")
    wait_until(lambda: sql("SELECT count(*) FROM workers")[0][0] == 2, 30, "two workers")
    wait_until(lambda: sql("SELECT 1 FROM tasks WHERE name = 'overlap' "
                           "AND limits IS NOT NULL"), 30, "the limit registered")
    n = 120
    with Client(database_url) as client:
        client.enqueue_many({"task": "overlap", "args": {"path": str(log), "seconds": 0.05}}
                            for _ in range(n))
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] == n,
               90, f"{n} jobs succeeded")
    rows = [line.split() for line in log.read_text().splitlines()]
    assert len({r[0] for r in rows}) == n
    peak = max_overlap([(float(r[1]), float(r[2])) for r in rows])
    assert peak <= OVERLAP_LIMIT
    # and the limit was worth testing: the workers did run many at once (12 slots)
    assert peak >= OVERLAP_LIMIT // 2
