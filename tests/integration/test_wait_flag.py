"""wait() flags its jobs (wake_on_finish, migration 0012) after its LISTEN and before it reads
their state; since 0013 the trigger reads no flag (every finish is announced:
test_completion_notify.py), so what these tests hold is that the flagging itself loses no
wake-up and starves no waiter: a finish holding the row, any ordering of finish and flag, a
role that may not write, a schema before 0012, a waiter of a version that flags nothing. The
poll is set to an hour: what returns a wait within the test's bounds is the notify or the
wait's first read, never the poll."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from skiplock import Client, JobNotFound
from tests.integration.test_client_support import Producer
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]
_HOUR = 3600.0
_FINISH = ("UPDATE jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
           "locked_until = NULL WHERE id = %s")


def _no_poll(hub: Any) -> None:
    hub.poll_interval = _HOUR
    hub._wake()  # the hub's select takes the new interval at once


def _running(sql: Sql, job_id: int) -> None:
    """The job as a worker's claim leaves it."""
    sql("UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w', "
        "locked_until = now() + interval '1 hour', started_at = now() WHERE id = %s", job_id)


def _flag(sql: Sql, job_id: int) -> bool:
    return bool(sql("SELECT wake_on_finish FROM jobs WHERE id = %s", job_id)[0][0])


@pytest.fixture
def client(database_url: str) -> Iterator[Client]:
    """A Client whose hub is up, listening, and never polls."""
    with Client(database_url) as c:
        with pytest.raises(JobNotFound):
            c.wait(10**12, timeout=30)  # makes the hub; an unknown id is read at once
        assert c._hub is not None
        wait_until(c._hub.connected.is_set, 20, "the hub to listen")
        _no_poll(c._hub)
        yield c


def test_a_waited_jobs_finish_wakes_the_waiter_by_its_notify(producer: Producer,
                                                            sql: Sql) -> None:
    job_id = producer.enqueue("add", {"a": 2, "b": 3})
    _running(sql, job_id)
    future = producer.wait_in_background(job_id, 60)
    wait_until(lambda: (h := producer.client._hub) is not None and h.flagged == 1, 20,
               "the waiter's job to be flagged")
    hub = producer.client._hub
    _no_poll(hub)
    assert _flag(sql, job_id)
    reads = hub.reads
    sql("INSERT INTO results (job_id, result) VALUES (%s, '{\"sum\": 5}')", job_id)
    sql(_FINISH, job_id)
    assert future.result(30) == {"sum": 5}  # well within the hour's poll: the notify
    assert hub.reads - reads == 1  # the one read the notification asked for


def test_a_job_finished_before_the_wait_is_returned_at_once(client: Client, sql: Sql) -> None:
    job_id = client.enqueue("add", {"a": 1, "b": 1})
    _running(sql, job_id)
    sql("INSERT INTO results (job_id, result) VALUES (%s, '7')", job_id)
    sql(_FINISH, job_id)
    assert client.wait(job_id, timeout=30) == 7  # no notify (never flagged), no poll
    assert not _flag(sql, job_id)  # a finished job is not written to


def _lock_waiter_blocked(database_url: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                           "current_database() AND application_name = 'skiplock-wait' "
                           "AND wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


def test_a_finish_holding_the_row_while_the_flag_is_set_is_not_lost(
        client: Client, sql: Sql, database_url: str) -> None:
    """The finishing transaction updated the row (no flag on it: no notify) and has not
    committed when the hub sets the flag: the flag statement waits for it, finds the job
    finished, does not flag it, and the read that follows sees the commit."""
    job_id = client.enqueue("add", {"a": 1, "b": 1})
    _running(sql, job_id)
    with psycopg.connect(database_url, options="-c search_path=skiplock,public") as finisher:
        finisher.execute(_FINISH, [job_id])  # in a transaction, not committed
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(client.wait(job_id, timeout=60)))
        t.start()
        wait_until(lambda: _lock_waiter_blocked(database_url), 20,
                   "the flag statement to wait for the finishing transaction's row lock")
        finisher.commit()
    t.join(30)
    assert not t.is_alive() and result == [None]
    assert not _flag(sql, job_id)


def test_no_ordering_of_finish_and_flag_loses_a_wake_up(client: Client, sql: Sql,
                                                         database_url: str) -> None:
    """Finish and wait started together, the finish holding its row for 0-20 ms: whichever
    comes first, every wait returns within the test's bounds (the poll is an hour away)."""
    rng = random.Random(15)
    hub = client._hub
    assert hub is not None
    n = 40
    ids = [client.enqueue("add", {"a": i, "b": 0}) for i in range(n)]
    for job_id in ids:
        _running(sql, job_id)
    with psycopg.connect(database_url, options="-c search_path=skiplock,public") as finisher:
        for job_id in ids:
            go = threading.Event()

            def finish(job_id: int = job_id, go: threading.Event = go) -> None:
                go.wait()
                threading.Event().wait(rng.random() * 0.01)
                finisher.execute(_FINISH, [job_id])
                threading.Event().wait(rng.random() * 0.02)
                finisher.commit()

            t = threading.Thread(target=finish)
            t.start()
            go.set()
            assert client.wait(job_id, timeout=20) is None
            t.join(10)


