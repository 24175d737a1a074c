"""Worker behaviour with real worker processes and a real Postgres."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skiplock import Client, Worker
from tests.conftest import WorkerProcess
from tests.support.invariants import assert_invariants
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]
Spawn = Callable[..., WorkerProcess]


def states(sql: Sql) -> dict[str, int]:
    return {s: n for s, n in sql("SELECT state::text, count(*) FROM jobs GROUP BY state")}


def test_in_process_worker_runs_sync_and_async_handlers(database_url: str, sql: Sql) -> None:
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": i}) for i in range(20)]
        ids.append(c.enqueue("async_sleep", {"seconds": 0.01}))
    worker = Worker(app, database_url, concurrency=8)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 10)
        async def all_processed() -> None:
            while worker.processed < len(ids):  # noqa: ASYNC110 - polls a plain counter
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_processed(), 30)
        worker.request_stop()
        await asyncio.wait_for(task, 20)

    asyncio.run(go())
    rows = dict(sql("SELECT job_id, result FROM results"))
    assert rows[ids[3]] == {"sum": 6}
    assert rows[ids[-1]] == {"slept": 0.01}
    assert states(sql) == {"succeeded": 21}


def test_each_job_claimed_by_one_worker_at_a_time(
    database_url: str, sql: Sql, spawn_worker: Spawn, tmp_path: Path
) -> None:
    marker = tmp_path / "runs.txt"
    workers = [
        spawn_worker("tests.tasks:app", "--concurrency", "6", name=f"w{i}") for i in range(4)
    ]
    # All four are idle and listening before the work arrives, so they all compete for it.
    wait_until(
        lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
                    "AND datname = current_database()") == [(4,)],
        message="4 workers listening",
    )
    with Client(database_url) as c:
        c.enqueue_many(
            {"task": "sleep", "args": {"seconds": 0.02, "marker": str(marker)}} for _ in range(400)
        )
    wait_until(lambda: states(sql) == {"succeeded": 400}, timeout=90, message="400 jobs succeeded")
    runs = collections.Counter(line.split()[0] for line in marker.read_text().splitlines())
    assert len(runs) == 400 and set(runs.values()) == {1}, "a job ran twice without a lease expiry"
    by_worker = collections.Counter(
        line.split()[2].split(":")[0] for line in marker.read_text().splitlines()
    )
    assert len(by_worker) >= 2, f"work was not shared: {by_worker}"
    assert sql("SELECT count(*) FROM results") == [(400,)]
    for w in workers:
        assert w.terminate() == 0


def test_sigkill_mid_job_is_rerun_after_the_lease(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("sleep", {"seconds": 1.5})
    victim = spawn_worker("tests.tasks:app", "--lease-seconds", "2", name="victim")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("running",)],
        message="job running",
    )
    victim.kill()
    spawn_worker(
        "tests.tasks:app", "--lease-seconds", "2", "--poll-interval", "0.2", name="rescuer"
    )
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("succeeded",)],
        timeout=30,
        message="job re-run and succeeded",
    )
    ((attempts, errors),) = sql("SELECT attempts, errors FROM jobs WHERE id=%s", job_id)
    assert attempts == 2
    assert "lease expired" in errors[0]["error"] and errors[0]["worker"].startswith("victim:")
    assert_invariants(sql)


def test_crash_right_after_claim_leaves_nothing_stuck(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": 1, "b": i}) for i in range(5)]
    # A worker that claimed (real claim query) and died before running anything.
    sql(
        "UPDATE jobs SET state='running', attempts=1, locked_by='ghost:1:abc', "
        "locked_until=now() + interval '1 second' WHERE id = ANY(%s)",
        ids,
    )
    spawn_worker("tests.tasks:app", "--poll-interval", "0.2")
    wait_until(lambda: states(sql) == {"succeeded": 5}, timeout=30, message="ghost's jobs finished")
    assert sql("SELECT DISTINCT attempts FROM jobs") == [(2,)]
    assert_invariants(sql)


def test_lease_expiry_at_max_attempts_goes_dead(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("add", {"a": 1, "b": 1}, max_attempts=1)
    sql(
        "UPDATE jobs SET state='running', attempts=1, locked_by='ghost:1:abc', "
        "locked_until=now() - interval '1 second' WHERE id = %s",
        job_id,
    )
    spawn_worker("tests.tasks:app", "--poll-interval", "0.2")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("dead",)],
        message="dead after lease expiry",
    )
    ((error,),) = sql("SELECT last_error FROM jobs WHERE id=%s", job_id)
    assert "lease expired" in error and "attempt 1 of 1" in error


def test_stale_worker_is_fenced_and_result_written_once(
    database_url: str, sql: Sql, spawn_worker: Spawn, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    with Client(database_url) as c:
        job_id = c.enqueue("wait_for_file", {"path": str(release)})
    stale = spawn_worker("tests.tasks:app", "--lease-seconds", "30", name="stale")
    wait_until(
        lambda: sql("SELECT locked_by FROM jobs WHERE id=%s AND state='running'", job_id),
        message="stale worker holds the job",
    )
    # Freeze the stale worker (a long GC pause, a stalled VM) and force an early expiry while
    # its handler is mid-run; frozen, its own rescuer cannot take the job back first.
    os.kill(stale.pid, signal.SIGSTOP)
    sql("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id=%s", job_id)
    fresh = spawn_worker(
        "tests.tasks:app", "--lease-seconds", "30", "--poll-interval", "0.2", name="fresh"
    )
    wait_until(
        lambda: sql("SELECT 1 FROM jobs WHERE id=%s AND locked_by LIKE 'fresh:%%'", job_id),
        message="fresh worker re-claimed the job",
    )
    os.kill(stale.pid, signal.SIGCONT)
    release.touch()  # both executions finish now
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("succeeded",)],
        message="succeeded",
    )
    wait_until(lambda: "no longer ours" in stale.output(), message="stale worker logs the fence")
    assert sql("SELECT count(*), min(result->>'attempt') FROM results WHERE job_id=%s", job_id) == [
        (1, "2")
    ]
    assert fresh.terminate() == 0 and stale.terminate() == 0


def test_poison_pill_goes_dead_with_growing_backoff(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("poison", {}, max_attempts=4)
    spawn_worker("tests.tasks:app", "--poll-interval", "0.1")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("dead",)],
        timeout=30,
        message="poison dead",
    )
    ((attempts, errors, last_error),) = sql(
        "SELECT attempts, errors, last_error FROM jobs WHERE id=%s", job_id
    )
    assert attempts == 4
    assert [e["attempt"] for e in errors] == [1, 2, 3, 4]
    assert "always fails (attempt 4)" in last_error
    # Backoff is 0.2, 0.4, 0.8 s (no jitter): the gaps between failures grow.
    import datetime as dt

    at = [dt.datetime.fromisoformat(e["at"]) for e in errors]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(at)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4 and gaps[2] >= 0.8, gaps
    assert gaps[0] < gaps[1] < gaps[2], gaps


def test_unknown_task_and_bad_payload_die_at_once(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url, validate=False) as c:
        unknown = c.enqueue("resize_image", {"id": 1})
        bad = c.enqueue("add", {"a": 1})
        permanent = c.enqueue("permanent", {})
    # No grace: no live worker can run the first two, so they are dead at once.
    spawn_worker("tests.tasks:app", "--poll-interval", "0.1", "--unrunnable-grace", "0")
    wait_until(lambda: states(sql) == {"dead": 3}, message="all three dead")
    rows = {i: (a, e) for i, a, e in sql("SELECT id, attempts, last_error FROM jobs")}
    assert rows[unknown][0] == 1 and "unknown task 'resize_image'" in rows[unknown][1]
    assert rows[bad][0] == 1 and "arguments do not fit task 'add'" in rows[bad][1]
    assert rows[permanent][0] == 1 and "PermanentError: input can never work" in rows[permanent][1]


def test_flaky_job_succeeds_after_retries(database_url: str, sql: Sql, spawn_worker: Spawn) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("flaky", {"fail_times": 2})
    spawn_worker("tests.tasks:app", "--poll-interval", "0.1")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("succeeded",)],
        message="flaky succeeded",
    )
    assert sql("SELECT result FROM results WHERE job_id=%s", job_id) == [({"attempt": 3},)]


def test_notify_wakes_idle_workers_and_survives_restart(
    pg: PgServer, database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    # Polling every 60 s: only LISTEN/NOTIFY can start a job quickly.
    worker = spawn_worker("tests.tasks:app", "--poll-interval", "60")
    del worker
    wait_until(
        lambda: (
            sql(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
                "AND datname = current_database()"
            )
            == [(1,)]
        ),
        message="worker listening",
    )
    with Client(database_url) as c:
        first = c.enqueue("add", {"a": 1, "b": 1})
        wait_until(
            lambda: sql("SELECT state::text FROM jobs WHERE id=%s", first) == [("succeeded",)],
            timeout=10,
            message="woken by NOTIFY",
        )
        pg.stop("fast")
        pg.start()
        wait_until(
            lambda: sql_after_restart(database_url), timeout=30, message="worker re-listening"
        )
        second = c.enqueue("add", {"a": 2, "b": 2})
    wait_until(
        lambda: state_of(database_url, second) == "succeeded",
        timeout=10,
        message="woken by NOTIFY after the restart",
    )


def sql_after_restart(database_url: str) -> bool:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%' "
            "AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0] == 1)


def state_of(database_url: str, job_id: int) -> str | None:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT state::text FROM skiplock.jobs WHERE id=%s", [job_id]).fetchone()
    return row[0] if row else None


def test_database_restart_mid_run_every_job_finishes(
    pg: PgServer, database_url: str, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        c.enqueue_many({"task": "sleep", "args": {"seconds": 0.02}} for _ in range(300))
    for i in range(2):
        spawn_worker(
            "tests.tasks:app",
            "--concurrency",
            "4",
            "--lease-seconds",
            "3",
            "--poll-interval",
            "0.2",
            name=f"w{i}",
        )
    wait_until(lambda: count_state(database_url, "succeeded") >= 30, message="some progress")
    pg.stop("fast")
    pg.start()
    wait_until(
        lambda: count_state(database_url, "succeeded") == 300,
        timeout=120,
        message="all 300 succeeded after the restart",
    )
    import psycopg

    with psycopg.connect(database_url, options="-c search_path=skiplock") as conn:
        assert conn.execute("SELECT count(*) FROM results").fetchone() == (300,)


def count_state(database_url: str, state: str) -> int:
    import psycopg

    try:
        with psycopg.connect(database_url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM skiplock.jobs WHERE state=%s", [state]
            ).fetchone()
    except psycopg.OperationalError:
        return -1
    return int(row[0]) if row else 0


def test_sigterm_drains_running_jobs_then_exits_zero(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("sleep", {"seconds": 1.0})
    worker = spawn_worker("tests.tasks:app", "--shutdown-grace", "20")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("running",)],
        message="running",
    )
    with Client(database_url) as c:
        later = c.enqueue("add", {"a": 1, "b": 1})
    assert worker.terminate() == 0
    assert sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("succeeded",)]
    # stopped claiming: a job enqueued after SIGTERM... may or may not have been claimed before
    # the signal arrived, but it is never left running.
    assert sql("SELECT state::text FROM jobs WHERE id=%s", later)[0][0] in ("queued", "succeeded")


def test_sigterm_releases_jobs_that_outlive_the_grace(
    database_url: str, sql: Sql, spawn_worker: Spawn
) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("sleep", {"seconds": 60})
    worker = spawn_worker("tests.tasks:app", "--shutdown-grace", "0.5")
    wait_until(
        lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("running",)],
        message="running",
    )
    assert worker.terminate(timeout=15) == 0
    assert sql("SELECT state::text, attempts, locked_by FROM jobs WHERE id=%s", job_id) == [
        ("queued", 0, None)
    ]


def test_prune_removes_old_finished_jobs(database_url: str, sql: Sql) -> None:
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": 1, "b": 1}, validate=False) for _ in range(3)]
        sql(
            "UPDATE jobs SET state='succeeded', finished_at = now() - interval '2 days' "
            "WHERE id = ANY(%s)",
            ids[:2],
        )
        assert c.db.prune_finished(retention_seconds=86400) == 2
    assert sql("SELECT id FROM jobs") == [(ids[2],)]


def test_worker_waits_for_the_schema_instead_of_crashing(pg: PgServer, spawn_worker: Spawn) -> None:
    import psycopg

    from skiplock.db import Database

    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS not_migrated_yet")
        conn.execute("CREATE DATABASE not_migrated_yet")
    url = pg.url("not_migrated_yet")
    worker = WorkerProcess(url, "tests.tasks:app", "--poll-interval", "0.2")
    try:
        wait_until(lambda: "skiplock migrate" in worker.output(), message="a hint to migrate")
        assert worker.proc.poll() is None, "the worker exited instead of waiting"
        with Database(url) as db:
            db.migrate()
        with Client(url) as c:
            job_id = c.enqueue("add", {"a": 2, "b": 3})
        wait_until(lambda: state_of(url, job_id) == "succeeded", timeout=30, message="succeeded")
    finally:
        worker.close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM skiplock.results").fetchone() == (1,)


def test_worker_waits_for_the_migration_its_statements_need(pg: PgServer) -> None:
    """A schema one migration behind what the worker's statements need (deployed before
    `skiplock migrate` ran): the worker says which migration it needs and claims nothing
    (its completions would fail there), then runs the job once it is applied."""
    from skiplock.db import REQUIRED_MIGRATION, Database

    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS one_behind")
        conn.execute("CREATE DATABASE one_behind")
    url = pg.url("one_behind")
    with Database(url) as db:
        db.migrate(target=REQUIRED_MIGRATION - 1)
    with Client(url) as c:
        job_id = c.enqueue("add", {"a": 2, "b": 3})
    worker = WorkerProcess(url, "tests.tasks:app", "--poll-interval", "0.2")
    try:
        hint = f"needs {REQUIRED_MIGRATION:04d}. Run `skiplock migrate`"
        wait_until(lambda: hint in worker.output(), message="which migration it needs")
        assert worker.proc.poll() is None, "the worker exited instead of waiting"
        assert state_of(url, job_id) == "queued"
        with Database(url) as db:
            db.migrate()
        wait_until(lambda: state_of(url, job_id) == "succeeded", timeout=30, message="succeeded")
    finally:
        worker.close()


def test_a_worker_runs_on_the_schema_its_statements_need_before_the_newest(
        pg: PgServer) -> None:
    """The schema at REQUIRED_MIGRATION, newer migrations not applied (an operator of an
    older release migrates): the worker runs its jobs there."""
    from skiplock.db import REQUIRED_MIGRATION, Database
    from skiplock.sql import migrations

    assert migrations()[-1][0] >= REQUIRED_MIGRATION
    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS at_required")
        conn.execute("CREATE DATABASE at_required")
    url = pg.url("at_required")
    with Database(url) as db:
        db.migrate(target=REQUIRED_MIGRATION)
    with Client(url) as c:
        job_id = c.enqueue("add", {"a": 2, "b": 3})
    worker = WorkerProcess(url, "tests.tasks:app", "--poll-interval", "0.2")
    try:
        wait_until(lambda: state_of(url, job_id) == "succeeded", timeout=30, message="succeeded")
    finally:
        worker.close()


def test_json_logs_carry_job_fields_even_from_handlers(database_url: str, sql: Sql,
                                                       spawn_worker: Spawn) -> None:
    import json

    with Client(database_url) as c:
        job_id = c.enqueue("chatty", {"message": "hello"})
    worker = spawn_worker("tests.tasks:app", env={"SKIPLOCK_LOG_JSON": "1"}, name="jsonlog")
    wait_until(lambda: "handler says hello" in worker.output(), message="the handler's log line")
    assert worker.terminate() == 0
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    (said,) = [entry for entry in lines if entry["msg"] == "handler says hello"]
    assert said["job_id"] == job_id and said["task"] == "chatty" and said["attempt"] == 1
    assert said["worker_id"].startswith("jsonlog:")
    assert all("worker_id" in entry for entry in lines if entry["logger"].startswith("skiplock"))


def test_rescued_and_released_jobs_keep_their_place_in_the_queue(database_url: str, sql: Sql,
                                                                 spawn_worker: Spawn) -> None:
    with Client(database_url) as c:
        first = c.enqueue("add", {"a": 1, "b": 1})
        sql("UPDATE jobs SET state='running', attempts=1, locked_by='ghost:1:abc', "
            "locked_until=now() - interval '1 second' WHERE id = %s", first)
        c.enqueue_many({"task": "add", "args": {"a": i, "b": 1}} for i in range(30))
    spawn_worker("tests.tasks:app", "--concurrency", "1", "--poll-interval", "0.2")
    wait_until(lambda: states(sql) == {"succeeded": 31}, timeout=60, message="31 succeeded")
    (earliest,), = sql("SELECT id FROM jobs ORDER BY started_at LIMIT 1")
    assert earliest == first, "the rescued job waited behind the backlog"


def test_a_claim_lost_by_the_database_does_not_let_the_older_run_write(
    database_url: str, sql: Sql, spawn_worker: Spawn, tmp_path: Path
) -> None:
    """Claims commit asynchronously; a server crash can undo one after its handler started, and
    the same worker may claim the job again with the same attempt number (same fence)."""
    marker = tmp_path / "runs.txt"
    with Client(database_url) as c:
        job_id = c.enqueue("sleep", {"seconds": 2.0, "marker": str(marker)})
    worker = spawn_worker("tests.tasks:app", "--poll-interval", "0.2", name="solo")
    wait_until(lambda: marker.exists() and marker.read_text().count("\n") == 1, message="run 1")
    # What a crash that lost the claim's commit leaves behind: the job queued, attempt undone.
    sql("UPDATE jobs SET state='queued', attempts=0, locked_by=NULL, locked_until=NULL "
        "WHERE id=%s", job_id)
    wait_until(lambda: marker.read_text().count("\n") == 2, message="run 2 by the same worker")
    wait_until(lambda: sql("SELECT state::text FROM jobs WHERE id=%s", job_id) == [("succeeded",)],
               message="succeeded")
    wait_until(lambda: "claimed again" in worker.output(), message="run 1 steps aside")
    runs = [line.split() for line in marker.read_text().splitlines()]
    assert [r[1] for r in runs] == ["1", "1"] and runs[0][2] == runs[1][2]  # same attempt, worker
    assert sql("SELECT attempts FROM jobs WHERE id=%s", job_id) == [(1,)]
    assert sql("SELECT count(*) FROM results WHERE job_id=%s", job_id) == [(1,)]
    assert worker.terminate() == 0
