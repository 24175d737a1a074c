"""What the JSON API and the dashboard both do, on top of skiplock.db and skiplock.inspection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import inspection, transitions
from ..client import Client
from ..db import Database
from ..errors import JobNotFound
from .history import BacklogHistory, QueueSeries, queue_series
from .last_pages import LastPages, still_to_count
from .models import (
    AttemptError,
    BacklogPoint,
    BulkAction,
    BulkOut,
    CountOut,
    Job,
    JobDetail,
    JobFilter,
    JobPage,
    JobState,
    LeaseHolder,
    Point,
    QueueOut,
    QueuePause,
    QueuesOut,
    WorkerProcess,
    WorkersOut,
)
from .per_sample import PerSample
from .side_by_side import ONE_BY_ONE, Reads, discard
from .throughput import ThroughputCache

# Jobs that are not finished: what "high retry" counts, offered as one filter.
UNFINISHED = (JobState.queued, JobState.running)


@dataclass(frozen=True)
class JobFilters:
    states: Sequence[JobState] = ()
    queue: str | None = None
    task: str | None = None
    stuck: bool = False
    min_attempts: int | None = None
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    finished_after: dt.datetime | None = None
    finished_before: dt.datetime | None = None
    error: str | None = None
    waiting_for_worker: bool = False


def filters_of(q: JobFilter) -> JobFilters | None:
    """An API filter (the jobs list's query, or a bulk action's body) as JobFilters; None when
    it can match no job (unfinished with finished states only)."""
    states = list(q.state)
    if q.unfinished:
        states = [s for s in states if s in UNFINISHED] if states else list(UNFINISHED)
        if not states:
            return None
    return JobFilters(states=states, **q.model_dump(exclude={"state", "unfinished"}))


def as_filter(f: JobFilters) -> dict[str, Any]:
    """JobFilters as a bulk action's JSON filter, set fields only (the dashboard's buttons)."""
    fields = {k: v for k, v in asdict(f).items() if k != "states"}
    return JobFilter(state=list(f.states), **fields).model_dump(mode="json", exclude_defaults=True)


def _db_filters(f: JobFilters) -> dict[str, Any]:
    """The search_jobs filters of JobFilters: the list, the count and the bulk actions."""
    return {"states": [s.value for s in f.states] or None, "queue": f.queue, "task": f.task,
            "stuck": f.stuck, "waiting_for_worker": f.waiting_for_worker,
            "min_attempts": f.min_attempts, "created_after": f.created_after,
            "created_before": f.created_before, "finished_after": f.finished_after,
            "finished_before": f.finished_before, "error_contains": f.error or None}


def search(db: Database, f: JobFilters, cursor: int | None, limit: int) -> JobPage:
    # One row more than asked tells whether an older page exists without a count(*).
    rows = db.search_jobs(**_db_filters(f), before_id=cursor, limit=limit + 1)
    jobs = [Job.model_validate(r) for r in rows[:limit]]
    return JobPage(jobs=jobs, next_cursor=jobs[-1].id if len(rows) > limit else None)


def count(db: Database, f: JobFilters | None) -> CountOut:
    if f is None:
        return CountOut(count=0, capped=False)
    n, capped = db.count_matching(**_db_filters(f))
    return CountOut(count=n, capped=capped)


def bulk(db: Database, action: BulkAction, f: JobFilters | None, cursor: int | None,
         limit: int, by: str = "a bulk cancel through the HTTP API") -> BulkOut:
    """One batch of a bulk action; ``by`` is who cancelled, in each job's error history."""
    if f is None:
        return BulkOut(action=action, done=0, skipped=0, cursor=cursor, more=False)
    b = db.bulk_batch(action.value, cursor=cursor, limit=limit, reason=by, **_db_filters(f))
    return BulkOut(action=action, done=b.done, skipped=b.skipped, cursor=b.cursor, more=b.more)


def _errors(raw: Any) -> list[AttemptError]:
    out = []
    for entry in raw or []:
        if isinstance(entry, dict):
            out.append(AttemptError(attempt=entry.get("attempt"), at=entry.get("at"),
                                    worker=entry.get("worker"), error=str(entry.get("error", ""))))
    return out


def job_detail(db: Database, job_id: int) -> JobDetail:
    row = db.get_job(job_id)
    if row is None:
        raise JobNotFound(f"job {job_id} does not exist (it may have been pruned)")
    return JobDetail.model_validate({**row, "errors": _errors(row.get("errors"))})


def retry(db: Database, job_id: int) -> JobDetail:
    """404 (JobNotFound) or 409 (InvalidTransition) when it cannot be retried."""
    refusal = transitions.retry(db, job_id).refusal()
    if refusal is not None:
        raise refusal
    return job_detail(db, job_id)


def cancel(db: Database, job_id: int, by: str = "the HTTP API") -> JobDetail:
    """As retry; a running job asked to stop before gets the same answer again (200, nothing
    changed), so that a repeated cancel is safe."""
    refusal = transitions.cancel(db, job_id, by).refusal()
    if refusal is not None:
        raise refusal
    return job_detail(db, job_id)


