"""Producers, the worker and the API through a real PgBouncer in transaction pooling mode with
nothing configured beyond ``pool_mode = transaction`` (PgBouncer 1.18: no protocol-level
prepared statements, no track_extra_parameters), LISTEN on a direct URL or poll-only."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from skiplock import Client, Worker, inspection
from skiplock.db import Database, NewJob, QueryScope, WorkerConnection, query_scope
from skiplock.errors import SkiplockError
from tests.conftest import WorkerProcess
from tests.integration.test_limits_stats import seed
from tests.integration.test_stats_round_trips import (
    one_transaction,
    same_answers,
    traced_stats,
)
from tests.support.invariants import assert_invariants
from tests.support.pgbouncer import PgBouncer
from tests.support.pq_trace import bursts
from tests.support.waits import wait_until
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]


def _job(i: int = 0, **kw: Any) -> NewJob:
    args = {"a": i, "b": 1}
    return NewJob(task="add", args=args, args_json=f'{{"a": {i}, "b": 1}}', queue="default",
                  priority=0, max_attempts=5, **kw)


def test_a_pooler_is_found_out_and_every_insert_path_works(pooled_url: str, sql: Sql) -> None:
    """No flag: the first connection's refused startup options say it is a pooler. Two
    Databases interleave on more than one server connection, past the prepare threshold: a
    server-side prepared statement would be missing on the other server connection."""
    dbs = [Database(pooled_url), Database(pooled_url)]
    try:
        errors: list[BaseException] = []

        def produce(db: Database, base: int) -> None:
            try:
                for i in range(40):
                    db.enqueue(_job(base + i))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(d, 1000 * n))
                   for n, d in enumerate(dbs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert all(d.pooler for d in dbs)
        db = dbs[0]
        assert db.enqueue_copy([_job(i) for i in range(500)]) == 500  # COPY in a transaction
        assert len(db.enqueue_unnest([_job(i, unique_key=f"k{i}") for i in range(50)])) == 50
        batch = db.enqueue_batch([_job(i, unique_key=f"b{i}") for i in range(5)])
        assert [created for _, created in batch] == [True] * 5
        assert db.enqueue(_job(0, unique_key="b0"))[1] is False  # the key's job, replayed
        assert sql("SELECT count(*) FROM jobs") == [(80 + 500 + 50 + 5,)]
        assert db.get_job(batch[0][0]) is not None
    finally:
        for d in dbs:
            d.close()


@pytest.mark.parametrize("flag", [False, True])
def test_no_statement_is_prepared_on_a_server_connection(pooled_url: str, flag: bool) -> None:
    """Past psycopg's prepare threshold, then on another server connection: another client
    holds, in a transaction, the one the pooler used so far (it hands out the most recently
    used). A statement prepared on the first would be missing there."""
    db = Database(pooled_url, pooler=flag)
    try:
        for i in range(8):
            db.enqueue(_job(i))
            db.get_job(1)
        with psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None) as hog:
            hog.execute("BEGIN")
            hog.execute("SELECT 1")
            for i in range(3):
                db.enqueue(_job(i))
                db.get_job(1)
            hog.execute("ROLLBACK")
    finally:
        db.close()


def test_the_statement_timeout_holds_through_the_pooler(pooled_url: str, database_url: str,
                                                         sql: Sql) -> None:
    """The timeout was a startup option; behind the pooler it is set in each transaction. A
    row lock held elsewhere makes the statement wait: it must end at the timeout."""
    db = Database(pooled_url, statement_timeout=0.3, pooler=True)
    job_id, _ = db.enqueue(_job())
    with psycopg.connect(database_url, options="-c search_path=skiplock") as holder:
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", [job_id])
        started = time.monotonic()
        with pytest.raises(SkiplockError, match="statement timeout"):
            db.cancel_job(job_id)
        waited = time.monotonic() - started
    db.close()
    assert waited < 10, f"waited {waited:.1f}s for a lock: no statement timeout"

    async def write() -> None:
        conn = WorkerConnection(pooled_url, schema="skiplock", connect_timeout=5,
                                statement_timeout=0.3, application_name="t", pooler=True)
        try:
            claimed = await conn.claim(["default"], 1, "w1", 30)
            assert [j.id for j in claimed] == [job_id]
            with psycopg.connect(database_url, options="-c search_path=skiplock") as holder:
                holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", [job_id])
                with pytest.raises(SkiplockError, match="statement timeout"):
                    await conn.release([(job_id, claimed[0].attempt)], "w1")
        finally:
            await conn.close()

    asyncio.run(write())


def test_settings_stay_in_their_transaction(bouncer: PgBouncer, pooled_url: str) -> None:
    """Nothing Skiplock sets leaks to the next client of the server connection (a session SET
    would: the pooler hands the same server connection to whoever comes next)."""
    db = Database(pooled_url, statement_timeout=0.3, pooler=True)
    db.now()
    db.close()
    with psycopg.connect(pooled_url, autocommit=True, prepare_threshold=None) as other:
        row = other.execute("SELECT current_setting('statement_timeout'), "
                            "current_setting('search_path')").fetchone()
    assert row == ("0", '"$user", public')


def test_the_read_pool_stays_read_only_through_the_pooler(pooled_url: str) -> None:
    db = Database(pooled_url, read_pool_size=1, pooler=True)
    job_id, _ = db.enqueue(_job())
    try:
        with query_scope(QueryScope(read_only=True)):
            assert db.get_job(job_id) is not None
            with pytest.raises(SkiplockError, match="read-only transaction") as caught:
                db.cancel_job(job_id)
        assert type(caught.value) is SkiplockError  # a bug to report, not "reconnect"
    finally:
        db.close()


def _enqueue_round_trips(url: str, tmp: Any, *, unique_key: str | None = None,
                         **kw: Any) -> int:
    db = Database(url, max_size=1, **kw)  # one connection: the traced one
    try:
        db.enqueue(_job())  # connected, warm, a block of ids taken
        path = tmp / f"trace-{kw}-{unique_key}.txt"
        with open(path, "w") as out:
            with db._pool.connection() as conn:
                conn.pgconn.trace(out.fileno())
            db.enqueue(_job(unique_key=unique_key))
            with db._pool.connection() as conn:
                conn.pgconn.untrace()
        # less the pool's check (an empty query) of the checkout that stopped the trace
        return len(bursts(path.read_text())) - 1
    finally:
        db.close()


def test_an_enqueue_costs_as_many_round_trips_through_the_pooler_as_direct(
        database_url: str, pooled_url: str, tmp_path: Any) -> None:
    """The insert alone, autocommit, in one (a job without a unique_key, its id taken ahead:
    skiplock/job_ids.py; the pool's check of a connection given back a moment ago is skipped
    for an insert: skiplock/pool_check.py), and the pooler's settings travel with the insert,
    adding none. A keyed job: BEGIN with the insert and its read, then COMMIT: two."""
    assert _enqueue_round_trips(database_url, tmp_path) == 1
    assert _enqueue_round_trips(pooled_url, tmp_path, pooler=True) == 1
    assert _enqueue_round_trips(database_url, tmp_path, unique_key="k-direct") == 2
    assert _enqueue_round_trips(pooled_url, tmp_path, pooler=True, unique_key="k-pooled") == 2


def test_a_stats_call_through_the_pooler_is_one_round_trip(pooled_url: str, sql: Sql,
                                                             tmp_path: Any) -> None:
    """The settings, the counts, the paused queues and the limits' counts with one Sync: one
    transaction of the pooler's, so the settings hold for all three statements."""
    seed(sql)
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('lim', 'ops')")
    with Database(pooled_url, max_size=1, pooler=True, statement_timeout=5) as db:
        inspection.queue_stats(db, ["lim", "kq"])
        stats, trips = traced_stats(db, tmp_path / "trace.txt", ["lim", "kq"])
        same_answers(stats, db, ["lim", "kq"])
    one_transaction(trips, 4)  # the settings, then the three (no plan-cache setting here)
    kq, lim = stats  # by queue name
    assert (lim.queue, lim.paused, lim.runnable, lim.waiting_on_limit) == ("lim", True, 14, 8)
    assert (kq.queue, kq.paused, kq.runnable, kq.waiting_on_limit) == ("kq", False, 5, 4)


