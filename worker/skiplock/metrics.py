"""Prometheus metrics a worker exposes (optional HTTP endpoint, SKIPLOCK_METRICS_PORT)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import SkiplockError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .inspection import QueueStats

JOBS_CLAIMED = Counter("skiplock_jobs_claimed", "Jobs claimed by this worker", ["queue", "task"])
JOBS_SUCCEEDED = Counter("skiplock_jobs_succeeded", "Jobs that succeeded", ["queue", "task"])
JOBS_RETRIED = Counter(
    "skiplock_jobs_retried", "Failed attempts scheduled for retry", ["queue", "task"]
)
JOBS_DEAD = Counter("skiplock_jobs_dead", "Jobs that went dead here", ["queue", "task"])
JOBS_RELEASED = Counter("skiplock_jobs_released", "Jobs handed back at shutdown", ["queue"])
JOB_SECONDS = Histogram(
    "skiplock_job_duration_seconds",
    "Handler run time",
    ["queue", "task"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)
CLAIM_SECONDS = Histogram(
    "skiplock_claim_duration_seconds",
    "Time for one claim transaction",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
LEASE_RENEWALS = Counter("skiplock_lease_renewals", "Leases extended by heartbeats")
LEASES_LOST = Counter("skiplock_leases_lost", "Heartbeats that found the job no longer ours")
STALE_WRITES = Counter(
    "skiplock_stale_writes_rejected",
    "Completions rejected by the fence (another worker owns the job now)",
)
DB_ERRORS = Counter("skiplock_database_errors", "Database operations that failed", ["operation"])
RESCUED = Counter("skiplock_leases_rescued", "Expired leases returned to the queue or marked dead")
SERVICE_FAILURES = Counter(
    "skiplock_worker_service_failures",
    "Unexpected failures of a worker service (each one restarted, or the worker stopped)",
    ["service"],
)
HANDED_BACK = Counter(
    "skiplock_jobs_handed_back",
    "Jobs this worker's version cannot run, left to a live peer that can (rolling deploys)",
    ["queue", "task"],
)
WAITING_FOR_WORKER = Counter(
    "skiplock_jobs_deferred_no_worker",
    "Times a job was put back because no live worker can run it yet",
    ["queue", "task"],
)
JOBS_CANCELLED = Counter(
    "skiplock_jobs_cancelled", "Running jobs this worker ended cancelled", ["queue", "task"]
)
JOBS_SNOOZED = Counter(
    "skiplock_jobs_snoozed", "Jobs put back by their handler (Snooze)", ["queue", "task"]
)
RUNS_STOPPED = Counter(
    "skiplock_runs_stopped",
    "Runs told to stop, by why: cancel (a cancel request), timeout (the task's deadline) or "
    "lease (the run's lease was lost: another worker may have the job)",
    ["reason"],
)
ABANDONED = Gauge(
    "skiplock_abandoned_handlers",
    "Handlers that did not stop within the grace after a cancel or deadline and still run "
    "(each holds a slot until it returns)",
)
OUTCOMES_REFUSED = Counter(
    "skiplock_outcome_writes_refused",
    "Outcome batches the database refused as data (each split to find the outcome at fault)",
)
OUTCOMES_WAITING = Gauge(
    "skiplock_outcomes_waiting", "Outcomes of finished runs not yet written to the database"
)


# Series a worker creates at zero when it starts. A labelled counter otherwise appears with its
# first increment, and rate()/increase() cannot see that first step (seen on the dashboard
# snapshot: the first cancels of a run read as 0 cancels/s). In the order they are declared
# in when the budget below is short: the rare events first, whose first step is often all
# there is to see (a dead job, a cancel), the busy throughput counters last (claimed,
# succeeded: their first step is a small part of a rate that keeps counting).
_PER_QUEUE_TASK = (JOBS_DEAD, JOBS_RETRIED, JOBS_CANCELLED, JOBS_SNOOZED, HANDED_BACK,
                   WAITING_FOR_WORKER, JOBS_SUCCEEDED, JOBS_CLAIMED)
STOP_REASONS = ("cancel", "timeout", "lease")
DB_OPERATIONS = ("claim", "complete", "heartbeat", "listen", "cancel poll", "registry",
                 "rescue", "scheduler")
# At most this many series declared at start, all metrics together: thousands of zero series
# per pod would cost Prometheus more than the first step is worth. What does not fit is left
# to appear on first use.
MAX_DECLARED_SERIES = 1000


def declare_series(queues: Sequence[str], tasks: Sequence[str], services: Sequence[str]) -> int:
    """Create the worker's known label combinations at zero (idempotent), at most
    MAX_DECLARED_SERIES of them; returns how many were declared.

    One budget, spent in order: the few fixed label sets (stop reasons, database operations,
    services), the per-queue counter, then each per-(queue, task) metric above for all of
    its pairs or for none (a metric with some pairs only would read as a rate over part of
    the traffic)."""
    pairs: list[tuple[str, ...]] = [(queue, task) for queue in queues for task in tasks]
    groups: list[tuple[Any, list[tuple[str, ...]]]] = [
        (RUNS_STOPPED, [(reason,) for reason in STOP_REASONS]),
        (DB_ERRORS, [(operation,) for operation in DB_OPERATIONS]),
        (SERVICE_FAILURES, [(service,) for service in services]),
        (JOBS_RELEASED, [(queue,) for queue in queues]),
        *((metric, pairs) for metric in _PER_QUEUE_TASK),
    ]
    declared = 0
    for metric, label_sets in groups:
        if declared + len(label_sets) > MAX_DECLARED_SERIES:
            continue  # a later, smaller group may still fit
        for labels in label_sets:
            metric.labels(*labels)
        declared += len(label_sets)
    return declared


def count_jobs(metric: Any, jobs: Iterable[Any]) -> None:
    """Add each job (anything with .queue and .task) to ``metric``'s (queue, task) child: one
    increment per pair, not per job (an increment takes the child's lock)."""
    counts: dict[tuple[str, str], int] = {}
    for job in jobs:
        pair = (job.queue, job.task)
        counts[pair] = counts.get(pair, 0) + 1
    for (queue, task), n in counts.items():
        child(metric, queue, task).inc(n)


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """A labelled metric child, looked up once (labels() costs more than the increment)."""
    return metric.labels(*labels)


# (metric suffix, QueueStats attribute, help): the shared stats as gauges, one series per queue
# (a bool attribute is exported as 0 or 1).
_QUEUE_GAUGES = (
    ("backlog", "backlog", "Runnable plus stuck jobs: work no live worker is doing"),
    ("runnable", "runnable", "Queued jobs whose run_at has passed"),
    ("scheduled", "scheduled", "Queued jobs waiting for their run_at (delays and retry backoff)"),
    ("in_flight", "in_flight", "Running jobs with a live lease"),
    ("stuck", "stuck", "Running jobs whose lease expired: their worker is gone"),
    ("high_retry", "high_retry", "Unfinished jobs on their third attempt or later"),
    ("dead", "dead", "Dead jobs still stored"),
    ("dead_last_hour", "dead_last_hour", "Jobs that went dead in the last hour"),
    ("waiting_for_worker", "waiting_for_worker",
     "Queued jobs no live worker can run (unknown task or arguments): they wait, then go dead"),
    ("waiting_on_limit", "waiting_on_limit",
     "Runnable jobs a concurrency or rate limit holds back now (not part of the backlog)"),
    ("paused", "paused",
     "1 while the queue is paused (skiplock queue pause): no worker claims from it"),
)


_T = TypeVar("_T")


def read_or_down(name: str, text: str, read: Callable[[], _T]
                 ) -> tuple[GaugeMetricFamily, _T | None]:
    """A scrape-time query and its ``*_up`` gauge: 1 and what it read, or 0 and None when the
    database did not answer (the scrape still succeeds, without the query's gauges)."""
    up = GaugeMetricFamily(name, text)
    try:
        rows = read()
    except SkiplockError:
        up.add_metric([], 0)
        return up, None
    up.add_metric([], 1)
    return up, rows


class QueueStatsCollector(Collector):
    """Queue gauges computed at scrape time from skiplock.inspection.queue_stats.

    A scrape while the database is down yields ``skiplock_queue_stats_up 0`` and no queue
    series, so an alert can tell "no backlog" from "could not look".
    """

    def __init__(self, stats: Callable[[], Sequence[QueueStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        up, stats = read_or_down("skiplock_queue_stats_up",
                                 "1 when the last queue stats query succeeded", self._stats)
        yield up
        if stats is None:
            return
        for suffix, attr, text in _QUEUE_GAUGES:
            family = GaugeMetricFamily(f"skiplock_queue_{suffix}", text, labels=["queue"])
            for s in stats:
                family.add_metric([s.queue], float(getattr(s, attr)))
            yield family
        age = GaugeMetricFamily(
            "skiplock_queue_oldest_runnable_age_seconds",
            "Age of the oldest runnable job (0 when none)",
            labels=["queue"],
        )
        for s in stats:
            age.add_metric([s.queue], s.oldest_runnable_age or 0.0)
        yield age


# -- issue 14: periodic jobs (docs/schedules.md) --
SCHEDULE_FIRINGS = Counter(
    "skiplock_schedule_firings", "Jobs this worker enqueued for a schedule's firings",
    ["schedule"])
SCHEDULE_MISSED = Counter(
    "skiplock_schedule_missed",
    "Firings found later than their grace that the missed policy dropped", ["schedule"])


class ScheduleCollector(Collector):
    """``skiplock_schedule_late_seconds``: how far past its next fire time each schedule is
    (0 when on time or paused), computed at scrape time from the schedules table, like the
    queue gauges. Every worker fires due schedules within about a second, so a value past a
    few seconds means no worker is firing it (all down, none can reach the database, or
    the app schedule is declared by no live worker): the stuck-style alert is
    ``skiplock_schedule_late_seconds > 60`` for a minute or two.
    ``skiplock_schedule_stats_up`` is 0 when the table could not be read."""

    def __init__(self, schedules: Callable[[], Sequence[dict[str, Any]]]) -> None:
        self._schedules = schedules

    def collect(self) -> Iterator[Metric]:
        up, rows = read_or_down("skiplock_schedule_stats_up",
                                "1 when the last schedules query succeeded", self._schedules)
        yield up
        if rows is None:
            return
        late = GaugeMetricFamily(
            "skiplock_schedule_late_seconds",
            "Seconds since a schedule's next firing was due and not yet enqueued (0: on time)",
            labels=["schedule", "queue"])
        nxt = GaugeMetricFamily(
            "skiplock_schedule_next_fire_timestamp_seconds",
            "When a schedule fires next (Unix time)", labels=["schedule", "queue"])
        for r in rows:
            late.add_metric([r["name"], r["queue"]], float(r["late_seconds"] or 0.0))
            if r["next_fire_at"] is not None:
                nxt.add_metric([r["name"], r["queue"]], r["next_fire_at"].timestamp())
        yield late
        yield nxt