def pause_queue(client: Client, queue: str, reason: str | None) -> QueuePause:
    p = client.pause_queue(queue, reason, by="api")
    return QueuePause(queue=p.queue, paused=True, paused_at=p.paused_at, paused_by=p.paused_by,
                      changed=p.newly_paused)


def resume_queue(client: Client, queue: str) -> QueuePause:
    resumed = client.resume_queue(queue)
    return QueuePause(queue=queue, paused=False, paused_at=None, paused_by=None,
                      changed=resumed)


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def stalled(healthy: bool, oldest_pending: float | None, lease_seconds: float) -> bool:
    """Its outcomes are not being written: it says it is unhealthy, or the oldest one waiting
    is older than half its lease (the point where its /livez answers 503)."""
    return not healthy or (oldest_pending is not None and oldest_pending > lease_seconds / 2)


def workers(db: Database) -> WorkersOut:
    """Lease holders per worker and queue, and per worker id the registry row merged with
    the leases it holds (a worker without a row still appears when it holds leases)."""
    holders = []
    leases: dict[str, list[LeaseHolder]] = {}
    for r in db.lease_holders():
        silent = r["silent_for"]
        h = LeaseHolder(
            worker=r["locked_by"], pod=inspection.pod_of(r["locked_by"]), queue=r["queue"],
            live=int(r["live"]), expired=int(r["expired"]),
            silent_for_seconds=float(silent) if silent is not None and silent > 0 else None)
        holders.append(h)
        leases.setdefault(h.worker, []).append(h)
    processes = []
    for r in db.worker_registry():
        held = leases.pop(r["id"], [])
        lease_seconds = float(r["lease_seconds"])
        oldest = _seconds(r["oldest_pending_seconds"])
        silent = _seconds(r["silent_for"])
        processes.append(WorkerProcess(
            worker=r["id"], pod=inspection.pod_of(r["id"]), registered=True,
            alive=bool(r["alive"]), healthy=bool(r["healthy"]),
            stalled=stalled(bool(r["healthy"]), oldest, lease_seconds), problem=r["problem"],
            started_at=r["started_at"], last_seen=r["last_seen"],
            silent_for_seconds=max(0.0, silent) if silent is not None else None,
            running=int(r["running"]), pending_outcomes=int(r["pending_outcomes"]),
            oldest_pending_seconds=oldest, queues=list(r["queues"] or []),
            tasks=list(r["tasks"] or []), concurrency=int(r["concurrency"]),
            lease_seconds=lease_seconds, live=sum(h.live for h in held),
            expired=sum(h.expired for h in held)))
    for worker_id, held in leases.items():
        live = sum(h.live for h in held)
        silent_all = [h.silent_for_seconds for h in held]
        processes.append(WorkerProcess(
            worker=worker_id, pod=inspection.pod_of(worker_id), registered=False,
            alive=live > 0, healthy=None, stalled=False, problem=None, started_at=None,
            last_seen=None,
            silent_for_seconds=(min(x for x in silent_all if x is not None)
                                if live == 0 and all(x is not None for x in silent_all)
                                else None),
            running=None, pending_outcomes=None, oldest_pending_seconds=None,
            queues=sorted(h.queue for h in held), tasks=[], concurrency=None,
            lease_seconds=None, live=live, expired=sum(h.expired for h in held)))
    processes.sort(key=lambda p: (not (p.stalled or p.expired), not p.alive, p.worker))
    return WorkersOut(workers=holders, processes=processes)