def _run_worker(worker: Worker, body: Callable[[], Any], timeout: float = 60) -> Any:
    async def go() -> Any:
        task = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.ready.wait(), 20)
            return await asyncio.wait_for(asyncio.to_thread(body), timeout)
        finally:
            worker.request_stop()
            await asyncio.wait_for(task, 30)

    return asyncio.run(go())


def _finished(sql: Sql, ids: list[int]) -> Callable[[], bool]:
    return lambda: sql("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state = 'succeeded'",
                       ids)[0][0] == len(ids)


@pytest.mark.parametrize("listen", ["direct", "poll-only"])
def test_the_worker_runs_jobs_and_cancels_through_the_pooler(
        pooled_url: str, database_url: str, sql: Sql, listen: str,
        caplog: pytest.LogCaptureFixture) -> None:
    urls = {"listen": database_url} if listen == "direct" else None
    worker = Worker(app, pooled_url, pooler=True, connection_urls=urls, poll_interval=0.2,
                    lease_seconds=5)
    caplog.set_level(logging.INFO, "skiplock")

    def body() -> None:
        with Client(pooled_url) as c:
            ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(30)]
            ids += [c.enqueue("async_sleep", {"seconds": 0.01}) for _ in range(5)]
            wait_until(_finished(sql, ids), 30, "jobs done through the pooler")
            long = c.enqueue("async_sleep", {"seconds": 60})
            wait_until(lambda: sql("SELECT state::text FROM jobs WHERE id = %s", long)
                       == [("running",)], 20, "the long job running")
            c.db.cancel_job(long)
            wait_until(lambda: sql("SELECT state::text FROM jobs WHERE id = %s", long)
                       == [("cancelled",)], 20, "the long job cancelled")
            assert worker.state.listening is (listen == "direct")

    _run_worker(worker, body)
    assert_invariants(sql)
    said = [r.getMessage() for r in caplog.records if "LISTEN is impossible" in r.getMessage()]
    if listen == "direct":
        assert said == []
    else:  # one clear line, not an error loop
        assert len(said) == 1, said
        assert "SKIPLOCK_LISTEN_URL" in said[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_listen_url_that_is_a_pooler_degrades_to_polling(
        pooled_url: str, sql: Sql, caplog: pytest.LogCaptureFixture) -> None:
    """A pooler given as the LISTEN URL: found out on connecting, one line, then polling."""
    worker = Worker(app, pooled_url, pooler=True, connection_urls={"listen": pooled_url},
                    poll_interval=0.2)
    caplog.set_level(logging.INFO, "skiplock")

    def body() -> None:
        with Client(pooled_url) as c:
            ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(5)]
            wait_until(_finished(sql, ids), 30, "jobs done by polling")
            # a few poll rounds more, one job each: long enough for an error loop to show
            for i in range(5):
                wait_until(_finished(sql, [c.enqueue("add", {"a": i, "b": 2})]), 30,
                           "a job done by polling")
            assert worker.state.listening is False

    _run_worker(worker, body)
    said = [r for r in caplog.records if "LISTEN is impossible" in r.getMessage()]
    assert len(said) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_worker_process_finds_the_pooler_on_its_own(
        pooled_url: str, database_url: str, sql: Sql) -> None:
    """`skiplock worker` given only the pooler's URL: no setting at all."""
    proc = WorkerProcess(pooled_url, "tests.tasks:app", "--poll-interval", "0.2")
    try:
        with Client(pooled_url) as c:
            for i in range(10):
                c.enqueue("add", {"a": i, "b": 1})
            c.enqueue_many({"task": "add", "args": {"a": i, "b": 2}} for i in range(200))
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
                   == [(210,)], 60, "210 jobs done")
        assert proc.terminate() == 0
        out = proc.output()
        assert out.count("LISTEN is impossible") == 1, out
        assert "Traceback" not in out, out
    finally:
        proc.close()
    assert_invariants(sql, expected_jobs=210)


