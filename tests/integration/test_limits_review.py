"""Limits: the holes a review found, each reproduced on a real Postgres (seeded with SQL, the
claim and heartbeat statements called as the worker calls them)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skiplock.app import App, JobContext
from skiplock.db import Database, WorkerConnection
from skiplock.worker.claimer import Claimer
from skiplock.worker.executor import Executor
from skiplock.worker.lease_renewer import LeaseRenewer
from skiplock.worker.state import WorkerState
from tests.support.worker_conn import with_worker_conn

Sql = Callable[..., list[tuple[Any, ...]]]


def _task(sql: Sql, name: str, limits: dict[str, Any], queue: str = "q") -> None:
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) "
        "VALUES (%s, '{}', 3, %s, %s)", name, queue, json.dumps(limits))


def _claim(database_url: str, task: str, n: int, worker: str, *, locked: bool = True,
           queues: tuple[str, ...] = ("q",)) -> list[int]:
    async def use(conn: WorkerConnection) -> list[int]:
        got = await conn.claim_limited([task], list(queues), n, worker, 30, locked=locked)
        return [j.id for j in got.jobs]
    return with_worker_conn(database_url, use)


def test_an_expired_lease_is_not_renewed_once_its_slot_was_taken(
        database_url: str, sql: Sql) -> None:
    """B1: cap 1; worker A's lease expires (not yet rescued), B takes the slot; A's heartbeat
    must not bring its lease back (2 running with cap 1)."""
    _task(sql, "one", {"concurrency_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'one', '' "
        "FROM generate_series(1, 2)")
    [a] = _claim(database_url, "one", 5, "a:1:x")
    sql("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = %s", a)
    [b] = _claim(database_url, "one", 5, "b:1:x")
    assert b != a

    async def renew(conn: WorkerConnection) -> dict[int, str | None]:
        return await conn.renew_leases([(a, 1)], "a:1:x", 30)
    assert with_worker_conn(database_url, renew) == {}
    [(live,)] = sql("SELECT count(*) FROM jobs WHERE task = 'one' AND state = 'running' "
                    "AND locked_until >= now()")
    assert live == 1


def test_a_lost_lease_stops_the_handler(database_url: str, sql: Sql) -> None:
    """B1: a refused renewal marks the run lost and its handler is told to stop (the wiring
    the worker builds: Claimer -> state.stop_lost -> Executor.stop_run)."""
    app = App(default_queue="q")
    seen: list[str] = []

    @app.task
    async def sleepy(ctx: JobContext) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            seen.append(ctx.stop_reason)

    async def go(conn: WorkerConnection) -> None:
        state = WorkerState("a:1:x", 2, 30)
        executor = Executor(state, app, max_result_bytes=1_000_000, unrunnable_grace=60,
                            report_failure=lambda name, exc: True, cancel_grace=1.0)
        claimer = Claimer(state, conn, executor, ["q"], 0.1)
        assert await claimer.run_once(1) == 1
        [run] = state.owned.values()
        sql("UPDATE jobs SET locked_until = now() - interval '1 second' WHERE id = %s",
            run.job.id)
        assert await LeaseRenewer(state, conn, 1.0).run_once() == 0
        assert run.lost and run.stop == "lease"
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
        assert seen and "lease lost" in seen[0]
        executor.shutdown()

    sql("INSERT INTO jobs (queue, task) VALUES ('q', 'sleepy')")
    with_worker_conn(database_url, go)


def test_a_task_wide_rate_is_never_claimed_unlocked(database_url: str, sql: Sql) -> None:
    """B2: far from a rate limit the unlocked pass would claim without the lock, and a peer's
    claims it cannot see (finished ones still count as starts) would push the starts past it."""
    _task(sql, "rated", {"rate_limit": 1000, "rate_period": 60})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'rated', '' "
        "FROM generate_series(1, 20)")

    async def unlocked(conn: WorkerConnection) -> tuple[int, bool]:
        got = await conn.claim_limited(["rated"], ["q"], 5, "me:1:x", 30, locked=False)
        return len(got.jobs), got.need_lock
    assert with_worker_conn(database_url, unlocked) == (0, True)
    assert len(_claim(database_url, "rated", 5, "me:1:x")) == 5


def test_keys_with_nothing_runnable_do_not_starve_a_runnable_key(
        database_url: str, sql: Sql) -> None:
    """B3: 30 keys whose jobs are delayed, in another queue or paused sort before the one key
    that can run; each claim must still get it."""
    _task(sql, "keyed", {"key": "arg:t", "key_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key, run_at) SELECT 'q', 'keyed', "
        "'a' || lpad(i::text, 3, '0'), now() + interval '1 hour' FROM generate_series(1, 10) i")
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'elsewhere', 'keyed', "
        "'b' || lpad(i::text, 3, '0') FROM generate_series(1, 10) i")
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'paused', 'keyed', "
        "'c' || lpad(i::text, 3, '0') FROM generate_series(1, 10) i")
    sql("INSERT INTO paused_queues (queue) VALUES ('paused')")
    sql("INSERT INTO jobs (queue, task, concurrency_key) VALUES ('q', 'keyed', 'z')")
    got = _claim(database_url, "keyed", 1, "me:1:x", queues=("q", "paused"))
    assert len(got) == 1
    [(key,)] = sql("SELECT concurrency_key FROM jobs WHERE id = %s", got[0])
    assert key == "z"


def test_stats_never_negative_after_a_lowered_limit(database_url: str, sql: Sql) -> None:
    """S2: 3 running, the limit lowered to 1: nothing may start, not -2."""
    _task(sql, "lowered", {"concurrency_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'lowered', '' "
        "FROM generate_series(1, 5)")
    sql("UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w:1:x', "
        "locked_until = now() + interval '1 hour', started_at = now() "
        "WHERE id IN (SELECT id FROM jobs WHERE task = 'lowered' ORDER BY id LIMIT 3)")
    with Database(database_url) as db:
        [row] = db.limit_stats(["q"])
    assert (row["startable"], row["running"]) == (0, 3)


def _rows_removed(plan: Any) -> int:
    if isinstance(plan, list):
        return sum(_rows_removed(p) for p in plan)
    if not isinstance(plan, dict):
        return 0
    own = int(plan.get("Rows Removed by Filter", 0))
    return own + sum(_rows_removed(v) for k, v in plan.items() if k in ("Plan", "Plans"))


def test_the_plain_claim_does_not_walk_a_limited_backlog(database_url: str, sql: Sql) -> None:
    """B4: 5,000 limited jobs queued ahead of 5 unlimited ones in the same queue: the plain
    claim reaches the unlimited ones without reading the limited ones (by the index, not by
    filtering each row out)."""
    from skiplock.db import Q
    _task(sql, "held", {"concurrency_limit": 1})
    sql("INSERT INTO tasks (name, params, max_attempts, queue) VALUES ('free', '{}', 3, 'q')")
    sql("INSERT INTO jobs (queue, task, concurrency_key, run_at) SELECT 'q', 'held', '', "
        "now() - interval '1 hour' FROM generate_series(1, 5000)")
    sql("INSERT INTO jobs (queue, task) SELECT 'q', 'free' FROM generate_series(1, 5)")
    sql("VACUUM ANALYZE jobs")
    params = {"queues": ["q"], "limit": 5, "worker_id": "me:1:x", "lease_seconds": 30,
              "skip_tasks": ["held"], "skip_ids": []}
    import psycopg
    with psycopg.connect(database_url, options="-c search_path=skiplock,public") as conn:
        [(plan,)] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + Q["claim"],
                                 params).fetchall()
        conn.rollback()
    assert _rows_removed(plan) < 100, json.dumps(plan)[:2000]
    [(n,)] = sql("SELECT count(*) FROM jobs WHERE task = 'held' AND state = 'queued'")
    assert n == 5000


def test_a_stalled_lock_holder_does_not_stop_other_claims(database_url: str, sql: Sql) -> None:
    """S4: another claim holds task a's lock and stalls; a locked claim of a and b neither
    waits for it nor fails: it claims b's jobs and leaves a to the holder. Only the tasks the
    unlocked pass names take the locked pass."""
    _task(sql, "a", {"concurrency_limit": 2})
    _task(sql, "b", {"concurrency_limit": 2})
    _task(sql, "wide", {"concurrency_limit": 1000})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', t, '' "
        "FROM unnest(ARRAY['a', 'a', 'b', 'b', 'b', 'wide']) AS t")
    import psycopg
    holder = psycopg.connect(database_url, options="-c search_path=skiplock,public")
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                       "current_schema() || '/limit/' || 'a', 0))")

        async def use(conn: WorkerConnection) -> tuple[list[str], tuple[str, ...]]:
            first = await conn.claim_limited(["a", "b", "wide"], ["q"], 10, "me:1:x", 30,
                                             locked=False)
            got = await asyncio.wait_for(conn.claim_limited(
                first.lock_tasks, ["q"], 10, "me:1:x", 30, locked=True), 5)
            return [j.task for j in first.jobs + got.jobs], first.lock_tasks
        tasks, lock_tasks = with_worker_conn(database_url, use)
    finally:
        holder.rollback()
        holder.close()
    assert lock_tasks == ("a", "b")
    assert sorted(tasks) == ["b", "b", "wide"]


def test_stats_count_a_per_key_rate(database_url: str, sql: Sql) -> None:
    """S2: a per-key rate of 2 a minute; key a started 2 already, b none: of 3 + 3 runnable
    only b's 2 may start now."""
    _task(sql, "keyrate", {"key": "arg:t", "rate_limit": 2, "rate_period": 60,
                           "rate_per_key": True})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'keyrate', k "
        "FROM unnest(ARRAY['a','a','a','b','b','b']) AS k")
    sql("INSERT INTO jobs (queue, task, concurrency_key, state, started_at, finished_at) "
        "SELECT 'q', 'keyrate', 'a', 'succeeded', now(), now() FROM generate_series(1, 2)")
    # the starts as the claim records them (the ledger, 0010_limit_starts.sql)
    sql("INSERT INTO limit_starts (task, concurrency_key) "
        "SELECT 'keyrate', 'a' FROM generate_series(1, 2)")
    with Database(database_url) as db:
        [row] = db.limit_stats(["q"])
    assert (row["runnable"], row["startable"]) == (6, 2)


