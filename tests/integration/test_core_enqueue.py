"""Client-only producer checks: bulk from a generator, the caller's search_path, catalogue
messages, secrets in errors, retry/cancel rules. Enqueue defaults, unique keys, database time
and bad jobs are test_client_parity's (run with Client and AsyncClient)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from skiplock import (
    Client,
    DatabaseUnavailable,
    InvalidArguments,
    UnknownTask,
    Worker,
)
from skiplock.db import Database
from tests.support.pgserver import free_port
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]


def register_catalogue(database_url: str) -> None:
    """Start a worker just long enough to record its task catalogue."""
    w = Worker(app, database_url)

    async def go() -> None:
        await w._register()
        await w._claim_db.close()
        await w._write_db.close()

    asyncio.run(go())


def test_transactional_enqueue_rolls_back_with_the_caller(database_url: str, sql: Sql) -> None:
    with Client(database_url) as c, psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE public.orders (id int)")
        conn.commit()
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO public.orders VALUES (1)")
            c.enqueue("add", {"a": 1, "b": 2}, connection=conn)
            # the caller's search_path is untouched by our statement
            assert conn.execute("SHOW search_path").fetchone()[0] == '"$user", public'  # type: ignore[index]
        assert sql("SELECT count(*) FROM jobs") == [(0,)]
        with conn.transaction():
            conn.execute("INSERT INTO public.orders VALUES (2)")
            kept = c.enqueue("add", {"a": 1, "b": 2}, connection=conn)
    assert sql("SELECT id FROM jobs") == [(kept,)]


def test_enqueue_many_copy_and_unnest(database_url: str, sql: Sql) -> None:
    with Client(database_url) as c:
        assert (
            c.enqueue_many({"task": "add", "args": {"a": i, "b": 1}} for i in range(1000)) == 1000
        )
        later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        n = c.enqueue_many(
            [
                {"task": "add", "args": {"a": 1, "b": 1}, "unique_key": "k1"},
                {"task": "add", "args": {"a": 1, "b": 1}, "unique_key": "k1"},
                {"task": "add", "args": {"a": 2, "b": 2}, "run_at": later},
            ]
        )
    assert n == 2
    assert sql("SELECT count(*) FROM jobs") == [(1002,)]


def test_catalogue_rejects_unknown_task_and_bad_args_nothing_inserted(
    database_url: str, sql: Sql
) -> None:
    register_catalogue(database_url)
    with Client(database_url) as c:
        with pytest.raises(UnknownTask, match="unknown task 'ad'"):
            c.enqueue("ad", {"a": 1, "b": 2})
        with pytest.raises(InvalidArguments, match="missing required 'b'"):
            c.enqueue("add", {"a": 1})
        with pytest.raises(InvalidArguments, match="'a' must be integer, got string"):
            c.enqueue("add", {"a": "x", "b": 1})
        with pytest.raises(UnknownTask, match=r"job #1: unknown task .nope."):
            c.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}}, {"task": "nope"}])
        assert sql("SELECT count(*) FROM jobs") == [(0,)]
        # the catalogue also supplies the task's max_attempts
        job_id = c.enqueue("poison", {})
    assert sql("SELECT max_attempts FROM jobs WHERE id = %s", job_id) == [(4,)]


def test_unreachable_database_fails_fast_without_secrets() -> None:
    url = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/jobs"
    started = time.monotonic()
    with Client(url, connect_timeout=2) as c, pytest.raises(DatabaseUnavailable) as err:
        c.enqueue("add", {"a": 1, "b": 2}, validate=False)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"enqueue took {elapsed:.1f}s against a closed port"
    message = str(err.value)
    assert "hunter2" not in message
    assert "app@127.0.0.1" in message and "unreachable" in message


def test_retry_and_cancel_rules(db: Database, database_url: str) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("add", {"a": 1, "b": 2})
        assert c.retry(job_id) is False  # queued jobs are not retried
        assert c.cancel(job_id, "no longer needed") == "cancelled"
        assert db.job_state(job_id) == "cancelled"
        assert c.cancel(job_id) is None  # finished: nothing to do
        row = c.get_job(job_id)
        assert row is not None and row["cancel_reason"].endswith("(no longer needed)")
        assert c.retry(job_id) is True
        assert db.job_state(job_id) == "queued"
        row = c.get_job(job_id)  # a retry forgets the old cancel
        assert row is not None
        assert (row["cancel_requested_at"], row["cancel_reason"]) == (None, None)
