"""wait(): a job's result, or a typed error, for Client and AsyncClient alike; woken by the
completion NOTIFY (polling as the fallback), through a database restart, a thousand waiters
on one connection."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
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
    WaitTimeout,
)
from tests.integration.test_client_support import Producer, running_worker
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture(params=["sync", "async"])
def producer(request: pytest.FixtureRequest, database_url: str) -> Iterator[Producer]:
    p = Producer(request.param, database_url)
    yield p
    p.close()


def _hub(producer: Producer) -> Any:
    return producer.client._wait_hub() if producer.kind == "async" else producer.client._hub


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
    # No poll within the test's bounds: only the completion notification can wake it.
    _hub(producer).poll_interval = 3600
    reads = _hub(producer).reads
    assert producer.cancel(job_id, "changed my mind") == "cancelled"
    with pytest.raises(JobWasCancelled, match="changed my mind"):
        future.result(30)
    assert _hub(producer).reads - reads <= 2


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
