"""The finish notify since migration 0013: the worker's completion statements announce the jobs
they finish themselves, one pg_notify per statement (per 300 ids), and flip wake_on_finish so
that the row trigger stays silent for them; every other finish is still announced row by row.

What is asserted is what a LISTENing session receives: every finished job named exactly
once, never a job that did not finish, payloads within NOTIFY's 8000-byte limit, and a
waiter of any version woken by it (not by its poll). Real statements on a real server: the
worker's own WorkerConnection methods, the 0012 trigger restored for a schema before 0013."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from skiplock import Client, JobNotFound
from skiplock.db import Failure, WorkerConnection
from tests.support.waits import wait_until

_WORKER = "notify-test-worker"
_FINISH = ("UPDATE skiplock.jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
           "locked_until = NULL WHERE id = %s")
_TRIGGER_0012 = (
    "DROP TRIGGER jobs_notify_finished ON skiplock.jobs; "
    "CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF state ON skiplock.jobs FOR EACH ROW "
    "WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled') "
    "AND OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION skiplock.notify_jobs_finished()")


class _Listener:
    """A session LISTENing on skiplock_done; ``heard()`` drains what arrived."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute("LISTEN skiplock_done")

    def heard(self, settle: float = 0.5) -> list[str]:
        return [n.payload for n in self.conn.notifies(timeout=settle)]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listener(database_url: str) -> Iterator[_Listener]:
    lst = _Listener(database_url)
    yield lst
    lst.close()


def _ids(payloads: list[str]) -> Counter[int]:
    return Counter(int(p) for payload in payloads for p in payload.split(","))


def _enqueue(url: str, n: int, **job: Any) -> list[int]:
    with Client(url, validate=False) as client:
        client.enqueue_many({"task": "t", "args": {"i": i}, **job} for i in range(n))
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM skiplock.jobs ORDER BY id")]


def _worker_connection(url: str) -> WorkerConnection:
    return WorkerConnection(url, schema="skiplock", connect_timeout=5, statement_timeout=30,
                            application_name="skiplock-worker")


def _claim_and(url: str, n: int, finish: str, **extra: Any) -> dict[int, str]:
    """Claim up to ``n`` jobs with the worker's statement, then finish them with its
    ``finish`` statement (complete_succeeded, or complete_failed with ``extra``)."""

    async def go() -> dict[int, str]:
        conn = _worker_connection(url)
        try:
            jobs = await conn.claim(["default"], n, _WORKER, 60)
            if finish == "succeeded":
                return await conn.complete_succeeded(
                    [(j.id, j.attempt, "null") for j in jobs], _WORKER)
            return await conn.complete_failed(
                [Failure(j.id, j.attempt, "boom", 1.0, extra["permanent"](j.id)) for j in jobs],
                _WORKER)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_completion_announces_its_jobs_in_one_notify_per_300(
        database_url: str, listener: _Listener) -> None:
    ids = _enqueue(database_url, 650)
    done = _claim_and(database_url, 650, "succeeded")
    assert done == dict.fromkeys(ids, "succeeded")
    payloads = listener.heard()
    assert _ids(payloads) == Counter(ids), "every finished job named exactly once"
    assert sorted(len(p.split(",")) for p in payloads) == [50, 300, 300]