def test_a_waiter_that_sets_no_flag(client: Client, sql: Sql,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A client of a version before 0012, which LISTENs but flags nothing: the row trigger's
    notify of a finish that is not a worker's completion wakes it at once, not its poll (an
    hour away here); a worker's completion, by its own notify (test_completion_notify.py)."""
    hub = client._hub
    assert hub is not None
    monkeypatch.setattr(hub, "_flag", lambda conn, ids: set())  # as the old hub: no flag
    job_id = client.enqueue("add", {"a": 1, "b": 1})
    _running(sql, job_id)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(client.wait(job_id, timeout=60)))
    t.start()
    wait_until(lambda: hub.waiting() == 1, 20, "the waiter")
    sql(_FINISH, job_id)
    t.join(30)
    assert result == [None] and not _flag(sql, job_id)


def test_a_new_client_on_a_schema_before_0012_is_woken_by_the_old_trigger(
        database_url: str, sql: Sql) -> None:
    """The migration not run yet (column and the flag's WHEN undone here): the hub finds no
    column, skips the flag, and the old trigger's notify of every finish wakes it."""
    sql("DROP TRIGGER jobs_notify_finished ON jobs")
    sql("ALTER TABLE jobs DROP COLUMN wake_on_finish")
    sql("CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF state ON jobs FOR EACH ROW "
        "WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled') "
        "AND OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION notify_jobs_finished()")
    with Client(database_url) as c:
        with pytest.raises(JobNotFound):
            c.wait(10**12, timeout=30)
        hub = c._hub
        assert hub is not None
        _no_poll(hub)
        job_id = c.enqueue("add", {"a": 1, "b": 1})
        _running(sql, job_id)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(c.wait(job_id, timeout=60)))
        t.start()
        reads = hub.reads
        wait_until(lambda: hub.waiting() == 1 and hub.reads > reads, 20,
                   "the waiter's flag attempt")
        sql(_FINISH, job_id)
        t.join(30)
        assert result == [None] and hub.flagged == 0


def test_a_row_held_past_the_lock_timeout_starves_no_other_waiter(
        client: Client, sql: Sql, database_url: str) -> None:
    """A stray transaction holds a waited job's row: the flag gives up after the hub's lock
    timeout (1 s) instead of the statement timeout, the hub stays connected and serves the
    other waiters by their notify, and flags the held job at its next poll."""
    hub = client._hub
    assert hub is not None
    held, other = (client.enqueue("add", {"a": i, "b": 0}) for i in range(2))
    _running(sql, held)
    _running(sql, other)
    results: dict[int, Any] = {}

    def wait(job_id: int) -> None:
        results[job_id] = client.wait(job_id, timeout=60)

    with psycopg.connect(database_url, options="-c search_path=skiplock,public") as stray:
        stray.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", [held])
        waiter = threading.Thread(target=wait, args=(held,))
        waiter.start()
        wait_until(lambda: held in hub._unflagged, 20, "the flag to give up on the held row")
        assert hub.connected.is_set() and hub.attempts == 1  # no reconnect
        threading.Thread(target=wait, args=(other,)).start()
        wait_until(lambda: hub.flagged == 1, 20, "the other job to be flagged")
        sql(_FINISH, other)
        wait_until(lambda: other in results, 30, "the other waiter, by its notify")
        stray.rollback()
    hub.poll_interval = 0.2
    hub._wake()
    wait_until(lambda: hub.flagged == 2, 20, "the held job flagged at the next poll")
    hub.poll_interval = _HOUR
    sql(_FINISH, held)
    waiter.join(30)
    assert results == {other: None, held: None}


def test_a_role_that_may_not_update_jobs_still_gets_its_outcomes(database_url: str,
                                                                 sql: Sql) -> None:
    """A producer's least-privilege role (SELECT only): the flag is refused, the hub logs it
    once and goes on reading (it used to reconnect for ever, and every wait timed out); the
    finish wakes it by the row trigger's notify."""
    role = f"reader_{database_url.rsplit('/', 1)[1]}"
    sql(f"CREATE ROLE {role} LOGIN")
    sql(f"GRANT USAGE ON SCHEMA skiplock TO {role}")
    sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA skiplock TO {role}")
    url = database_url.replace("postgres@", f"{role}@", 1)
    with Client(database_url) as producer:
        done = producer.enqueue("add", {"a": 1, "b": 1})
        later = producer.enqueue("add", {"a": 1, "b": 2})
    sql(_FINISH, done)
    _running(sql, later)
    with Client(url) as c:
        assert c.wait(done, timeout=20) is None  # finished already: read at once
        hub = c._hub
        assert hub is not None
        _no_poll(hub)
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(c.wait(later, timeout=60)))
        t.start()
        wait_until(lambda: hub.waiting() == 1, 20, "the waiter")
        sql(_FINISH, later)
        t.join(30)
        assert result == [None] and hub.flagged == 0 and hub.attempts == 1
