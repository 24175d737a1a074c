"""The scheduler against a real database where a review found it wanting: due rows that cannot
fire must not hold the due list, a loser of the race must not wait on the winner's lock, the
retirement of app schedules needs evidence, the operator's scale-ahead must not count stale
app schedules, and the cron work of a pass runs off the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from skiplock.db import Database
from skiplock.schedules import plan
from skiplock.worker import scheduler as scheduler_module
from skiplock.worker.core import Worker
from skiplock.worker.scheduler import Scheduler
from tests.integration.test_schedules_lifecycle import app_with, conn

SQL = Callable[..., list[tuple[Any, ...]]]


def fired(sql: SQL, name: str) -> int:
    return int(sql("SELECT count(*) FROM schedule_firings WHERE schedule = %s", name)[0][0])


def test_rows_that_cannot_fire_do_not_starve_the_rest(database_url: str, sql: SQL) -> None:
    """150 hand-written rows no worker can read, all older than the good schedule: the due
    list is read oldest first, 100 at a time. They are put off, and the good one fires."""
    app = app_with(good={"every": 1, "grace": 3600})
    sql("INSERT INTO schedules (name, task, queue, cron, source, next_fire_at) "
        "SELECT 'broken-' || i, 'tick', 'default', 'not a cron', 'crd:x/b' || i, "
        "now() - interval '1 hour' FROM generate_series(1, 150) AS i")

    async def main() -> None:
        c = conn(database_url)
        try:
            s = Scheduler(c, app, 1)
            await s.run_once()  # declares `good`
            sql("UPDATE schedules SET next_fire_at = now() - interval '1 second' "
                "WHERE name = 'good'")
            for _ in range(3):
                await s.run_once()
        finally:
            await c.close()

    asyncio.run(main())
    assert fired(sql, "good") >= 1
    # put off, not fired, not dropped from the table
    later = sql("SELECT count(*) FROM schedules WHERE name LIKE 'broken-%%' "
                "AND next_fire_at > now()")[0][0]
    assert later == 150 and sql("SELECT count(*) FROM schedule_firings "
                                "WHERE schedule LIKE 'broken-%%'")[0][0] == 0


def minute_marks(start: Any, end: Any) -> int:
    """How many multiples of 60 s since the epoch lie in [start, end)."""
    return math.ceil(end.timestamp() / 60) - math.ceil(start.timestamp() / 60)


def test_a_key_function_no_live_worker_has_is_put_off(database_url: str, sql: SQL) -> None:
    app = app_with(good={"every": 1, "grace": 3600})
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) VALUES ('keyed', "
        "'{\"params\": [], \"var_keyword\": true}', 5, 'default', "
        "'{\"key\": \"function\", \"key_limit\": 1}')")
    sql("INSERT INTO schedules (name, task, queue, every_seconds, source, next_fire_at) "
        "SELECT 'keyed-' || i, 'keyed', 'default', 60, 'crd:x/k' || i, "
        "now() - interval '1 hour' FROM generate_series(1, 120) AS i")

    async def main() -> None:
        c = conn(database_url)
        try:
            s = Scheduler(c, app, 1)
            await s.run_once()
            sql("UPDATE schedules SET next_fire_at = now() - interval '1 second' "
                "WHERE name = 'good'")
            for _ in range(3):
                await s.run_once()
        finally:
            await c.close()

    before = dict(sql("SELECT name, next_fire_at FROM schedules WHERE name LIKE 'keyed-%%'"))
    asyncio.run(main())
    assert fired(sql, "good") >= 1
    # put off by a minute from an hour late: the firings skipped (every minute mark from the
    # old fire time up to the new one: the hour, and the minute it is put off by, plus one
    # when a mark passed while the scheduler ran) count as missed, once per schedule
    after = sql("SELECT name, next_fire_at, missed_total FROM schedules "
                "WHERE name LIKE 'keyed-%%'")
    assert len(after) == 120
    for name, moved_to, missed in after:
        marks = minute_marks(before[name], moved_to)
        assert missed == marks and marks in (61, 62), (name, before[name], moved_to, missed)


def test_a_loser_does_not_wait_on_the_winners_lock(database_url: str, sql: SQL) -> None:
    """While another transaction holds the schedule's row (a winner mid-statement), a
    scheduler's fire gives up at once: it neither waits nor enqueues."""
    app = app_with(race={"every": 1, "grace": 3600})

    async def main() -> tuple[bool, list[int]]:
        c = conn(database_url)
        try:
            await Scheduler(c, app, 1).register()
            expected = sql("UPDATE schedules SET next_fire_at = date_trunc('second', now()) "
                           "- interval '1 second' RETURNING next_fire_at")[0][0]
            with psycopg.connect(database_url, options="-c search_path=skiplock") as holder:
                holder.execute("SELECT 1 FROM schedules WHERE name = 'race' FOR UPDATE")
                # without SKIP LOCKED this waits for `holder`, which never lets go while
                # the call runs: the wait_for would time out
                return await asyncio.wait_for(c.fire_schedule(
                    "race", expected, expected + dt.timedelta(seconds=5),
                    [(expected, expected, False)], 0), 15)
        finally:
            await c.close()

    won, jobs = asyncio.run(main())
    assert (won, jobs) == (False, [])
    assert sql("SELECT count(*) FROM jobs")[0][0] == 0 and fired(sql, "race") == 0