def test_ids_at_the_top_of_bigint_fit_the_payload_limit(
        database_url: str, listener: _Listener) -> None:
    """19-digit ids: 300 of them and their commas are 5,999 bytes, under NOTIFY's 8000."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE skiplock.jobs ALTER COLUMN id RESTART WITH %s"
                     % (2**63 - 10_000))
    ids = _enqueue(database_url, 301)
    assert all(len(str(i)) == 19 for i in ids)
    _claim_and(database_url, 400, "succeeded")
    payloads = listener.heard()
    assert _ids(payloads) == Counter(ids)
    assert max(len(p.encode()) for p in payloads) < 8000


def test_a_failure_batch_announces_the_jobs_it_finished_and_not_the_retried(
        database_url: str, listener: _Listener) -> None:
    ids = _enqueue(database_url, 40, max_attempts=3)
    dead = set(ids[::3])
    states = _claim_and(database_url, 40, "failed", permanent=lambda i: i in dead)
    assert {i for i, s in states.items() if s == "dead"} == dead
    assert {i for i, s in states.items() if s == "queued"} == set(ids) - dead
    assert _ids(listener.heard()) == Counter(dead)


def test_a_cancel_requested_meanwhile_is_announced_as_it_ends(
        database_url: str, listener: _Listener) -> None:
    ids = _enqueue(database_url, 3)

    async def go() -> dict[int, str]:
        conn = _worker_connection(database_url)
        try:
            jobs = await conn.claim(["default"], 3, _WORKER, 60)
            with Client(database_url) as client:
                assert client.cancel(ids[0], "stop") == "requested"
            return await conn.complete_succeeded([(j.id, j.attempt, "1") for j in jobs],
                                                 _WORKER)
        finally:
            await conn.close()

    states = asyncio.run(go())
    assert states == {ids[0]: "cancelled", ids[1]: "succeeded", ids[2]: "succeeded"}
    assert _ids(listener.heard()) == Counter(ids)


def test_any_other_finish_is_announced_by_the_row_trigger(
        database_url: str, listener: _Listener) -> None:
    """A statement that does not flip the flag (a cancel, a manual finish, a worker of a
    release before 0013): one notify per job, its id alone."""
    queued, running = _enqueue(database_url, 2)
    with Client(database_url) as client:
        assert client.cancel(queued, "no") == "cancelled"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE skiplock.jobs SET state = 'running', locked_by = 'old', "
                     "locked_until = now() + interval '1 hour', attempts = 1 WHERE id = %s",
                     [running])
        conn.execute(_FINISH, [running])
    assert listener.heard() == [str(queued), str(running)]


def test_this_release_on_a_schema_before_0013_is_announced_twice(
        database_url: str, listener: _Listener) -> None:
    """Code deployed before the migration ran: the 0012 trigger announces each job too."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_TRIGGER_0012)
    ids = _enqueue(database_url, 5)
    _claim_and(database_url, 5, "succeeded")
    assert _ids(listener.heard()) == Counter({i: 2 for i in ids})


@pytest.mark.parametrize("flags", [True, False], ids=["flagging hub", "hub of before 0012"])
def test_a_waiter_is_woken_by_the_completions_notify(
        database_url: str, flags: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiter of this release and one that flags nothing (a client before 0012), each with
    its poll an hour away: the worker's completion wakes both."""
    (job_id,) = _enqueue(database_url, 1)
    with Client(database_url) as client:
        with pytest.raises(JobNotFound):
            client.wait(10**12, timeout=30)  # makes the hub; an unknown id is read at once
        hub = client._hub
        assert hub is not None
        wait_until(hub.connected.is_set, 20, "the hub to listen")
        if not flags:
            monkeypatch.setattr(hub, "_flag", lambda conn, ids: set())
        hub.poll_interval = 3600.0
        hub._wake()
        result: list[Any] = []
        waiter = threading.Thread(
            target=lambda: result.append(client.wait(job_id, timeout=60)), daemon=True)
        waiter.start()
        wait_until(lambda: hub.waiting() == 1, 20, "the waiter")
        _claim_and(database_url, 1, "succeeded")
        waiter.join(30)
        assert not waiter.is_alive() and result == [None]
        assert hub.flagged == (1 if flags else 0)


def test_a_failure_out_of_attempts_or_cancelled_is_announced_and_an_empty_batch_sends_nothing(
        database_url: str, listener: _Listener) -> None:
    """complete_failed's other two finishing cases (attempts used up; a cancel requested
    while it ran), and a completion of jobs no longer this worker's (fenced out: no row)."""
    ids = _enqueue(database_url, 3, max_attempts=1)

    async def go() -> tuple[dict[int, str], dict[int, str], dict[int, str]]:
        conn = _worker_connection(database_url)
        try:
            jobs = await conn.claim(["default"], 3, _WORKER, 60)
            with Client(database_url) as client:
                assert client.cancel(ids[0], "stop") == "requested"
            failed = await conn.complete_failed(
                [Failure(j.id, j.attempt, "boom", 1.0, False) for j in jobs], _WORKER)
            stale_ok = await conn.complete_succeeded(
                [(j.id, j.attempt, "null") for j in jobs], _WORKER)
            stale_failed = await conn.complete_failed(
                [Failure(j.id, j.attempt, "again", 1.0, True) for j in jobs], _WORKER)
            return failed, stale_ok, stale_failed
        finally:
            await conn.close()

    failed, stale_ok, stale_failed = asyncio.run(go())
    assert failed == {ids[0]: "cancelled", ids[1]: "dead", ids[2]: "dead"}
    assert stale_ok == {} and stale_failed == {}
    assert _ids(listener.heard()) == Counter(ids)