def bucket_seconds_for(window_minutes: int) -> int:
    """About 30..60 buckets whatever the window, each a whole number of minutes."""
    return 60 * max(1, window_minutes // 30)


# Queues per page of the overview unless the caller asks for another size: at 1,000 queues the
# whole list cost ~0.7 s to count, chart and encode, and nobody reads 1,000 rows of charts.
OVERVIEW_PAGE = 100
# Points of a queue's backlog history in an overview unless the caller asks for another number:
# 2.7 pixels apart on the dashboard's 320-pixel plot, enough for a chart. Every sample of an
# hour (360 per queue) was 3.2 MB and ~340 ms for a page of 100 queues at 1,000 queues.
BACKLOG_POINTS = 120
OVERVIEW_PAGE_MAX = 1000


def backlog_series() -> PerSample[tuple[str, int | None], QueueSeries]:
    """Each queue's backlog series of at most ``points`` points by (queue, points), made once
    per sample (api/per_sample.py): what ``overview`` takes as ``backlog_series``."""
    return PerSample(lambda samples, key: queue_series(samples, *key))


def backlog_points_of(h: QueueSeries) -> list[BacklogPoint]:
    """A queue's backlog history in an overview, from its (thinned) series."""
    return [BacklogPoint(at=at, backlog=b, in_flight=f, stuck=k, dead=d)
            for at, b, f, k, d in zip(h.at, h.backlog, h.in_flight, h.stuck, h.dead, strict=True)]


def overview(db: Database, history: BacklogHistory, finished: ThroughputCache,
             window_minutes: int, queues: Sequence[str] = (), *, after: str | None = None,
             limit: int | None = None, backlog_points: int | None = None,
             reads: Reads = ONE_BY_ONE, last_pages: LastPages | None = None,
             backlog_series: PerSample[tuple[str, int | None], QueueSeries] | None = None
             ) -> QueuesOut:
    """One page of queues in name order: the ``limit`` queues after ``after`` (of those named,
    or of every queue with a task, live jobs, a pause or a job finished within the window),
    each counted and charted; ``next_after`` is the ``after`` of the next page. Each queue
    has the backlog samples this process took, all of them or at most ``backlog_points``
    (history.queue_series; 0: none, which the dashboard asks for: it draws its charts from
    queue_series itself, without the models). With ``last_pages``, the page's reads start together
    on ``reads``, with the names this page listed last time (api/last_pages.py). With
    ``backlog_series`` (from ``backlog_series()``, serving this ``history`` alone), a queue's
    series of at most BACKLOG_POINTS points is thinned once per sample (api/per_sample.py)."""
    if limit is None:  # a caller who names its queues gets them all (up to the maximum)
        limit = min(max(len(set(queues)), OVERVIEW_PAGE), OVERVIEW_PAGE_MAX)
    bucket = bucket_seconds_for(window_minutes)
    now = db.now()
    epoch = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    last = epoch + dt.timedelta(seconds=((now - epoch).total_seconds() // bucket) * bucket)
    n_buckets = max(1, (window_minutes * 60) // bucket)
    starts = [last - dt.timedelta(seconds=bucket * i) for i in range(n_buckets - 1, -1, -1)]
    key = (tuple(queues), after, limit, window_minutes)
    guessed_page = last_pages.page(key) if last_pages else None
    guessed_finished = (() if queues else last_pages.finished(window_minutes) if last_pages
                        else None)
    counting = reads.start(lambda: finished.counts(
        lambda since: db.finished_counts(since, bucket), now, starts, bucket))
    listing = (reads.start(lambda: db.overview_queue_names(
        queues, guessed_finished or (), after, limit)) if guessed_finished is not None else None)
    counted = (reads.start(lambda: inspection.queue_stats(db, guessed_page or ()))
               if guessed_page else None)
    try:
        counts = counting.result()
        recent = tuple(sorted(set().union(*counts.values()))) if not queues else ()
        if listing is not None and recent == guessed_finished:
            total, names = listing.result()
        else:
            discard(listing)
            listing = None
            total, names = db.overview_queue_names(queues, recent, after, limit)
        page, more = names[:limit], len(names) > limit
        stats = {s.queue: s for s in counted.result()} if counted is not None else {}
        if missing := still_to_count(page, stats):
            stats.update((s.queue, s) for s in inspection.queue_stats(db, missing))
    except BaseException:
        discard(counting, listing, counted)
        raise
    if last_pages is not None:
        # a page of named queues says nothing of which queues finished jobs
        last_pages.remember(key, page, window_minutes, None if queues else recent)
    taken, samples = history.snapshot() if backlog_points != 0 else (0, [])
    # The series are kept, not the models (120 models are ~120 kB, their series ~9 kB), and
    # only up to the default's points: a caller asking for every sample of a long history
    # would otherwise keep MBs per queue until the next sample.
    kept = (backlog_series if samples and backlog_points is not None
            and backlog_points <= BACKLOG_POINTS else None)
    out = []
    for name in page:  # the database's order: the one `after` pages by
        s = stats[name]  # queue_stats answers for every queue named, jobs or not
        series = [Point(at=t, succeeded=c[0], dead=c[1])
                  for t in starts for c in (counts[t].get(name, (0, 0)),)]
        ok = sum(p.succeeded for p in series)
        dead = sum(p.dead for p in series)
        points = backlog_points_of(kept.get(taken, samples, (name, backlog_points))
                                   if kept is not None
                                   else queue_series(samples, name, backlog_points))
        out.append(QueueOut(
            queue=name, backlog=s.backlog, runnable=s.runnable, scheduled=s.scheduled,
            in_flight=s.in_flight, stuck=s.stuck, dead=s.dead, dead_last_hour=s.dead_last_hour,
            high_retry=s.high_retry, waiting_for_worker=s.waiting_for_worker,
            waiting_on_limit=s.waiting_on_limit, limit_capacity=s.limit_capacity,
            oldest_runnable_age_seconds=s.oldest_runnable_age,
            succeeded_in_window=ok, dead_in_window=dead,
            throughput_per_minute=round((ok + dead) / window_minutes, 3),
            throughput=series, backlog_history=points,
            # inspection.queue_stats merged the paused_queues rows (and lists a paused queue
            # that has no jobs)
            paused=s.paused, paused_at=s.paused_at, paused_by=s.paused_by))
    return QueuesOut(generated_at=now, window_minutes=window_minutes, bucket_seconds=bucket,
                     total_queues=total, next_after=page[-1] if more else None, queues=out)
