"""A job without a unique_key is enqueued in one round trip (the INSERT alone, autocommit,
under an id taken ahead: skiplock/job_ids.py), by Client and AsyncClient alike; the
block of ids rides on an enqueue's own trip; the ids stay unique across producers; a sequence
set back is refused, saying how to fix it, and stores nothing.

Round trips are counted from libpq's own protocol trace of the pooled connection
(tests/support/pq_trace.py). The pool's liveness ping (an empty simple Query) is left out: it
is skipped for a connection given back less than 1 s ago (skiplock/pool_check.py), which a
slow machine may not manage every time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import pq

from skiplock.errors import SkiplockError
from skiplock.job_ids import RESERVE
from tests.integration.test_client_support import Producer
from tests.support.pq_trace import bursts, is_ping


def _only_connection(producer: Producer) -> Any:
    """The one connection the producer's pool holds (sequential calls reuse it)."""
    pool = producer.client.db._pool
    assert pool.get_stats()["pool_size"] == 1
    if producer.kind == "sync":
        conn = pool.getconn()
        pool.putconn(conn)
        return conn

    async def peek() -> Any:
        conn = await pool.getconn()
        await pool.putconn(conn)
        return conn

    return producer.run(peek())


@contextlib.contextmanager
def _traced(producer: Producer, path: Path) -> Iterator[None]:
    conn = _only_connection(producer)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        conn.pgconn.trace(fd)
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        yield
    finally:
        conn.pgconn.untrace()
        os.close(fd)


def _sent(path: Path) -> tuple[int, int]:
    """(round trips but the pool's pings, statements) the client sent, from a libpq trace."""
    trips = [b for b in bursts(path.read_text()) if not is_ping(b)]
    return len(trips), sum(b.count("Bind") for b in trips)


def test_an_unkeyed_enqueue_is_one_round_trip(producer: Producer, sql, tmp_path: Path) -> None:
    for _ in range(6):  # a pooled connection, a block of ids, the statement prepared (psycopg
        producer.enqueue("add", {"a": 0, "b": 0})  # does so on its 5th run: one Parse trip)
    trace = tmp_path / "trace.txt"
    n = RESERVE + 8  # the block runs out once on the way: its refill rides on an enqueue
    with _traced(producer, trace):
        ids = [producer.enqueue("add", {"a": i, "b": 1}) for i in range(n)]
    trips, statements = _sent(trace)
    assert trips == n, f"{trips} round trips for {n} enqueues"
    assert statements == n + 1  # the INSERT alone (no BEGIN, no COMMIT); the refill once
    with _traced(producer, trace):
        keyed = producer.enqueue("add", {"a": 1, "b": 1}, unique_key="k-1")
    assert _sent(trace)[0] == 2  # a keyed job still waits for its INSERT before COMMIT
    assert len(set(ids)) == n
    rows = sql("SELECT id, (args->>'a')::int FROM jobs WHERE (args->>'b')::int = 1 "
               "AND unique_key IS NULL ORDER BY id")
    assert rows == [(job, i) for i, job in enumerate(ids)]
    assert sql("SELECT count(*) FROM jobs WHERE id = %s", keyed) == [(1,)]


def test_two_producers_ids_never_collide(database_url: str, sql) -> None:
    """Interleaved enqueues of a Client and an AsyncClient, each holding its own block (and a
    producer of an older version, whose ids come from the same sequence)."""
    a, b = Producer("sync", database_url), Producer("async", database_url)
    try:
        ids = []
        for i in range(3 * RESERVE):
            ids.append(a.enqueue("add", {"a": i, "b": 0}))
            ids.append(b.enqueue("add", {"a": i, "b": 0}))
            if i % 7 == 0:  # the statement an older producer runs: the column's default id
                (row,) = sql("INSERT INTO jobs (task, args) VALUES ('add', '{\"a\": 0}') "
                             "RETURNING id")
                ids.append(int(row[0]))
        assert len(set(ids)) == len(ids)
        assert sql("SELECT count(*) FROM jobs") == [(len(ids),)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_sequence_set_back_is_refused_and_stores_nothing(database_url: str, sql,
                                                           kind: str) -> None:
    """After setval (a restore, a careless fix) the sequence hands out ids that hold jobs: the
    enqueue under such an id, of the same job or another, is refused with the way out (set
    the sequence past the largest id), nothing is stored or overwritten, and once the fix is
    made the same producer enqueues again (the refusal dropped its block)."""
    first = Producer(kind, database_url)
    try:
        one = first.enqueue("add", {"a": 1, "b": 2})
        two = first.enqueue("add", {"a": 3, "b": 4})
        assert two == one + 1
    finally:
        first.close()
    sql("SELECT setval('skiplock.jobs_id_seq', %s, false)", one)  # the next nextval is `one`
    again = Producer(kind, database_url)
    try:
        with pytest.raises(SkiplockError, match=rf"job id {one}\b.*jobs_id_seq.*setval"):
            again.enqueue("add", {"a": 1, "b": 2})  # the very job `one` holds
        sql("SELECT setval('skiplock.jobs_id_seq', %s, false)", two)  # set back once more
        with pytest.raises(SkiplockError, match=rf"job id {two}\b.*set back"):
            again.enqueue("add", {"a": 9, "b": 9})  # another job
        assert sql("SELECT id, args FROM jobs ORDER BY id") == [
            (one, {"a": 1, "b": 2}), (two, {"a": 3, "b": 4})]
        sql("SELECT setval('skiplock.jobs_id_seq', (SELECT max(id) FROM skiplock.jobs))")
        # the message's fix works at once: the refusal dropped the producer's stale block
        assert again.enqueue("add", {"a": 5, "b": 6}) == two + 1
    finally:
        again.close()