# jsonb holds no NUL (\u0000): a producer's enqueue refuses it, so no job can carry one
_text = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**25, 10**25)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(_text, max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_text, max_size=4),
                                                                 inner, max_size=3),
    max_leaves=6)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_json, min_size=1, max_size=4))
@example(values=[-0.0, {"z": -0.0, "a": 1e20}])  # jsonb has no negative zero
def test_adoption_gives_the_producers_key(database_url: str, sql: Sql,
                                          values: list[Any]) -> None:
    """S6: a job enqueued without its key gets, from the workers, the key its producer would
    have given it (key_for), whatever the value: 1e20, dict key order, non-ASCII, nesting;
    one too long for a key ends dead with why instead of a truncated key."""
    from skiplock.limits import KeyProblem, key_for
    limits = {"key": "arg:t", "key_limit": 1}
    sql("DELETE FROM jobs")
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) "
        "VALUES ('adopted', '{}', 3, 'q', %s) ON CONFLICT (name) DO NOTHING",
        json.dumps(limits))
    want: dict[int, str | None] = {}
    for v in [*values, "x" * 201]:
        [(job_id,)] = sql("INSERT INTO jobs (queue, task, args) VALUES ('q', 'adopted', %s) "
                          "RETURNING id", json.dumps({"t": v}))
        try:
            want[int(job_id)] = key_for("adopted", limits, {"t": v})
        except KeyProblem:
            want[int(job_id)] = None

    async def adopt(conn: WorkerConnection) -> tuple[int, int]:
        return await conn.adopt_unkeyed({"adopted": limits}, ["q"])
    with_worker_conn(database_url, adopt)
    got = {int(i): (k if s == "queued" else None)
           for i, k, s in sql("SELECT id, concurrency_key, state::text FROM jobs")}
    assert got == want


def test_jobs_of_a_task_no_longer_limited_are_claimed_again(
        database_url: str, sql: Sql) -> None:
    """B4's other side: the plain claim takes only jobs without a key, so when a task's limit
    is removed its queued (keyed) jobs lose their keys and are claimed by it."""
    _task(sql, "was", {"concurrency_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'was', '' "
        "FROM generate_series(1, 3)")
    sql("UPDATE tasks SET limits = NULL WHERE name = 'was'")

    async def go(conn: WorkerConnection) -> tuple[int, int, int]:
        before = await conn.claim(["q"], 10, "me:1:x", 30)
        freed = await conn.unkey_unlimited(["was"])
        after = await conn.claim(["q"], 10, "me:1:x", 30)
        return len(before), freed, len(after)
    assert with_worker_conn(database_url, go) == (0, 3, 3)
