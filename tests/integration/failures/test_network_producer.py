"""Producer (API) <-> Postgres: the database killed mid-request, down, and slow (server side
and on the wire). Enqueue fails fast with a clear error within its bounded timeout, never hangs,
never inserts twice, and the same Client recovers on its own when the database is back."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg
import pytest

from skiplock import Client
from skiplock.db import NewJob
from skiplock.errors import DatabaseUnavailable, EnqueueOutcomeUnknown, SkiplockError
from skiplock.settings import Settings
from tests.integration.test_client_support import Producer
from tests.support.waits import wait_until

CONNECT_TIMEOUT = 2.0


def _client(url: str, **settings: Any) -> Client:
    s = Settings(database_url=url, connect_timeout=CONNECT_TIMEOUT, **settings)
    return Client(settings=s, validate=False)


class _Call(threading.Thread):
    """Run one insert (``fn(*args, **kw)``) in the background; record its outcome and how long
    it took."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        super().__init__(daemon=True)
        self.fn, self.args, self.kw = fn, args, kw
        self.result: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.result = self.fn(*self.args, **self.kw)
        except BaseException as exc:
            self.error = exc
        self.elapsed = time.monotonic() - started


def _blocked_on_lock(sql) -> bool:
    return bool(sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'skiplock-client' AND wait_event_type = 'Lock'")[0][0])


def _held_jobs_table(url: str) -> psycopg.Connection[Any]:
    """Another session's EXCLUSIVE lock on jobs, held until its rollback or close: the next
    insert waits inside the server, mid-request, for what a test does to it then."""
    hold = psycopg.connect(url, options="-c search_path=skiplock")
    hold.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    return hold


def _call_waiting_in_server(url: str, waiting: Callable[[], Any], fn: Callable[..., Any],
                            *args: Any, **kw: Any) -> tuple[psycopg.Connection[Any], _Call, Any]:
    """(the lock's session, the call started behind it, what ``waiting`` found once true)."""
    hold = _held_jobs_table(url)
    call = _Call(fn, *args, **kw)
    call.start()
    return hold, call, wait_until(waiting, 10, "the insert to wait inside the server")


@pytest.mark.parametrize("how", ["kill9", "immediate"])
def test_database_killed_mid_enqueue(database_url, pg, rsql, how: str) -> None:
    client = _client(database_url)
    assert client.enqueue("add", {"a": 0, "b": 0}) > 0  # a pooled connection exists
    # Hold the table so the next INSERT is in the server, mid-request, when Postgres dies.
    hold, call, _ = _call_waiting_in_server(database_url, lambda: _blocked_on_lock(rsql),
                                            client.enqueue, "add", {"a": 1, "b": 2},
                                            unique_key="order-42")
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
    job = wait_until(lambda: _try(client, "add", {"a": 1, "b": 2}, unique_key="order-42"), 30,
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
    wait_until(lambda: _try(client, "add", {"a": 1, "b": 2}), 30, "the client to recover")
    assert rsql("SELECT count(*) FROM jobs") == [(2,)]
    client.close()


def test_slow_database_hits_the_statement_timeout(database_url, sql) -> None:
    """Server-side slowness (a lock held by a long transaction): the enqueue gives up within
    its statement timeout (tried twice, nothing committed), with a clear error; no row appears."""
    client = _client(database_url, statement_timeout=1.0)
    hold = _held_jobs_table(database_url)
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
    call = _Call(client.enqueue, "add", {"a": 1, "b": 2}, unique_key="reset-1")
    call.start()
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "enqueue hung on a reset connection"
    assert isinstance(call.error, DatabaseUnavailable), call.error
    proxy.remove_toxic("rst")
    job = wait_until(lambda: _try(client, "add", {"a": 1, "b": 2}, unique_key="reset-1"), 30,
                     "the client to recover after the resets")
    assert sql("SELECT id FROM jobs WHERE unique_key = 'reset-1'") == [(job,)]
    client.close()


class _InsertPath(NamedTuple):
    """One of Database's insert paths, driven the way a caller drives it."""

    doing: str  # how its errors start
    jobs: int  # jobs per call
    keyed: bool  # every job has a unique_key (so a retry is safe)
    insert: Callable[[Client, str], Any]  # (client, tag): the jobs go to queue `tag`


BULK = 20


def _bulk(tag: str, *, keyed: bool) -> list[dict[str, Any]]:
    return [{"task": "add", "args": {"a": i, "b": 0}, "queue": tag,
             **({"unique_key": f"{tag}-{i}"} if keyed else {})} for i in range(BULK)]


def _batch(client: Client, tag: str) -> list[tuple[int, bool]]:
    """The API's batch insert (POST /jobs/batch): Database.enqueue_batch."""
    return client.db.enqueue_batch([
        NewJob("add", {"a": i, "b": 0}, json.dumps({"a": i, "b": 0}), tag, 0, 5,
               unique_key=f"{tag}-{i}")
        for i in range(BULK)])


PATHS = {
    "enqueue": _InsertPath("enqueue 'add'", 1, True, lambda client, tag: client.enqueue(
        "add", {"a": 1, "b": 2}, queue=tag, unique_key=f"{tag}-0")),
    # no unique_key: one round trip under an id taken ahead (skiplock/job_ids.py)
    "enqueue-unkeyed": _InsertPath("enqueue 'add'", 1, False, lambda client, tag: client.enqueue(
        "add", {"a": 1, "b": 2}, queue=tag)),
    # enqueue_many takes COPY when no job has a unique_key or run_at, unnest otherwise.
    "copy": _InsertPath(f"enqueue_many ({BULK} jobs)", BULK, False,
                        lambda client, tag: client.enqueue_many(_bulk(tag, keyed=False))),
    "unnest": _InsertPath(f"enqueue_many ({BULK} jobs)", BULK, True,
                          lambda client, tag: client.enqueue_many(_bulk(tag, keyed=True))),
    "batch": _InsertPath(f"enqueue batch ({BULK} jobs)", BULK, True, _batch),
}


def _stored(sql, tag: str) -> tuple[int, int, int]:
    """(jobs, jobs with a key, distinct keys) in queue `tag`."""
    (row,) = sql("SELECT count(*), count(unique_key), count(DISTINCT unique_key) FROM jobs "
                 "WHERE queue = %s", tag)
    return tuple(row)


def _once(path: _InsertPath) -> tuple[int, int, int]:
    keys = path.jobs if path.keyed else 0
    return (path.jobs, keys, keys)


def _until_recovered(fn: Callable[..., Any], *args: Any) -> Any:
    """The caller's retry, repeated until the client has recovered; its result."""

    def attempt() -> tuple[Any] | None:
        try:
            return (fn(*args),)
        except DatabaseUnavailable:
            return None

    return wait_until(attempt, 30, "the client to recover")[0]


def _cut_while_committing(proxy, call: _Call, committed: Callable[[], bool]) -> _Call:
    """Cut the link exactly while ``call``'s COMMIT is in flight. Every answer is delayed 2 s
    on the wire, so once the insert is committed in Postgres (seen from another connection)
    the COMMIT's answer is still on its way when the link is cut. The client must already
    hold a pooled connection, set up without latency. Leaves the link cut."""
    proxy.add_toxic("latency", stream="downstream", latency=2000)
    call.start()
    wait_until(committed, 20, "the insert to be committed in Postgres")
    proxy.disable()  # the COMMIT's answer is still on the wire
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "the insert hung after its connection was cut"
    return call


@pytest.mark.parametrize("path", PATHS)
def test_link_cut_while_committing_reports_unknown_outcome(database_url, proxy, sql,
                                                           path: str) -> None:
    """The hardest case for "never inserts twice": the COMMIT reached Postgres but its answer
    did not. On every insert path the client must not retry on its own (the jobs exist) nor
    say "nothing was changed"; it says the outcome is unknown, and the caller's retry with the
    same unique keys finds the jobs instead of adding them."""
    p, tag = PATHS[path], f"commit-{path}"
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection, set up without latency
    call = _cut_while_committing(proxy, _Call(p.insert, client, tag),
                                 lambda: _stored(sql, tag)[0] == p.jobs)
    assert isinstance(call.error, EnqueueOutcomeUnknown), call.error
    msg = str(call.error)
    assert msg.startswith(f"{p.doing}: "), msg
    assert "may or may not exist" in msg and "unique keys" in msg and "unique_key" in msg, msg
    assert "nothing was changed" not in msg, msg
    assert f"postgres@127.0.0.1:{proxy.port}/" in msg  # where, without any password
    proxy.clear()
    assert _stored(sql, tag) == _once(p)  # committed once, not retried behind the caller's back
    if path == "enqueue-unkeyed":  # its retry (same id) could not connect: the id is told
        job_id = call.error.job_id
        assert job_id is not None and f"its id is {job_id}" in msg, msg
        assert sql("SELECT id FROM jobs WHERE queue = %s", tag) == [(job_id,)]
        assert _until_recovered(client.get_job, job_id)["id"] == job_id
    if p.keyed:
        again = _until_recovered(p.insert, client, tag)
        assert _stored(sql, tag) == _once(p)  # the retry found the jobs
        ids = [r[0] for r in sql("SELECT id FROM jobs WHERE queue = %s ORDER BY id", tag)]
        if path == "enqueue":
            assert [again] == ids
        elif path == "unnest":
            assert again == 0  # enqueue_many counts the jobs it inserted
        else:
            assert again == [(i, False) for i in ids]
    assert sql("SELECT count(*) FROM jobs") == [(p.jobs + 1,)]
    client.close()


def _open_transactions(sql) -> int:
    return sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
               "'skiplock-client' AND xact_start IS NOT NULL")[0][0]


# The one-round-trip enqueue sends its COMMIT with the INSERT: once the link is cut its
# outcome is unknown until the retry reaches the server (the tests below).
TWO_TRIPS = [name for name in PATHS if name != "enqueue-unkeyed"]


@pytest.mark.parametrize("path", TWO_TRIPS)
def test_link_cut_before_commit_reports_nothing_stored(database_url, proxy, sql,
                                                       path: str) -> None:
    """The link is cut while the insert waits inside the server, before COMMIT was sent, and
    stays cut: the one retry cannot connect, so the caller gets a clear DatabaseUnavailable
    saying nothing was changed, which is true (the transaction dies with its connection).
    The caller's retry then stores the jobs exactly once."""
    p, tag = PATHS[path], f"before-{path}"
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection
    hold, call, _ = _call_waiting_in_server(database_url, lambda: _blocked_on_lock(sql),
                                            p.insert, client, tag)
    proxy.disable()
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "the insert hung after its connection was cut"
    assert isinstance(call.error, DatabaseUnavailable), call.error
    assert not isinstance(call.error, EnqueueOutcomeUnknown), call.error
    msg = str(call.error)
    assert msg.startswith(f"{p.doing}: ") and "unreachable" in msg, msg
    assert "nothing was changed" in msg, msg
    assert call.elapsed < CONNECT_TIMEOUT * 2 + 3, call.elapsed
    proxy.enable()
    hold.rollback()
    hold.close()
    # The cut connection's backend runs its INSERT once the lock is free, then finds its
    # client gone and ends without a COMMIT.
    wait_until(lambda: _open_transactions(sql) == 0, 20, "the cut connection's backend to end")
    assert _stored(sql, tag) == (0, 0, 0)
    _until_recovered(p.insert, client, tag)
    assert _stored(sql, tag) == _once(p)
    client.close()


def _waiting_pids(sql) -> list[int]:
    return [r[0] for r in sql("SELECT pid FROM pg_stat_activity WHERE application_name = "
                              "'skiplock-client' AND wait_event_type = 'Lock'")]


@pytest.mark.parametrize("path", PATHS)
def test_connection_lost_before_commit_is_retried_once(database_url, sql, path: str) -> None:
    """The server ends the connection while the insert waits inside it, before COMMIT was
    sent: nothing was stored, so the client retries once on a fresh connection and the caller
    never sees the failure; the jobs exist exactly once."""
    p, tag = PATHS[path], f"lost-{path}"
    client = _client(database_url)
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection
    hold, call, first = _call_waiting_in_server(database_url, lambda: _waiting_pids(sql),
                                                p.insert, client, tag)
    assert sql("SELECT pg_terminate_backend(%s, 5000)", first[0]) == [(True,)]
    wait_until(lambda: (pids := _waiting_pids(sql)) and pids != first, 10,
               "the retry to wait inside the server, on a fresh connection")
    hold.rollback()
    hold.close()
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "the insert hung after its connection was lost"
    assert call.error is None, call.error
    assert _stored(sql, tag) == _once(p)
    client.close()


def test_unkeyed_enqueue_cut_mid_statement_names_its_job(database_url, proxy, sql) -> None:
    """One round trip: the link is cut (and kept cut) while the INSERT waits inside the server,
    its COMMIT already sent with it. The retry cannot connect, so the outcome is unknown, and
    the error says which id the job has if it was stored. The server then runs the INSERT and
    the COMMIT it holds once the lock is free: the job exists once, under that id; a new
    enqueue adds one job, under a new id."""
    tag = "cut-unkeyed"
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection, ids reserved
    hold, call, _ = _call_waiting_in_server(database_url, lambda: _blocked_on_lock(sql),
                                            PATHS["enqueue-unkeyed"].insert, client, tag)
    proxy.disable()
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "the insert hung after its connection was cut"
    assert isinstance(call.error, EnqueueOutcomeUnknown), call.error
    job_id = call.error.job_id
    msg = str(call.error)
    assert msg.startswith("enqueue 'add': ") and "may or may not exist" in msg, msg
    assert f"its id is {job_id}" in msg and "nothing was changed" not in msg, msg
    assert call.elapsed < CONNECT_TIMEOUT * 2 + 3, call.elapsed
    proxy.enable()
    hold.rollback()
    hold.close()
    wait_until(lambda: _open_transactions(sql) == 0, 20, "the cut connection's backend to end")
    assert sql("SELECT id FROM jobs WHERE queue = %s", tag) == [(job_id,)]
    again = _until_recovered(PATHS["enqueue-unkeyed"].insert, client, tag)
    assert again != job_id
    assert sorted(r[0] for r in sql("SELECT id FROM jobs WHERE queue = %s", tag)) == sorted(
        [job_id, again])
    client.close()


def test_unkeyed_enqueue_answer_lost_is_resent_and_found(database_url, proxy, sql,
                                                         caplog) -> None:
    """The hardest case for the one-round-trip enqueue: its COMMIT was done in Postgres, its
    answer lost on the wire. The client sends the job again with the same id on a fresh
    connection (the link is back by then), which finds the row instead of adding one: the
    call succeeds with that id, and the job exists exactly once."""
    tag = "lost-answer-unkeyed"
    caplog.set_level(logging.INFO, "skiplock.db")
    client = _client(proxy.url(database_url))
    client.enqueue("add", {"a": 0, "b": 0})  # a pooled connection, set up without latency
    call = _Call(PATHS["enqueue-unkeyed"].insert, client, tag)
    proxy.add_toxic("latency", stream="downstream", latency=2000, name="slow")
    call.start()
    wait_until(lambda: _stored(sql, tag)[0] == 1, 20, "the insert to be committed in Postgres")
    proxy.disable()  # its answer is still on the wire: the connection is lost...
    proxy.remove_toxic("slow")
    proxy.enable()  # ...and a new one can be made at once
    call.join(CONNECT_TIMEOUT * 3 + 5)
    assert not call.is_alive(), "the insert hung after its connection was cut"
    assert call.error is None, call.error
    assert "sending it again with the same id" in caplog.text  # the answer really was lost
    assert sql("SELECT id FROM jobs WHERE queue = %s", tag) == [(call.result,)]
    assert sql("SELECT count(*) FROM jobs") == [(2,)]
    client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_unkeyed_enqueue_resent_while_the_first_try_waits_is_found(database_url, proxy, sql,
                                                                  caplog, kind: str) -> None:
    """The link is cut while the INSERT, its COMMIT sent with it, waits for a lock inside the
    server, and is back at once: the client (Client and AsyncClient) sends the job again with
    the same id, which waits too. The lock freed, whichever INSERT comes second finds the
    first one's row (waiting for its transaction, then, as its snapshot predates that commit,
    by running the statement again): the call succeeds with that id, the only row."""
    tag = f"resent-waiting-{kind}"
    caplog.set_level(logging.INFO, "skiplock.db")
    producer = Producer(kind, proxy.url(database_url), connect_timeout=CONNECT_TIMEOUT,
                        validate=False)
    try:
        producer.enqueue("add", {"a": 0, "b": 0})  # a pooled connection, ids reserved
        hold, call, _ = _call_waiting_in_server(
            database_url, lambda: len(_waiting_pids(sql)) == 1,
            producer.enqueue, "add", {"a": 1, "b": 2}, queue=tag)
        proxy.disable()
        proxy.enable()
        wait_until(lambda: len(_waiting_pids(sql)) == 2, CONNECT_TIMEOUT * 3 + 5,
                   "the job sent again, waiting behind the first try")
        hold.rollback()
        hold.close()
        call.join(CONNECT_TIMEOUT * 3 + 5)
        assert not call.is_alive(), "the insert hung after its connection was cut"
        assert call.error is None, call.error
        assert "sending it again with the same id" in caplog.text
        assert sql("SELECT id FROM jobs WHERE queue = %s", tag) == [(call.result,)]
        assert sql("SELECT count(*) FROM jobs") == [(2,)]
    finally:
        producer.close()
