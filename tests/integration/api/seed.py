"""Known jobs in every state, written straight to the table so each filter has an exact answer."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass

Sql = Callable[..., list[tuple[object, ...]]]


@dataclass(frozen=True)
class Seeded:
    now: dt.datetime
    ids: dict[str, int]

    def __getitem__(self, name: str) -> int:
        return self.ids[name]

    def of(self, *names: str) -> set[int]:
        return {self.ids[n] for n in names}


# name: (queue, task, state, attempts, max_attempts, created ago, finished ago, lease from now,
#        run_at from now, last_error)
H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)
JOBS: dict[str, tuple[str, str, str, int, int, dt.timedelta, dt.timedelta | None,
                      dt.timedelta | None, dt.timedelta, str | None]] = {
    "queued": ("alpha", "add", "queued", 0, 5, 5 * H, None, None, -M, None),
    "retrying": ("alpha", "flaky", "queued", 3, 5, 1 * H, None, None, -M,
                 "RuntimeError: transient boom on attempt 3"),
    "scheduled": ("alpha", "add", "queued", 0, 5, 1 * H, None, None, 2 * H, None),
    "running": ("alpha", "sleep", "running", 1, 5, 1 * H, None, H, -M, None),
    "stuck": ("beta", "sleep", "running", 1, 5, 1 * H, None, -M, -M, None),
    "succeeded": ("beta", "add", "succeeded", 1, 5, 2 * H, 30 * M, None, -M, None),
    "dead": ("beta", "poison", "dead", 4, 4, 2 * H, 10 * M, None, -M,
             "RuntimeError: always fails (attempt 4)"),
    "cancelled": ("alpha", "noop", "cancelled", 0, 3, 1 * H, 5 * M, None, -M, None),
}


def seed(sql: Sql) -> Seeded:
    (now,) = sql("SELECT now()")[0]
    assert isinstance(now, dt.datetime)
    ids = {}
    for name, (queue, task, state, attempts, max_attempts, created, finished, lease, run_at,
               error) in JOBS.items():
        errors = [{"attempt": a, "at": (now - created + a * M).isoformat(), "worker": "pod-a:1:x",
                   "error": f"RuntimeError: always fails (attempt {a})"}
                  for a in range(1, attempts + 1)] if state == "dead" else []
        if name == "retrying":
            errors = [{"attempt": a, "at": (now - created + a * M).isoformat(),
                       "worker": "pod-b:2:y",
                       "error": f"RuntimeError: transient boom on attempt {a}"}
                      for a in range(1, attempts + 1)]
        (job_id,) = sql(
            "INSERT INTO jobs (queue, task, args, state, attempts, max_attempts, created_at,"
            " finished_at, locked_until, locked_by, run_at, last_error, errors)"
            " VALUES (%s, %s, %s, %s::job_state, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            queue, task, json.dumps({"a": 1, "b": 2} if task == "add" else {}), state, attempts,
            max_attempts, now - created, now - finished if finished else None,
            now + lease if lease else None, "pod-c:3:z" if state == "running" else None,
            now + run_at, error, json.dumps(errors))[0]
        ids[name] = int(job_id)  # type: ignore[call-overload]
    return Seeded(now=now, ids=ids)


def filter_cases(s: Seeded) -> list[tuple[str, dict[str, str], set[int]]]:
    """(name, query parameters, the ids that and only that filter must show)."""
    def iso(delta: dt.timedelta) -> str:
        return (s.now - delta).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")

    return [
        ("state queued", {"state": "queued"}, s.of("queued", "retrying", "scheduled")),
        ("state running", {"state": "running"}, s.of("running", "stuck")),
        ("state succeeded", {"state": "succeeded"}, s.of("succeeded")),
        ("state dead", {"state": "dead"}, s.of("dead")),
        ("state cancelled", {"state": "cancelled"}, s.of("cancelled")),
        ("stuck", {"stuck": "1"}, s.of("stuck")),
        ("queue", {"queue": "beta"}, s.of("stuck", "succeeded", "dead")),
        ("task", {"task": "poison"}, s.of("dead")),
        ("min attempts", {"min_attempts": "3"}, s.of("retrying", "dead")),
        ("high retry", {"state": "unfinished", "min_attempts": "3"}, s.of("retrying")),
        ("created before", {"created_before": iso(4 * H)}, s.of("queued")),
        ("created after", {"created_after": iso(90 * M), "queue": "beta"}, s.of("stuck")),
        ("finished after", {"finished_after": iso(15 * M)}, s.of("dead", "cancelled")),
        ("finished before", {"finished_before": iso(20 * M)}, s.of("succeeded")),
        ("error text", {"error": "transient boom"}, s.of("retrying")),
        ("error text dead", {"error": "always fails"}, s.of("dead")),
    ]


# Strings a worker could report as its problem; the dashboard must show them as text.
HOSTILE = ('<script>alert(1)</script> "><img src=x onerror=alert(1)> '
           "outcomes not written: connection refused")
# id: (queues, tasks, concurrency, lease s, last seen ago s, running, pending outcomes,
#      oldest pending s, healthy, problem)
WORKERS: dict[str, tuple[list[str], list[str], int, float, float, int, int, float | None, bool,
                         str | None]] = {
    "pod-a:1:x": (["alpha"], ["add", "sleep"], 4, 30.0, 2.0, 1, 0, None, True, None),
    # healthy by its own word, but its oldest outcome waits longer than half its lease (15 s)
    "pod-b:2:y": (["alpha", "beta"], ["add"], 8, 30.0, 3.0, 2, 3, 20.0, True, None),
    "pod-d:4:w": (["beta"], ["poison"], 2, 60.0, 1.0, 0, 5, 3.0, False, HOSTILE),
    # stopped beating ten minutes ago (crashed): kept for a while, not alive
    "pod-e:5:v": (["gamma"], [], 1, 30.0, 600.0, 1, 0, None, True, None),
}


@dataclass(frozen=True)
class Registry:
    now: dt.datetime
    unrunnable: dict[str, set[int]]  # queue: ids of the queued jobs waiting for a worker
    others: set[int]  # jobs with unrunnable_since set that are not queued (never counted)


def seed_registry(sql: Sql) -> Registry:
    """The WORKERS rows; a live lease held by pod-a and an expired one by pod-e; jobs waiting
    for a worker in alpha (1) and gamma (3, one deferred to later), and two with
    unrunnable_since set that must not count (one dead, one running)."""
    (now,) = sql("SELECT now()")[0]
    assert isinstance(now, dt.datetime)
    for worker_id, (queues, tasks, concurrency, lease, ago, running, pending, oldest, healthy,
                    problem) in WORKERS.items():
        sql("INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds, started_at,"
            " last_seen, running, pending_outcomes, oldest_pending_seconds, healthy, problem)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            worker_id, queues, json.dumps({t: {} for t in tasks}), concurrency, lease,
            now - dt.timedelta(hours=1), now - dt.timedelta(seconds=ago), running, pending,
            oldest, healthy, problem)
    sql("INSERT INTO jobs (queue, task, state, attempts, locked_by, locked_until, started_at)"
        " VALUES ('alpha', 'sleep', 'running', 1, 'pod-a:1:x', %s, %s),"
        " ('gamma', 'add', 'running', 1, 'pod-e:5:v', %s, %s)",
        now + dt.timedelta(minutes=5), now, now - dt.timedelta(minutes=9),
        now - dt.timedelta(minutes=10))

    def waiting(queue: str, n: int, run_in: dt.timedelta) -> set[int]:
        rows = sql("INSERT INTO jobs (queue, task, state, run_at, unrunnable_since, last_error)"
                   " SELECT %s, 'ghost', 'queued', %s, %s, 'no live worker runs task ghost'"
                   " FROM generate_series(1, %s) RETURNING id",
                   queue, now + run_in, now - 2 * M, n)
        return {int(r[0]) for r in rows}  # type: ignore[call-overload]

    unrunnable = {"alpha": waiting("alpha", 1, -M),
                  "gamma": waiting("gamma", 2, -M) | waiting("gamma", 1, 5 * M)}
    others = {int(r[0]) for r in sql(  # type: ignore[call-overload]
        "INSERT INTO jobs (queue, task, state, attempts, finished_at, locked_by, locked_until,"
        " unrunnable_since) VALUES"
        " ('gamma', 'ghost', 'dead', 1, %s, NULL, NULL, %s),"
        " ('gamma', 'ghost', 'running', 1, NULL, 'pod-a:1:x', %s, %s) RETURNING id",
        now, now - H, now + 5 * M, now - H)}
    return Registry(now=now, unrunnable=unrunnable, others=others)
