"""Producer (API) <-> Postgres: the database killed mid-request, down, and slow (server side
and on the wire). Enqueue fails fast with a clear error within its bounded timeout, never hangs,
never inserts twice, and the same Client recovers on its own when the database is back."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from skiplock import Client
from skiplock.errors import DatabaseUnavailable, EnqueueOutcomeUnknown, SkiplockError
from skiplock.settings import Settings
from tests.support.chaos import wait_for

CONNECT_TIMEOUT = 2.0


def _client(url: str, **settings: Any) -> Client:
    s = Settings(database_url=url, connect_timeout=CONNECT_TIMEOUT, **settings)
    return Client(settings=s, validate=False)


class _Call(threading.Thread):
    """Run one enqueue in the background; record its outcome and how long it took."""

    def __init__(self, client: Client, *args: Any, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.args, self.kw = client, args, kw
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.result = self.client.enqueue(*self.args, **self.kw)
        except BaseException as exc:
            self.error = exc
        self.elapsed = time.monotonic() - started


def _blocked_on_lock(sql) -> bool:
    return bool(sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'skiplock-client' AND wait_event_type = 'Lock'")[0][0])


@pytest.mark.parametrize("how", ["kill9", "immediate"])
def test_database_killed_mid_enqueue(database_url, pg, rsql, how: str) -> None:
    client = _client(database_url)
    assert client.enqueue("add", {"a": 0, "b": 0}) > 0  # a pooled connection exists
    # Hold the table so the next INSERT is in the server, mid-request, when Postgres dies.
    hold = psycopg.connect(database_url, options="-c search_path=skiplock")
    hold.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    call = _Call(client, "add", {"a": 1, "b": 2}, unique_key="order-42")
    call.start()
    wait_for(lambda: _blocked_on_lock(rsql), 10, "the enqueue to wait inside the server")
    if how == "kill9":
        pg.kill9()
    else:
        pg.stop("immediate")
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "enqueue hung after the database died"
    assert isinstance(call.error, DatabaseUnavailable), call.error
    msg = str(call.error)
    assert "enqueue 'add'" in msg and "unreachable" in msg, msg
    assert "postgres@127.0.0.1" in msg  # where, without any password
    assert call.elapsed < CONNECT_TIMEOUT * 2 + 3, call.elapsed
    hold.close()

    # While it is down: fail fast, every time, with the same clear error.
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        client.enqueue("add", {"a": 1, "b": 2}, unique_key="order-42")
    assert time.monotonic() - started < CONNECT_TIMEOUT * 2 + 3

    pg.start()
    # The same client recovers on its own; the caller's retry with the same key inserts once.
    job = wait_for(lambda: _try(client, "add", {"a": 1, "b": 2}, unique_key="order-42"), 30,
                   "the client to recover")
    again = client.enqueue("add", {"a": 1, "b": 2}, unique_key="order-42")
    assert again == job
    assert rsql("SELECT count(*) FROM jobs WHERE unique_key = 'order-42'") == [(1,)]
    assert rsql("SELECT count(*) FROM jobs") == [(2,)]
    client.close()


def _try(client: Client, *args: Any, **kw: Any) -> int | None:
    try:
        return client.enqueue(*args, **kw)
    except DatabaseUnavailable:
        return None


def test_enqueue_when_database_is_down_fails_fast_then_recovers(database_url, pg, rsql) -> None:
    client = _client(database_url)
    client.enqueue("add", {"a": 0, "b": 0})
    pg.stop("fast")
    for _ in range(3):  # never hangs, never half-succeeds
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"enqueue 'add'.*unreachable"):
            client.enqueue("add", {"a": 1, "b": 2})
        assert time.monotonic() - started < CONNECT_TIMEOUT + 2
    pg.start()
    wait_for(lambda: _try(client, "add", {"a": 1, "b": 2}), 30, "the client to recover")
    assert rsql("SELECT count(*) FROM jobs") == [(2,)]
    client.close()


def test_slow_database_hits_the_statement_timeout(database_url, sql) -> None:
    """Server-side slowness (a lock held by a long transaction): the enqueue gives up within
    its statement timeout (tried twice, nothing committed), with a clear error; no row appears."""
    client = _client(database_url, statement_timeout=1.0)
    hold = psycopg.connect(database_url, options="-c search_path=skiplock")
    hold.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    started = time.monotonic()
    with pytest.raises(SkiplockError, match=r"enqueue 'add'.*statement timeout"):
        client.enqueue("add", {"a": 1, "b": 2})
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2 * 1.0 + 3, elapsed
    hold.rollback()
    hold.close()
    assert sql("SELECT count(*) FROM jobs") == [(0,)]
    assert client.enqueue("add", {"a": 1, "b": 2}) > 0  # fine again at once
    assert sql("SELECT count(*) FROM jobs") == [(1,)]
    client.close()


def test_slow_network_bounded_by_connect_timeout_and_latency_tolerated(database_url, proxy,
                                                                      sql) -> None:
    """A 4 s one-way delay: a new connection cannot be set up within the connect timeout, so
    enqueue fails fast. A pooled connection under a 300 ms delay is slow but succeeds, once."""
    via = proxy.url(database_url)
    with proxy.toxic("latency", stream="downstream", latency=4000):
        client = _client(via)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="unreachable"):
            client.enqueue("add", {"a": 1, "b": 2})
        assert time.monotonic() - started < CONNECT_TIMEOUT * 2 + 3
        client.close()
    client = _client(via)
    client.enqueue("add", {"a": 0, "b": 0})  # connect without latency, keep it pooled
    with proxy.toxic("latency", stream="downstream", latency=300):
        started = time.monotonic()
        job = client.enqueue("add", {"a": 1, "b": 2}, unique_key="slow-1")
        assert time.monotonic() - started >= 0.3  # the delay was really there
    assert sql("SELECT count(*) FROM jobs WHERE unique_key = 'slow-1'") == [(1,)]
    assert client.enqueue("add", {"a": 1, "b": 2}, unique_key="slow-1") == job
    client.close()


def test_connection_reset_mid_enqueue_is_retried_once_safely(database_url, proxy, sql) -> None:
    """A TCP reset before COMMIT was sent: nothing was stored, so the client retries once on a
    fresh connection; the job exists exactly once."""
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})
    proxy.add_toxic("reset_peer", stream="upstream", timeout=0, name="rst")
    call = _Call(client, "add", {"a": 1, "b": 2}, unique_key="reset-1")
    call.start()
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "enqueue hung on a reset connection"
    assert isinstance(call.error, DatabaseUnavailable), call.error
    proxy.remove_toxic("rst")
    job = wait_for(lambda: _try(client, "add", {"a": 1, "b": 2}, unique_key="reset-1"), 30,
                   "the client to recover after the resets")
    assert sql("SELECT id FROM jobs WHERE unique_key = 'reset-1'") == [(job,)]
    client.close()


def test_link_cut_while_committing_reports_unknown_outcome(database_url, proxy, sql) -> None:
    """The hardest case for "never inserts twice": the COMMIT reached Postgres but its answer
    did not. The client must not retry on its own (the job exists); it says the outcome is
    unknown, and the caller's retry with the same unique_key finds the job instead of adding one."""
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection, set up without latency
    proxy.add_toxic("latency", stream="downstream", latency=2000)
    call = _Call(client, "add", {"a": 1, "b": 2}, unique_key="commit-1")
    call.start()
    wait_for(lambda: sql("SELECT count(*) FROM jobs WHERE unique_key = 'commit-1'") == [(1,)],
             20, "the insert to be committed in Postgres")
    proxy.disable()  # the COMMIT's answer is still on the wire
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "enqueue hung after its connection was cut"
    assert isinstance(call.error, EnqueueOutcomeUnknown), call.error
    assert "may or may not exist" in str(call.error) and "unique_key" in str(call.error)
    proxy.clear()
    job = wait_for(lambda: _try(client, "add", {"a": 1, "b": 2}, unique_key="commit-1"), 30,
                   "the client to recover")
    assert sql("SELECT id FROM jobs WHERE unique_key = 'commit-1'") == [(job,)]
    assert sql("SELECT count(*) FROM jobs") == [(2,)]
    client.close()
