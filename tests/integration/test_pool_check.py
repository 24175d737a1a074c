"""The producer pools lend a connection given back a moment ago to an insert without the liveness
round trip (skiplock/pool_check.py), still find a dead one before using it, and ping before
every other checkout.

What the server saw is read from pg_stat_activity: the pool's ping is an empty query, so a
pinged connection's last statement reads '' when it is lent, where one lent without the ping
still shows the statement its previous borrower ran. Every case runs with the sync Database
(Client, CLI, API, operator) and the AsyncDatabase (AsyncClient)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import struct
import threading
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

    def lend(self, then_run: str | None = None, *, inserting: bool = True) -> tuple[int, str]:
        """Borrow a connection, as an insert path does (or not): (its backend pid, the last
        statement the server saw on it as it was lent); ``then_run`` runs on it before it
        goes back."""
        if self.loop is None:
            with (pool_check.insert_checkout() if inserting else contextlib.nullcontext()), \
                    self.db._checkout() as conn:
                seen = (conn.info.backend_pid, _last_statement(self.db.url, conn.info.backend_pid))
                if then_run:
                    conn.execute(then_run)
                return seen
        return self.loop.run_until_complete(self._alend(then_run, inserting))

    async def _alend(self, then_run: str | None, inserting: bool) -> tuple[int, str]:
        async with (self.db._inserting_checkout() if inserting else self.db._checkout()) as conn:
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


def test_every_other_checkout_keeps_its_ping(pools: _Pools) -> None:
    """A read (or a cancel, a bulk action) has no retry of its own: its checkout is pinged
    however fresh the connection, so the pool replaces a dead one before the caller sees it."""
    pid, _ = pools.lend(then_run="SELECT 'borrower one'")
    again, seen = pools.lend(inserting=False)
    assert (again, seen) == (pid, "")


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
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'").fetchall()]
        assert victims == [True], f"expected the producer's one pooled connection: {victims}"
        with caplog.at_level(logging.INFO, logger="skiplock"):
            second = producer.enqueue("anything", {"n": 2})
        assert "on a fresh connection" not in caplog.text  # neither the insert's nor one trip's
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
            assert "on a fresh connection" not in caplog.text  # neither the insert's nor one trip's
            with server.admin() as conn:
                rows = conn.execute(
                    "SELECT id, args->>'n' FROM skiplock.jobs ORDER BY id").fetchall()
            assert rows == [(first, "1"), (second, "2")]
        finally:
            producer.close()


class _VanishingProxy:
    """A TCP relay to the server whose existing links can be made to die silently, as in a
    failover that moves an address: nothing arrives on the client's socket until it sends,
    and then a reset. Links made after that relay normally."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.generation = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client, self.generation),
                             daemon=True).start()

    def _relay(self, client: socket.socket, generation: int) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream))
        try:
            while self.generation == generation:
                ready, _, _ = select.select([client, server], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (server if sock is client else client).sendall(data)
            server.close()  # the old peer is gone; the client hears of it only when it sends
            select.select([client], [], [], 30)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            client.close()
            server.close()

    def vanish(self) -> None:
        self.generation += 1
        time.sleep(0.2)  # every relay has seen it

    def close(self) -> None:
        self.listener.close()


def _fill_pool(producer: Producer, n: int) -> None:
    """n connections in the producer's pool, each given back just now."""
    db = producer.client.db
    if producer.kind == "sync":
        with contextlib.ExitStack() as stack:
            for _ in range(n):
                stack.enter_context(db._checkout())
        return

    async def fill() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(n):
                await stack.enter_async_context(db._checkout())

    producer.run(fill())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_silently_dead_connection_costs_an_insert_one_retry_and_a_read_nothing(
    kind: str, database_url: str, pg: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The one case the socket cannot show: the insert, lent the dead connection without a
    ping, fails and is sent again once on a fresh connection (one row); a read
    after the same failover gets its ping, so the pool replaces the connection unseen."""
    proxy = _VanishingProxy(pg.port)
    url = database_url.replace(f":{pg.port}/", f":{proxy.port}/")
    producer = Producer(kind, url)
    try:
        first = producer.enqueue("anything", {"n": 1})
        _fill_pool(producer, 3)  # the retry's next idle connection is as dead as the first
        proxy.vanish()
        with caplog.at_level(logging.INFO, logger="skiplock"):
            second = producer.enqueue("anything", {"n": 2})
        # sent again once, with the same id (the job has no unique_key: one round trip)
        assert caplog.text.count("sending it again with the same id on a fresh connection") == 1
        proxy.vanish()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="skiplock"):
            job = producer.run(producer.client.get_job(first))
        assert job["id"] == first and caplog.text == ""
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT id, args->>'n' FROM skiplock.jobs ORDER BY id").fetchall()
        assert rows == [(first, "1"), (second, "2")]
    finally:
        producer.close()
        proxy.close()
