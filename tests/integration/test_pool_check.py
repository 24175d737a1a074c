"""The producer pools lend a connection given back a moment ago without the liveness round trip
(skiplock/pool_check.py), and still find a dead one before using it.

What the server saw is read from pg_stat_activity: the pool's ping is an empty query, so a
pinged connection's last statement reads '' when it is lent, where one lent without the ping
still shows the statement its previous borrower ran. Every case runs with the sync Database
(Client, CLI, API, operator) and the AsyncDatabase (AsyncClient)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from skiplock import pool_check
from skiplock.adb import AsyncDatabase
from skiplock.db import Database
from tests.integration.test_client_support import Producer
from tests.support.pgserver import PgServer, running_server


class _Pools:
    """One Database or AsyncDatabase, its checkouts run plainly (async ones on a loop)."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.loop = asyncio.new_event_loop() if kind == "async" else None
        self.db: Any = AsyncDatabase(url) if kind == "async" else Database(url)

    def lend(self, then_run: str | None = None) -> tuple[int, str]:
        """Borrow a connection: (its backend pid, the last statement the server saw on it as
        it was lent); ``then_run`` runs on it before it goes back."""
        if self.loop is None:
            with self.db._checkout() as conn:
                seen = (conn.info.backend_pid, _last_statement(self.db.url, conn.info.backend_pid))
                if then_run:
                    conn.execute(then_run)
                return seen
        return self.loop.run_until_complete(self._alend(then_run))

    async def _alend(self, then_run: str | None) -> tuple[int, str]:
        async with self.db._checkout() as conn:
            pid = conn.info.backend_pid
            seen = (pid, await asyncio.to_thread(_last_statement, self.db.url, pid))
            if then_run:
                await conn.execute(then_run)
            return seen

    def close(self) -> None:
        if self.loop is None:
            self.db.close()
            return
        self.loop.run_until_complete(self.db.close())
        self.loop.close()


def _last_statement(url: str, pid: int) -> str:
    with psycopg.connect(url, autocommit=True) as admin:
        row = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None, f"backend {pid} is gone"
    return str(row[0])


@pytest.fixture(params=["sync", "async"])
def pools(request: pytest.FixtureRequest, database_url: str) -> Iterator[_Pools]:
    p = _Pools(request.param, database_url)
    yield p
    p.close()


def test_a_connection_given_back_a_moment_ago_is_lent_without_a_ping(pools: _Pools) -> None:
    pid, _ = pools.lend(then_run="SELECT 'borrower one'")
    again, seen = pools.lend()
    assert again == pid, "the pool should lend its one idle connection again"
    assert seen == "SELECT 'borrower one'", f"the server saw {seen!r}: a ping was sent"


def test_a_connection_idle_longer_than_the_window_is_pinged(
    pools: _Pools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_check, "FRESH_SECONDS", 0.2)
    pid, _ = pools.lend(then_run="SELECT 'borrower one'")
    time.sleep(0.3)
    again, seen = pools.lend()
    assert (again, seen) == (pid, ""), "an idle connection must get its liveness round trip"


def test_a_new_connection_and_one_that_failed_are_pinged(pools: _Pools) -> None:
    """A connection the pool just made has no given-back time; one whose statement failed
    (still fit to lend: the pool rolled it back) is lent again without one (its error was
    the statement's, not the link's)."""
    pid, first = pools.lend()
    assert first == "", "a connection never lent before should be pinged"
    with pytest.raises(psycopg.errors.DivisionByZero):
        pools.lend(then_run="SELECT 1/0")
    again, seen = pools.lend()
    assert (again, seen) == (pid, "SELECT 1/0")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_terminated_backend_is_replaced_before_it_is_used(
    kind: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Inside the window, a connection whose backend was terminated is found by its socket
    (the server's FATAL message waits on it), pinged and replaced: the enqueue succeeds on
    the first try, no retry, one row per call."""
    producer = Producer(kind, database_url)
    try:
        first = producer.enqueue("anything", {"n": 1})
        with psycopg.connect(database_url, autocommit=True) as admin:
            victims = [r[0] for r in admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchall()]
        assert victims == [True], f"expected the producer's one pooled connection: {victims}"
        with caplog.at_level(logging.INFO, logger="skiplock"):
            second = producer.enqueue("anything", {"n": 2})
        assert "retrying on a fresh connection" not in caplog.text
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT id, args->>'n' FROM skiplock.jobs ORDER BY id").fetchall()
        assert rows == [(first, "1"), (second, "2")]
    finally:
        producer.close()


@contextlib.contextmanager
def _own_server() -> Iterator[PgServer]:
    with running_server() as server:
        Database(server.url()).migrate()
        yield server


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_restarted_server_is_noticed_inside_the_window(
    kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server restarted between two enqueues, however recent the last one (a window of
    10 minutes here): its closed socket reads as readable, the ping fails, the pool connects
    again; the enqueue stores its one row without a retry."""
    monkeypatch.setattr(pool_check, "FRESH_SECONDS", 600.0)
    with _own_server() as server:
        producer = Producer(kind, server.url())
        try:
            first = producer.enqueue("anything", {"n": 1})
            server.stop("fast")
            server.start()
            with caplog.at_level(logging.INFO, logger="skiplock"):
                second = producer.enqueue("anything", {"n": 2})
            assert "retrying on a fresh connection" not in caplog.text
            with server.admin() as conn:
                rows = conn.execute(
                    "SELECT id, args->>'n' FROM skiplock.jobs ORDER BY id").fetchall()
            assert rows == [(first, "1"), (second, "2")]
        finally:
            producer.close()
