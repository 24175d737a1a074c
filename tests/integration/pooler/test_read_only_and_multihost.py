"""What a failover looks like to a client: a server that turned read-only (SQLSTATE 25006), an
administrator shutting its backends down (57P01), and a multi-host URL whose first host is
gone. Each is "reconnect" (DatabaseUnavailable, the connection dropped), never a job failure
nor DataRefused; multi-host URLs pass through conninfo() and redaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from skiplock import Client, Worker
from skiplock.db import Database, NewJob, WorkerConnection, conninfo, wrap_error
from skiplock.errors import DatabaseUnavailable, DataRefused, SkiplockError
from skiplock.redact import redact_url
from tests.support.invariants import assert_invariants
from tests.support.pgserver import PgServer, free_port
from tests.support.waits import wait_until
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]
PASSWORD = "Sup3r-S3cret-pw"


def _job() -> NewJob:
    return NewJob(task="add", args={"a": 1, "b": 2}, args_json='{"a": 1, "b": 2}',
                  queue="default", priority=0, max_attempts=5)


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextlib.contextmanager
def read_only(pg: PgServer, url: str) -> Iterator[None]:
    """New connections to the database are read-only until the block ends (as on a standby or
    a fenced old primary); the open ones are terminated (57P01) so that clients reconnect."""
    name = _dbname(url)
    with pg.admin() as admin:
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        _terminate(admin, name)
    try:
        yield
    finally:
        with pg.admin() as admin:
            admin.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")
            _terminate(admin, name)


def _terminate(admin: psycopg.Connection[Any], name: str) -> None:
    """Skiplock's connections, as a failover ends them (not the test's own ``sql``). Each
    call waits until the backend has gone (its FATAL message then waits on the client's
    socket): without the wait a producer's next enqueue could race the termination, its
    one try lost on the link, and its outcome honestly unknown."""
    ended = admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid() "
                          "AND application_name LIKE 'skiplock%%'", [name]).fetchall()
    assert all(r[0] for r in ended), f"a backend outlived its termination: {ended}"


def test_a_read_only_server_is_reconnect_for_producers(pg: PgServer, database_url: str) -> None:
    db = Database(database_url, max_size=1)
    try:
        db.enqueue(_job())  # the pool holds a connection
        with read_only(pg, database_url):
            with pytest.raises(DatabaseUnavailable, match="read-only or shutting down"):
                db.enqueue(_job())
            with pytest.raises(DatabaseUnavailable, match="read-only or shutting down"):
                db.cancel_job(1)
        # The read-only connections were dropped, not handed out again: writes work at once.
        db.enqueue(_job())
        assert db.cancel_job(1) == "cancelled"
    finally:
        db.close()


def test_a_read_only_server_is_reconnect_for_worker_writes(pg: PgServer,
                                                           database_url: str) -> None:
    async def go() -> None:
        conn = WorkerConnection(database_url, schema="skiplock", connect_timeout=5,
                                statement_timeout=5, application_name="skiplock-test")
        try:
            with Database(database_url) as db:
                db.enqueue(_job())
            claimed = await conn.claim(["default"], 1, "w1", 30)
            with read_only(pg, database_url):
                for _ in range(2):  # 57P01 on the terminated link, then 25006 on a new one
                    with pytest.raises(DatabaseUnavailable) as caught:
                        await conn.complete_succeeded([(claimed[0].id, claimed[0].attempt,
                                                        "{}")], "w1")
                    assert not isinstance(caught.value, DataRefused)
                assert conn._conn is None  # dropped: the next statement connects again
            done = await conn.complete_succeeded(
                [(claimed[0].id, claimed[0].attempt, "{}")], "w1")
            assert done == {claimed[0].id: "succeeded"}
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_worker_rides_out_a_read_only_spell_without_failing_jobs(
        pg: PgServer, database_url: str, sql: Sql) -> None:
    """Jobs finish while the server is read-only: their outcomes wait and are written after,
    each job succeeded at its first attempt (no failure counted, nothing dead)."""
    worker = Worker(app, database_url, poll_interval=0.2, lease_seconds=10)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 20)
        with Client(database_url) as c:
            ids = [c.enqueue("async_sleep", {"seconds": 1.0}) for _ in range(5)]
        await asyncio.to_thread(wait_until, lambda: sql(
            "SELECT count(*) FROM jobs WHERE state = 'running'") == [(5,)], 20, "5 running")
        with read_only(pg, database_url):
            await asyncio.sleep(2.5)  # the handlers finish meanwhile
            assert worker.state.processed == 0
        await asyncio.to_thread(wait_until, lambda: sql(
            "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND attempts = 1 "
            "AND id = ANY(%s)", ids) == [(5,)], 30, "5 succeeded at the first attempt")
        assert worker.failure is None and not worker.supervisor.problems()
        worker.request_stop()
        await asyncio.wait_for(task, 30)

    asyncio.run(go())
    assert_invariants(sql, expected_jobs=5)
    assert sql("SELECT count(*) FROM jobs WHERE last_error IS NOT NULL") == [(0,)]


def _multihost(port: int) -> str:
    dead = free_port()  # nothing listens there: a primary that is gone
    return (f"postgresql://postgres:{PASSWORD}@127.0.0.1:{dead},127.0.0.1:{port}/"
            "postgres?target_session_attrs=read-write")


def test_multihost_urls_pass_through_conninfo_and_redaction(pg: PgServer) -> None:
    url = _multihost(pg.port)
    info = conninfo(url, "skiplock", 5, 30)
    assert "target_session_attrs=read-write" in info
    assert ",127.0.0.1" in info and f"{pg.port}" in info
    shown = redact_url(url)
    assert PASSWORD not in shown and "127.0.0.1" in shown
    error = wrap_error(psycopg.OperationalError(f"connection failed: {url}"), url, "enqueue")
    assert PASSWORD not in str(error)
    for bad in (f"postgresql://app:{PASSWORD}@h1:5432,h2:5433/db?target_session_attrs=bogus",
                f"postgresql://app:{PASSWORD}@h1:5432,h2:x/db"):
        with pytest.raises(SkiplockError) as caught, Database(bad, connect_timeout=1) as db:
            db.now()
        assert PASSWORD not in str(caught.value)


def test_a_multihost_url_finds_the_live_server(pg: PgServer, database_url: str) -> None:
    url = _multihost(pg.port).rsplit("/", 1)[0] + f"/{_dbname(database_url)}" \
        "?target_session_attrs=read-write"
    with Database(url) as db:
        job_id, _ = db.enqueue(_job())
        assert db.get_job(job_id) is not None

    async def claim() -> int:
        conn = WorkerConnection(url, schema="skiplock", connect_timeout=5, statement_timeout=5,
                                application_name="t")
        try:
            return len(await conn.claim(["default"], 5, "w1", 30))
        finally:
            await conn.close()

    assert asyncio.run(claim()) == 1
