"""A stats call (skiplock.inspection.queue_stats: the operator's poll, the API's queue pages,
the metrics, `skiplock stats`) reads its three statements (the counts, the paused queues, the
limits' counts) in one round trip on one checkout, under plans made once per connection (not
at every call), and answers exactly what they say one by one. Round trips are counted from
libpq's own protocol trace (tests/support/pq_trace.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import pq

from skiplock import inspection
from skiplock.db import Database
from skiplock.errors import SkiplockError
from tests.integration.test_limits_stats import Sql, seed
from tests.support.pq_trace import bursts, is_ping

T = TypeVar("T")


def traced(db: Database, path: Path, call: Callable[[], T]) -> tuple[T, list[list[str]]]:
    """(what ``call`` returned, the round trips it made but the pool's pings: the messages
    each sent) on the pool's only connection."""
    conn = db._pool.getconn()
    db._pool.putconn(conn)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        conn.pgconn.trace(fd)
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        result = call()
    finally:
        conn.pgconn.untrace()
        os.close(fd)
    return result, [b for b in bursts(path.read_text()) if not is_ping(b)]


def traced_stats(db: Database, path: Path,
                 queues: list[str]) -> tuple[list[inspection.QueueStats], list[list[str]]]:
    return traced(db, path, lambda: inspection.queue_stats(db, queues))


def one_transaction(trips: list[list[str]], statements: int) -> None:
    """One round trip, one Sync (one implicit transaction: the settings sent first hold for
    every statement after them), ``statements`` statements."""
    assert len(trips) == 1, trips
    assert (trips[0].count("Sync"), trips[0].count("Bind")) == (1, statements), trips
    assert [k for k in trips[0] if k != "Flush"][-1] == "Sync", trips  # after every statement


COUNTS = ("runnable", "scheduled", "in_flight", "stuck", "dead", "dead_last_hour", "high_retry",
          "waiting_for_worker")


def same_answers(stats: list[inspection.QueueStats], db: Database, queues: list[str]) -> None:
    """``stats`` says what the statements say one by one, each on a checkout of its own."""
    counts = {r["queue"]: r for r in db.queue_stats(queues, cap=inspection.DEFAULT_COUNT_CAP)}
    paused = {r["queue"]: r for r in db.paused_queues()}
    held = inspection.limit_counts(db.limit_stats(queues, cap=inspection.DEFAULT_COUNT_CAP))
    assert [s.queue for s in stats] == sorted(counts)
    for s in stats:
        row = counts[s.queue]
        assert [getattr(s, k) for k in COUNTS] == [row[k] for k in COUNTS], s.queue
        assert (s.oldest_runnable_age is None) == (row["oldest_runnable_age"] is None)
        assert s.oldest_runnable_age is None or (
            abs(s.oldest_runnable_age - float(row["oldest_runnable_age"])) < 5)
        assert (s.paused, s.paused_by) == (
            (True, paused[s.queue]["paused_by"]) if s.queue in paused else (False, None))
        limits = held.get(s.queue, inspection.QueueLimits(capacity=None))
        assert s.waiting_on_limit == limits.waiting
        assert s.limit_capacity == limits.capacity_for(s.runnable, s.in_flight)


@pytest.mark.parametrize("queues", [["lim", "kq", "idle"], []])
def test_a_stats_call_is_one_round_trip_with_the_same_answer(
        database_url: str, sql: Sql, tmp_path: Path, queues: list[str]) -> None:
    seed(sql)
    # paused: a queue with jobs, and one paused before its first job (listed all the same)
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('kq', 'ops: <b>\"x\"</b>'), "
        "('quiet', 'ops')")
    with Database(database_url, max_size=1) as db:
        for _ in range(6):
            inspection.queue_stats(db, queues)
        stats, trips = traced_stats(db, tmp_path / "trace.txt", queues)
        same_answers(stats, db, queues)
        with db._pool.connection() as conn:
            plans = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '-- Per%%'").fetchall()  # queue_stats, limit_stats
    one_transaction(trips, 4)  # the plan-cache setting, then the three
    assert [s.queue for s in stats] == (["idle", "kq", "lim"] if queues
                                        else ["kq", "lim", "quiet"])
    # prepared at the first stats call: each of the 7 ran the plan made once; the lone
    # calls of same_answers kept the cache's own choice (a custom plan)
    assert sorted(plans) == [(7, 1), (7, 1)], plans
    by_queue = {s.queue: s for s in stats}
    assert by_queue["kq"].paused_by == 'ops: <b>"x"</b>'
    # 8 of lim's 14 runnable wait on its concurrency_limit, 4 of kq's 5 on their key's
    # (tests/integration/test_limits_stats)
    assert (by_queue["lim"].runnable, by_queue["lim"].waiting_on_limit) == (14, 8)
    assert (by_queue["kq"].runnable, by_queue["kq"].waiting_on_limit) == (5, 4)