def live_worker(sql: SQL, queues: list[str], started_ago: str) -> None:
    sql("INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds, started_at) "
        "VALUES (%s, %s, '{}', 1, 30, now() - %s::interval)",
        f"w-{len(sql('SELECT 1 FROM workers'))}", queues, started_ago)


def test_retirement_needs_a_live_worker_of_the_queue(database_url: str, sql: SQL,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of another JobQueue (queue `mine`) does not retire the app schedule of a
    JobQueue at zero replicas (queue `theirs`); once a worker serving `theirs` has run for a
    while without declaring it, it goes."""
    monkeypatch.setattr(scheduler_module, "RETIRE_SECONDS", 60.0)
    app = app_with()
    sql("INSERT INTO schedules (name, task, queue, cron, source, next_fire_at, seen_at) "
        "VALUES ('nightly', 'report', 'theirs', '0 3 * * *', 'app', now() + interval '5 h', "
        "now() - interval '3 hours')")
    live_worker(sql, ["mine"], "1 hour")

    async def housekeep() -> None:
        c = conn(database_url)
        try:
            await Scheduler(c, app, 1).run_once()
        finally:
            await c.close()

    asyncio.run(housekeep())
    assert sql("SELECT count(*) FROM schedules")[0][0] == 1
    live_worker(sql, ["theirs"], "10 seconds")  # just started: has not declared its own yet
    asyncio.run(housekeep())
    assert sql("SELECT count(*) FROM schedules")[0][0] == 1
    live_worker(sql, ["theirs", "other"], "1 hour")
    asyncio.run(housekeep())
    assert sql("SELECT count(*) FROM schedules")[0][0] == 0


def test_scale_ahead_ignores_app_schedules_no_worker_fires(database_url: str,
                                                           sql: SQL) -> None:
    db = Database(database_url, schema="skiplock")
    try:
        sql("INSERT INTO schedules (name, task, queue, every_seconds, source, next_fire_at, "
            "seen_at) VALUES ('dropped', 't', 'q', 60, 'app', now() - interval '1 hour', "
            "now() - interval '1 hour')")
        # dropped from the code an hour ago, overdue since: no worker fires it
        assert db.next_firing(["q"]) is None
        # a JobQueue at zero replicas: stale, but its fire time is ahead, so it wakes one
        sql("UPDATE schedules SET next_fire_at = now() + interval '30 seconds'")
        seconds = db.next_firing(["q"])
        assert seconds is not None and 0 < seconds <= 30
        # declared by a live worker and overdue: counts
        sql("UPDATE schedules SET next_fire_at = now() - interval '1 hour', seen_at = now()")
        seconds = db.next_firing(["q"])
        assert seconds is not None and seconds < -3000
    finally:
        db.close()


def test_plans_run_off_the_event_loop(database_url: str, sql: SQL,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real = plan

    def spy(*a: Any, **kw: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*a, **kw)

    monkeypatch.setattr(scheduler_module, "plan", spy)
    app = app_with(tick={"every": 1, "grace": 3600})

    async def main() -> None:
        c = conn(database_url)
        try:
            s = Scheduler(c, app, 1)
            await s.run_once()
            sql("UPDATE schedules SET next_fire_at = now() - interval '1 second'")
            await s.run_once()
        finally:
            await c.close()

    asyncio.run(main())
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert fired(sql, "tick") >= 1


def test_the_scheduler_does_not_share_the_lease_renewers_connection(
        database_url: str) -> None:
    w = Worker(app_with(), database_url)
    scheduler = w.services["scheduler"]
    renewer = next(s for s in w.services.values() if type(s).__name__ == "LeaseRenewer")
    assert scheduler.db is not renewer.db
    assert scheduler.db is w._claim_db


def test_a_refused_firing_is_that_schedules_problem_only(database_url: str, sql: SQL) -> None:
    """A key PostgreSQL cannot store (a key function's NUL) drops that schedule's firings with
    an error; a firing the database refuses (a constraint on jobs here) puts it off. Either
    way the pass goes on: before, the refusal ended the scheduler and so the worker."""
    app = app_with(good={"every": 1, "grace": 3600})

    @app.periodic(every=1, name="nul-key", grace=3600)
    @app.task(concurrency_key=lambda **_: "a\x00b", key_limit=1)
    def keyed(ctx: Any) -> None:
        return None

    @app.periodic(every=1, name="blocked", grace=3600)
    @app.task
    def refused(ctx: Any) -> None:
        return None

    sql("ALTER TABLE jobs ADD CONSTRAINT test_refuses CHECK (task <> 'refused')")

    async def main() -> None:
        c = conn(database_url)
        try:
            await c.register_tasks([(t.name, t.params, t.max_attempts, t.queue)
                                    for t in app.tasks.values()])
            sql("UPDATE tasks SET limits = %s WHERE name = 'keyed'",
                '{"key": "function", "key_limit": 1}')
            s = Scheduler(c, app, 1)
            await s.run_once()
            sql("UPDATE schedules SET next_fire_at = date_trunc('second', now()) "
                "- interval '2 seconds'")
            await s.run_once()
            await s.run_once()
        finally:
            await c.close()

    asyncio.run(main())
    assert fired(sql, "good") >= 1
    assert fired(sql, "nul-key") == 0 and fired(sql, "blocked") == 0
    assert sql("SELECT missed_total FROM schedules WHERE name = 'nul-key'")[0][0] >= 1
    assert sql("SELECT next_fire_at > now() + interval '30 seconds' FROM schedules "
               "WHERE name = 'blocked'")[0][0] is True