@pytest.fixture
def pooled_api(pooled_url: str, sql: Sql) -> Iterator[Any]:
    from pydantic import SecretStr

    from skiplock.api.config import ApiSettings
    from tests.integration.api.conftest import AUTH, TOKEN, register_tasks, settings
    from tests.integration.api.server import client, serve

    register_tasks(sql)
    with serve(settings(pooled_url), ApiSettings(token=SecretStr(TOKEN))) as url, \
            client(url) as c:
        c.headers.update(AUTH)
        yield c


def test_the_api_enqueues_and_reads_through_the_pooler(pooled_api: Any, sql: Sql) -> None:
    for i in range(8):  # past psycopg's prepare threshold (5)
        r = pooled_api.post("/v1/jobs", json={"task": "add", "args": {"a": i, "b": 1}})
        assert r.status_code in (200, 201), r.text
    job_id = r.json()["id"]
    got = pooled_api.get(f"/v1/jobs/{job_id}")
    assert got.status_code == 200, got.text
    assert sql("SELECT count(*) FROM jobs") == [(8,)]
    assert os.environ.get("SKIPLOCK_POOLER") is None  # found out, not configured


def test_migrate_through_the_pooler_is_refused_with_what_to_do(pooled_url: str) -> None:
    from skiplock.errors import ConfigurationError

    with Database(pooled_url, pooler=True) as db, \
            pytest.raises(ConfigurationError, match="direct connection to PostgreSQL"):
        db.migrate()


def test_settings_turn_pooler_mode_and_the_listen_url_on(pooled_url: str,
                                                        database_url: str) -> None:
    from skiplock.settings import Settings
    from skiplock.worker.core import _pooler_settings

    s = Settings(database_url=pooled_url, pooler="transaction", listen_url=database_url)
    with Database.from_settings(s, application_name="t") as db:
        assert db.pooler is True
        job_id, created = db.enqueue(_job())
        assert job_id > 0 and created
    assert _pooler_settings(s) == {"pooler": True, "connection_urls": {"listen": database_url}}
    assert "listen_url" not in repr(s)  # a secret, like database_url
    with pytest.raises(ValueError, match="pooler"):
        Settings(pooler="session")  # type: ignore[arg-type]
