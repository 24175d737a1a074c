"""A stats call (skiplock.inspection.queue_stats: the operator's poll, the API's queue pages,
the metrics, `skiplock stats`) reads its three statements (the counts, the paused queues, the
limits' counts) in one round trip on one checkout, under plans made once per connection (not
at every call), and answers exactly what they say one by one. Round trips are counted from
libpq's own protocol trace (tests/support/pq_trace.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import pq

from skiplock import inspection
from skiplock.db import Database
from skiplock.errors import SkiplockError
from tests.integration.test_limits_stats import Sql, seed
from tests.support.pq_trace import bursts, is_ping

T = TypeVar("T")


def traced(db: Database, path: Path, call: Callable[[], T]) -> tuple[T, int, int]:
    """(what ``call`` returned, round trips but the pool's pings, statements sent) on the
    pool's only connection."""
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
    trips = [b for b in bursts(path.read_text()) if not is_ping(b)]
    return result, len(trips), sum(b.count("Bind") for b in trips)


def traced_stats(db: Database, path: Path,
                 queues: list[str]) -> tuple[list[inspection.QueueStats], int, int]:
    return traced(db, path, lambda: inspection.queue_stats(db, queues))


@pytest.mark.parametrize("queues", [["lim", "kq", "idle"], []])
def test_a_stats_call_is_one_round_trip_with_the_same_answer(
        database_url: str, sql: Sql, tmp_path: Path, queues: list[str]) -> None:
    seed(sql)
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('kq', 'ops: <b>\"x\"</b>')")
    with Database(database_url, max_size=1) as db:
        for _ in range(6):  # connected, and past psycopg's prepare threshold (5)
            inspection.queue_stats(db, queues)
        stats, trips, statements = traced_stats(db, tmp_path / "trace.txt", queues)
        # what the statements answer one by one
        counts = {r["queue"]: r for r in db.queue_stats(queues, cap=inspection.DEFAULT_COUNT_CAP)}
        paused = {r["queue"]: r for r in db.paused_queues()}
        limits = db.limit_stats(queues, cap=inspection.DEFAULT_COUNT_CAP)
        with db._pool.connection() as conn:
            plans = conn.execute(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '-- Per%%'").fetchall()  # queue_stats, limit_stats
    assert (trips, statements) == (1, 4)  # the plan-cache setting, then the three
    # the stats call's own executions (past the threshold): each the plan made once
    assert len(plans) == 2 and all(generic >= 1 for generic, _ in plans), plans
    # the lone calls above kept the cache's choice: custom plans, at most one each
    assert all(custom <= 1 for _, custom in plans), plans
    by_queue = {s.queue: s for s in stats}
    assert sorted(by_queue) == sorted(counts) == (
        ["idle", "kq", "lim"] if queues else ["kq", "lim"])
    for name, s in by_queue.items():
        assert (s.runnable, s.in_flight, s.stuck) == (
            counts[name]["runnable"], counts[name]["in_flight"], counts[name]["stuck"])
        assert s.paused == (name in paused)
    assert by_queue["kq"].paused_by == 'ops: <b>"x"</b>'
    # the limits' rows are the ones read in the same trip: 8 of lim's 14 runnable wait on
    # its concurrency_limit, 4 of kq's 5 on their key's (tests/integration/test_limits_stats)
    assert {r["queue"] for r in limits} >= {"lim", "kq"}
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
        polled, trips, statements = traced(db, tmp_path / "trace.txt",
                                           lambda: inspection.poll(db, ["lim", "kq"]))
        alone = inspection.queue_stats(db, ["lim", "kq"])
        firing = db.next_firing(["lim", "kq"])
        nothing = inspection.poll(db, ["kq"]).next_fire_in
    assert (trips, statements) == (1, 5)
    assert [(s.queue, s.runnable, s.waiting_on_limit, s.in_flight) for s in polled.stats] == [
        (s.queue, s.runnable, s.waiting_on_limit, s.in_flight) for s in alone]
    assert polled.next_fire_in is not None and firing is not None
    assert 0 < firing <= polled.next_fire_in <= 30
    assert nothing is None  # no schedule on kq


def test_a_stats_call_that_times_out_says_so_and_the_next_one_works(
        database_url: str, sql: Sql) -> None:
    """The first statement of the trip stopped by the statement timeout (jobs locked by
    another session): a clear error naming the call, and the pooled connection, its pipeline
    aborted, serves the next call."""
    seed(sql)
    with Database(database_url, max_size=1, statement_timeout=0.3) as db:
        for _ in range(6):
            inspection.queue_stats(db, ["lim"])
        hold = psycopg.connect(database_url, options="-c search_path=skiplock")
        hold.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        try:
            with pytest.raises(SkiplockError, match=r"^queue stats: .*statement timeout"):
                inspection.queue_stats(db, ["lim"])
        finally:
            hold.rollback()
            hold.close()
        assert inspection.queue_stats(db, ["lim"])[0].runnable == 14
        assert db._pool.get_stats()["pool_size"] == 1
