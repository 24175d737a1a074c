"""wait(): a job's result, or a typed error, for Client and AsyncClient alike; woken by the
completion NOTIFY (polling as the fallback), through a database restart, a thousand waiters
on one connection."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from skiplock import (
    AsyncClient,
    Client,
    InvalidArguments,
    JobDead,
    JobNotFound,
    JobWasCancelled,
    SkiplockError,
    WaitTimeout,
)
from tests.integration.test_client_support import Producer, running_worker
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]


def _hub(producer: Producer) -> Any:
    # read only: the wait makes the hub on its own thread (the AsyncClient's on its loop)
    return producer.client._hub


def _started_waiting(producer: Producer, n: int = 1) -> None:
    wait_until(lambda: (h := _hub(producer)) is not None and h.waiting() >= n
               and h.connected.is_set(), 20, "the waiter to be registered and listening")


def test_a_succeeded_job_returns_its_result(producer: Producer, database_url: str) -> None:
    job_id = producer.enqueue("add", {"a": 2, "b": 3})
    with running_worker(app, database_url):
        assert producer.wait(job_id, timeout=30) == {"sum": 5}
    # finished before the wait began: read at once
    assert producer.wait(job_id, timeout=30) == {"sum": 5}


def test_a_dead_job_raises_job_dead(producer: Producer, database_url: str) -> None:
    job_id = producer.enqueue("permanent", {})
    with running_worker(app, database_url), pytest.raises(JobDead) as info:
        producer.wait(job_id, timeout=30)
    assert info.value.job_id == job_id and info.value.error


def test_a_cancelled_job_raises_and_the_notify_wakes_the_waiter(producer: Producer) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 1}, delay=3600)
    future = producer.wait_in_background(job_id, 60)
    _started_waiting(producer)
    hub = _hub(producer)
    # No poll within the test's bounds: only the completion notification can wake it.
    hub.poll_interval = 3600
    # The new waiter's first read is done and no other is coming: the cancel below cannot be
    # picked up by that fresh read instead of the notification.
    wait_until(lambda: hub.reads >= 1, 20, "the waiter's first read")
    reads = hub.reads
    time.sleep(0.3)
    assert hub.reads == reads, "the hub keeps reading without a notification"
    assert producer.cancel(job_id, "changed my mind") == "cancelled"
    with pytest.raises(JobWasCancelled, match="changed my mind"):
        future.result(30)
    assert 1 <= hub.reads - reads <= 2


def test_timeout_raises_wait_timeout_and_leaves_the_job(producer: Producer, sql: Sql) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 1})
    with pytest.raises(WaitTimeout) as info:
        producer.wait(job_id, timeout=0.3)
    assert isinstance(info.value, TimeoutError) and info.value.job_id == job_id
    assert sql("SELECT state::text FROM jobs WHERE id = %s", job_id) == [("queued",)]
    assert _hub(producer).waiting() == 0  # the waiter is gone with its timeout


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_wait_is_always_bounded(kind: str) -> None:
    p = Producer(kind, "postgresql://nobody@127.0.0.1:1/none")  # refused before any I/O
    try:
        bad: tuple[Any, ...] = (0, -1, float("inf"), float("nan"), 86_401, "5", True, None)
        for timeout in bad:
            with pytest.raises(InvalidArguments, match="timeout"):
                p.wait(1, timeout=timeout)
    finally:
        p.close()


def test_an_unknown_job_raises_job_not_found(producer: Producer) -> None:
    with pytest.raises(JobNotFound):
        producer.wait(10**12, timeout=10)


def test_polling_wakes_the_waiter_when_no_notification_comes(producer: Producer) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 1}, delay=3600)
    future = producer.wait_in_background(job_id, 60)
    _started_waiting(producer)
    hub = _hub(producer)
    hub._channel = None  # as behind a transaction pooler: nothing is heard...
    hub.poll_interval = 0.2
    hub._wake()
    with psycopg.connect(producer.url, autocommit=True) as conn:  # ...and nothing is sent
        conn.execute("ALTER TABLE skiplock.jobs DISABLE TRIGGER jobs_notify_finished")
        conn.execute("UPDATE skiplock.jobs SET state = 'cancelled', finished_at = now() "
                     "WHERE id = %s", [job_id])
    with pytest.raises(JobWasCancelled):
        future.result(30)


def test_the_database_restarts_while_waiting(producer: Producer, pg: PgServer) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 1}, delay=3600)
    future = producer.wait_in_background(job_id, 90)
    _started_waiting(producer)
    hub = _hub(producer)
    hub.poll_interval = 3600  # the cancel below is heard on the new LISTEN, not polled
    try:
        pg.stop("fast")
        wait_until(lambda: not hub.connected.is_set(), 20, "the hub to notice")
        assert not future.done()
    finally:
        pg.start()
    wait_until(hub.connected.is_set, 30, "the hub to reconnect and LISTEN again")
    with Client(producer.url) as other:
        assert other.cancel(job_id) == "cancelled"
    with pytest.raises(JobWasCancelled):
        future.result(30)


def test_many_threads_wait_on_one_sync_client(database_url: str) -> None:
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(50)]
        with ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(c.wait, i, 60) for i in ids]
            with running_worker(app, database_url):
                results = [f.result(60) for f in futures]
    assert results == [{"sum": i + 1} for i in range(50)]


def _connections(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'skiplock-%%' "
            "GROUP BY 1").fetchall()
    return {str(name): int(n) for name, n in rows}


def test_a_thousand_async_waiters_share_one_connection(database_url: str) -> None:
    n = 1000

    async def go() -> list[Any]:
        async with AsyncClient(database_url, max_size=4) as client:
            assert await client.enqueue_many(
                [{"task": "add", "args": {"a": i, "b": 0}} for i in range(n)]) == n
            ids = list(range(1, n + 1))  # a fresh database: ids from 1
            waits = [asyncio.create_task(client.wait(i, timeout=120)) for i in ids]
            hub = client._wait_hub()
            while hub.waiting() < n or not hub.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            # every waiter registered: one connection for all of them, the pool's at most 4
            seen = await asyncio.to_thread(_connections, database_url)
            assert seen.get("skiplock-wait") == 1, seen
            assert seen.get("skiplock-client", 0) <= 4, seen
            worker_done = threading.Event()

            def work() -> None:
                with running_worker(app, database_url, concurrency=16):
                    while not worker_done.is_set():
                        time.sleep(0.05)

            runner = asyncio.create_task(asyncio.to_thread(work))
            try:
                results = await asyncio.gather(*waits)
            finally:
                worker_done.set()
                await runner
            # batched: far fewer outcome reads than waiters
            assert hub.reads < n / 2, hub.reads
            return results

    results = asyncio.run(go())
    assert results == [{"sum": i} for i in range(n)]


_NOWHERE = "postgresql://nobody@127.0.0.1:1/none"  # refused at once: an outage


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_hub_backs_off_while_the_database_is_unreachable(kind: str) -> None:
    """The reconnect backoff (0.1 s doubling to 2 s) holds: a waiter's wake-up left in the
    pipe once made the hub retry in a tight loop (~900 connects in 8 s)."""
    p = Producer(kind, _NOWHERE)
    try:
        with pytest.raises(WaitTimeout):
            p.wait(1, timeout=2.5)
        # 0.1 + 0.2 + 0.4 + 0.8 + 1.6: about 5 attempts in 2.5 s
        assert 2 <= _hub(p).attempts <= 8, _hub(p).attempts
    finally:
        p.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_job_ids_are_checked_before_any_io(kind: str) -> None:
    p = Producer(kind, _NOWHERE)
    try:
        bad: tuple[Any, ...] = (0, -1, 2**63, 1.0, True, "1", None)
        for job_id in bad:
            for call in (lambda: p.wait(job_id, timeout=5), lambda: p.get_job(job_id),
                         lambda: p.retry(job_id), lambda: p.cancel(job_id)):
                with pytest.raises(InvalidArguments, match="job id"):
                    call()
        assert p.kind == "async" or p.client._hub is None  # no hub made for a bad id
    finally:
        p.close()


def test_an_unreadable_id_fails_its_own_waiter_only(producer: Producer) -> None:
    """An id the query cannot take (past the check, straight into the hub) is that waiter's
    error; the hub does not take it for a lost connection and serves the others."""
    job_id = producer.enqueue("add", {"a": 1, "b": 1}, delay=3600)
    future = producer.wait_in_background(job_id, 30)
    _started_waiting(producer)
    hub = _hub(producer)
    got: list[Any] = []
    hub.watch(2**63, got.append)
    wait_until(lambda: bool(got), 20, "the unreadable id's waiter to get its error")
    assert isinstance(got[0], InvalidArguments), got
    assert producer.cancel(job_id) == "cancelled"
    with pytest.raises(JobWasCancelled):
        future.result(20)
    assert hub.connected.is_set()


def test_close_ends_every_pending_wait_at_once(producer: Producer) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 1}, delay=3600)
    future = producer.wait_in_background(job_id, 600)
    _started_waiting(producer)
    producer.run(producer.client.close())
    with pytest.raises(SkiplockError, match="client closed"):
        future.result(10)  # not the wait's own 600 s
    with pytest.raises(SkiplockError, match="client closed"):  # and no new hub
        producer.wait(job_id, timeout=5)


def test_only_a_finishing_transition_notifies(database_url: str, sql: Sql) -> None:
    """The row trigger fires for a job becoming succeeded, dead or cancelled by a statement
    other than the worker's completions (those announce their own: test_completion_notify),
    once per job, flagged by a waiter (a, b, d) or not (e: a waiter of an earlier release sets
    no flag); never for a claim, a lease renewal or an update of an already finished job."""
    with Client(database_url) as c:
        a, b, d, e = (c.enqueue("add", {"a": i, "b": 1}) for i in range(4))
    sql("UPDATE jobs SET wake_on_finish = true WHERE id IN (%s, %s, %s)", a, b, d)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN skiplock_done")
        lease = "locked_by = 'w', locked_until = now() + interval '30 s', started_at = now()"
        sql(f"UPDATE jobs SET state = 'running', attempts = 1, {lease} WHERE id IN (%s, %s)",
            a, b)  # a claim
        sql("UPDATE jobs SET locked_until = now() + interval '60 s' WHERE id = %s", a)
        sql("UPDATE jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
            "locked_until = NULL WHERE id IN (%s, %s)", a, b)
        sql("UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE id IN (%s, %s)",
            d, e)
        sql("UPDATE jobs SET finished_at = now() WHERE id IN (%s, %s, %s)", a, b, d)
        sql("UPDATE jobs SET state = 'succeeded' WHERE id = %s", a)  # same state again
        heard = [n.payload for n in listener.notifies(timeout=1.0)]
    assert sorted(heard) == sorted([str(a), str(b), str(d), str(e)]), heard


def test_async_close_does_not_block_the_event_loop() -> None:
    """The hub's thread may be stuck connecting (here: a server that accepts and never
    answers) for up to connect_timeout; AsyncClient.close() joins it off the loop."""
    with socket.create_server(("127.0.0.1", 0)) as mute:
        port = mute.getsockname()[1]

        async def go() -> tuple[int, BaseException | None]:
            client = AsyncClient(f"postgresql://nobody@127.0.0.1:{port}/none",
                                 connect_timeout=2)
            waiting = asyncio.create_task(client.wait(1, timeout=30))
            while client._hub is None or client._hub.attempts < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # inside the connect attempt that hangs
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            await client.close()
            ticker.cancel()
            outcome = (await asyncio.gather(waiting, return_exceptions=True))[0]
            return ticks, outcome if isinstance(outcome, BaseException) else None

        ticks, outcome = asyncio.run(go())
    assert ticks >= 5, ticks  # the loop ran while the hub's thread was being joined
    assert isinstance(outcome, SkiplockError) and "client closed" in str(outcome)