def test_the_operators_poll_is_the_same_round_trip(database_url: str, sql: Sql,
                                                   tmp_path: Path) -> None:
    """inspection.poll: the stats and the next schedule firing in one trip, each answer the
    same as its own call's."""
    seed(sql)
    sql("INSERT INTO schedules (name, queue, task, cron, next_fire_at, source) VALUES "
        "('s', 'lim', 'capped', '* * * * *', now() + interval '30 seconds', 'crd:ns/jq')")
    with Database(database_url, max_size=1) as db:
        for _ in range(6):
            inspection.poll(db, ["lim", "kq"])
        polled, trips = traced(db, tmp_path / "trace.txt",
                               lambda: inspection.poll(db, ["lim", "kq"]))
        same_answers(polled.stats, db, ["lim", "kq"])
        firing = db.next_firing(["lim", "kq"])
        nothing = inspection.poll(db, ["kq"]).next_fire_in
    one_transaction(trips, 5)
    assert polled.next_fire_in is not None and firing is not None
    assert 0 < firing <= polled.next_fire_in <= 30
    assert nothing is None  # no schedule on kq


def test_a_stats_call_that_times_out_says_so_and_the_next_one_works(
        database_url: str, sql: Sql) -> None:
    """The trip's counts stopped by the statement timeout (jobs locked by another session):
    a clear error naming the call, and the same pooled connection, its pipeline aborted,
    serves the next call."""
    seed(sql)
    with Database(database_url, max_size=1, statement_timeout=0.3) as db:
        for _ in range(6):
            inspection.queue_stats(db, ["lim"])
        with db._pool.connection() as conn:
            backend = conn.info.backend_pid
        hold = psycopg.connect(database_url, options="-c search_path=skiplock")
        hold.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(SkiplockError, match=r"^queue stats: .*statement timeout"):
                inspection.queue_stats(db, ["lim"])
        finally:
            hold.rollback()
            hold.close()
        assert inspection.queue_stats(db, ["lim"])[0].runnable == 14
        with db._pool.connection() as conn:
            assert conn.info.backend_pid == backend


job_rows = st.lists(st.tuples(
    st.sampled_from(["queued", "running", "succeeded", "dead"]),
    st.sampled_from([-32768, -1, 0, 0, 0, 3, 32767]),  # priorities, smallint's ends included
    st.sampled_from([-3600, -1, 60, 3600]),            # run_at: due, or later
    st.sampled_from(["a", "b"]),
), max_size=40)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=job_rows, cap=st.sampled_from([1, 2, 5, 1000]))
def test_the_counts_per_priority_add_up_to_a_plain_count(database_url: str, sql: Sql,
                                                         rows: list[Any], cap: int) -> None:
    """runnable and scheduled are counted per priority (a seek each) under one cap, and the
    oldest runnable age from the same priorities: whatever the mix, they equal the plain
    count over the table, capped, and the plain minimum."""
    sql("TRUNCATE jobs CASCADE")
    for state, priority, offset, queue in rows:
        sql("INSERT INTO jobs (queue, task, state, priority, run_at, attempts, locked_by, "
            "locked_until, started_at, finished_at) VALUES (%s, 'noop', %s, %s, "
            "now() + make_interval(secs => %s), %s, %s, %s, %s, %s)",
            queue, state, priority, offset, int(state != "queued"),
            "w:1:x" if state == "running" else None,
            "infinity" if state == "running" else None,
            "-infinity" if state != "queued" else None,
            "-infinity" if state in ("succeeded", "dead") else None)
    expected = {q: sql(
        "SELECT least(%s, count(*) FILTER (WHERE run_at <= now())), "
        "least(%s, count(*) FILTER (WHERE run_at > now())), "
        "extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now())) "
        "FROM jobs WHERE state = 'queued' AND queue = %s", cap, cap, q)[0]
        for q in ("a", "b")}
    with Database(database_url, max_size=1) as db:
        got = {s.queue: s for s in inspection.queue_stats(db, ["a", "b"], cap=cap)}
    for q, (runnable, scheduled, age) in expected.items():
        assert (got[q].runnable, got[q].scheduled) == (runnable, scheduled), (q, rows)
        assert (got[q].oldest_runnable_age is None) == (age is None), (q, rows)
        # the two statements' now() differ by how long the call took
        assert age is None or abs(float(age) - (got[q].oldest_runnable_age or 0)) < 5, (q, rows)
