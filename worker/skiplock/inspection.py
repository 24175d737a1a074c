"""Backlog, in-flight, stuck, high-retry and dead counts: one piece of code for the CLI, the
API, the metrics and the operator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .db import Database, StatsRows, firing_seconds

# Above this many jobs a count changes no scaling decision; capping keeps it cheap at 1M rows.
DEFAULT_COUNT_CAP = 100_000
HIGH_RETRY_ATTEMPTS = 3


@dataclass(frozen=True)
class QueueStats:
    queue: str
    runnable: int  # queued with run_at <= now()
    scheduled: int  # queued for later (delayed or waiting for a retry)
    in_flight: int  # running with a live lease
    stuck: int  # running with an expired lease: its worker is gone
    dead: int
    dead_last_hour: int
    high_retry: int  # not finished, attempts >= HIGH_RETRY_ATTEMPTS
    oldest_runnable_age: float | None  # seconds, database time
    # queued, but no live worker can run them (unknown task, arguments no registered signature
    # takes): they wait for one, then go dead after a grace period. Part of runnable/scheduled.
    waiting_for_worker: int = 0
    # skiplock queue pause: no worker claims from it (running jobs finish); who and when
    paused: bool = False
    paused_at: dt.datetime | None = None
    paused_by: str | None = None
    # runnable, but held back by a concurrency or rate limit (docs/limits.md): no worker may
    # start them now. Part of runnable; not part of the backlog.
    waiting_on_limit: int = 0
    # the most jobs that may run at once when all of the queue's work is under limits with a
    # task-wide concurrency_limit (plus the unlimited jobs running now); None: no such bound
    limit_capacity: int | None = None

    @property
    def backlog(self) -> int:
        """Work no worker is doing now and one could start: runnable (less what a limit holds
        back) plus stuck (stuck jobs get re-claimed)."""
        return self.runnable - self.waiting_on_limit + self.stuck

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "backlog": self.backlog}


def queue_stats(
    db: Database,
    queues: Sequence[str] = (),
    *,
    cap: int = DEFAULT_COUNT_CAP,
    high_attempts: int = HIGH_RETRY_ATTEMPTS,
) -> list[QueueStats]:
    """Per-queue counts; with no queues named, every queue that has tasks or live jobs, and
    every paused queue (a queue paused before its first job must still show, or it could not
    be resumed from the dashboard). One round trip (Database.stats_rows)."""
    return _stats(db.stats_rows(queues, cap=cap, high_attempts=high_attempts))


@dataclass(frozen=True)
class QueuePoll:
    """What the operator reads of its queues at each poll."""

    stats: list[QueueStats]
    # seconds until the next firing of a schedule on the queues (negative: overdue); None
    # when none is scheduled
    next_fire_in: float | None


def poll(db: Database, queues: Sequence[str], *, cap: int = DEFAULT_COUNT_CAP) -> QueuePoll:
    """queue_stats and next_firing of ``queues`` in the one round trip of queue_stats."""
    rows = db.stats_rows(queues, cap=cap, high_attempts=HIGH_RETRY_ATTEMPTS, next_firing=True)
    return QueuePoll(_stats(rows), firing_seconds(rows.next_firing))


def _stats(read: StatsRows) -> list[QueueStats]:
    paused = {p["queue"]: p for p in read.paused}
    held = limit_counts(read.limits)
    return [
        QueueStats(
            queue=r["queue"],
            runnable=int(r["runnable"]),
            scheduled=int(r["scheduled"]),
            in_flight=int(r["in_flight"]),
            stuck=int(r["stuck"]),
            dead=int(r["dead"]),
            dead_last_hour=int(r["dead_last_hour"]),
            high_retry=int(r["high_retry"]),
            oldest_runnable_age=(
                float(r["oldest_runnable_age"]) if r["oldest_runnable_age"] is not None else None
            ),
            waiting_for_worker=int(r["waiting_for_worker"]),
            paused=r["queue"] in paused,
            paused_at=paused[r["queue"]]["paused_at"] if r["queue"] in paused else None,
            paused_by=paused[r["queue"]]["paused_by"] if r["queue"] in paused else None,
            waiting_on_limit=held.get(r["queue"], _NO_LIMITS).waiting,
            limit_capacity=held.get(r["queue"], _NO_LIMITS).capacity_for(
                int(r["runnable"]), int(r["in_flight"])),
        )
        for r in read.counts
    ]


@dataclass(frozen=True)
class QueueLimits:
    """What the limited tasks of one queue add up to (from Database.limit_stats rows)."""

    runnable: int = 0      # runnable jobs of limited tasks
    waiting: int = 0       # of those, held back by a limit now
    running: int = 0       # running jobs of limited tasks in this queue
    # sum of the tasks' concurrency_limit; None when one has none (per-key or rate only)
    capacity: int | None = 0

    def capacity_for(self, runnable: int, in_flight: int) -> int | None:
        """The queue's bound on jobs running at once, or None when some of its runnable work
        is unlimited (or no limit bounds concurrency): then only the backlog counts."""
        if self.capacity is None or (self.runnable == 0 and self.running == 0):
            return None
        if runnable > self.runnable:
            return None  # unlimited jobs wait too: no bound from the limits
        # unlimited jobs already running keep their workers
        return self.capacity + max(0, in_flight - self.running)


_NO_LIMITS = QueueLimits(capacity=None)


def limit_counts(rows: Sequence[dict[str, Any]]) -> dict[str, QueueLimits]:
    """Per queue: limit_stats rows (one per queue and limited task) added up. A task-wide
    capacity counts once per queue it has work in (a task serving two queues is bounded by
    the same number in both, which overstates the sum: a bound, never an undercount)."""
    out: dict[str, QueueLimits] = {}
    for r in rows:
        if not int(r["runnable"]) and not int(r["running_here"]):
            continue  # the task has no work in this queue: it bounds nothing here
        q = out.get(r["queue"], QueueLimits())
        capacity = r["capacity"]
        out[r["queue"]] = QueueLimits(
            runnable=q.runnable + int(r["runnable"]),
            waiting=q.waiting + max(0, int(r["runnable"]) - int(r["startable"])),
            running=q.running + int(r["running_here"]),
            capacity=(None if q.capacity is None or capacity is None
                      else q.capacity + int(capacity)),
        )
    return out


def totals(stats: Sequence[QueueStats]) -> QueueStats:
    """All queues added up (oldest age is the maximum); paused when every one of them is."""
    ages = [s.oldest_runnable_age for s in stats if s.oldest_runnable_age is not None]
    return QueueStats(
        queue="*",
        runnable=sum(s.runnable for s in stats),
        scheduled=sum(s.scheduled for s in stats),
        in_flight=sum(s.in_flight for s in stats),
        stuck=sum(s.stuck for s in stats),
        dead=sum(s.dead for s in stats),
        dead_last_hour=sum(s.dead_last_hour for s in stats),
        high_retry=sum(s.high_retry for s in stats),
        oldest_runnable_age=max(ages) if ages else None,
        waiting_for_worker=sum(s.waiting_for_worker for s in stats),
        paused=bool(stats) and all(s.paused for s in stats),
        waiting_on_limit=sum(s.waiting_on_limit for s in stats),
        limit_capacity=(None if not stats or any(s.limit_capacity is None for s in stats)
                        else sum(s.limit_capacity or 0 for s in stats)),
    )


def pod_of(worker_id: str) -> str:
    """The pod (or host) name part of a worker id ``name:pid:suffix``."""
    return worker_id.rsplit(":", 2)[0]


def busy_pods(db: Database, queues: Sequence[str]) -> dict[str, int]:
    """Running jobs with live leases per pod name (for idle-first scale-down)."""
    counts: dict[str, int] = {}
    for worker_id, n in db.busy_workers(queues).items():
        pod = pod_of(worker_id)
        counts[pod] = counts.get(pod, 0) + n
    return counts
