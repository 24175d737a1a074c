"""Helpers for the test_client_* modules (no tests here): both producers behind one
synchronous face, so that one test runs against Client and AsyncClient alike (the
AsyncClient's calls run on one event loop of its own), and an in-process worker for the tests
that need jobs to finish."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from skiplock import App, AsyncClient, Client, Worker


class Producer:
    """``kind`` "sync" (Client) or "async" (AsyncClient); every method returns plainly."""

    def __init__(self, kind: str, database_url: str, **options: Any) -> None:
        self.kind = kind
        self.url = database_url
        self._loop: asyncio.AbstractEventLoop | None = None
        if kind == "sync":
            self.client: Any = Client(database_url, **options)
        else:
            # The AsyncClient lives on one loop, running in a thread of its own, so that a
            # test can wait in the background while it enqueues or cancels.
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
            self._thread.start()
            self.client = self.run(_make_async_client(database_url, options))

    def _do(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.run(getattr(self.client, name)(*args, **kwargs))

    def run(self, coro_or_value: Any) -> Any:
        """An awaitable run on this producer's loop (async), or a value as it is (sync)."""
        return self.submit(coro_or_value).result(120) if self._loop is not None else coro_or_value

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def wait_in_background(self, job_id: int, timeout: float) -> concurrent.futures.Future[Any]:
        """wait() running meanwhile: its outcome in the Future."""
        if self._loop is not None:
            return self.submit(self.client.wait(job_id, timeout=timeout))
        pool = concurrent.futures.ThreadPoolExecutor(1)
        future = pool.submit(self.client.wait, job_id, timeout)
        pool.shutdown(wait=False)
        return future

    def enqueue(self, *args: Any, **kwargs: Any) -> int:
        return int(self._do("enqueue", *args, **kwargs))

    def enqueue_many(self, *args: Any, **kwargs: Any) -> int:
        return int(self._do("enqueue_many", *args, **kwargs))

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        found: dict[str, Any] | None = self._do("get_job", job_id)
        return found

    def retry(self, job_id: int) -> bool:
        return bool(self._do("retry", job_id))

    def cancel(self, job_id: int, reason: str | None = None) -> str | None:
        answer: str | None = self._do("cancel", job_id, reason)
        return answer

    def wait(self, job_id: int, timeout: float = 60.0) -> Any:
        return self._do("wait", job_id, timeout=timeout)

    def enqueue_in_transaction(self, commit: bool, *args: Any, **kwargs: Any) -> int:
        """Enqueue inside a transaction of the caller's own connection (with a row of its
        own), then commit or roll back."""
        if self._loop is None:
            with psycopg.connect(self.url) as conn:
                conn.execute("INSERT INTO public.orders VALUES (1)")
                job_id = self.client.enqueue(*args, connection=conn, **kwargs)
                conn.commit() if commit else conn.rollback()
            return int(job_id)

        async def go() -> int:
            async with await psycopg.AsyncConnection.connect(self.url) as conn:
                await conn.execute("INSERT INTO public.orders VALUES (1)")
                job_id = await self.client.enqueue(*args, connection=conn, **kwargs)
                await (conn.commit() if commit else conn.rollback())
            return int(job_id)

        return int(self.run(go()))

    def close(self) -> None:
        if self._loop is not None:
            self.run(self.client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
        else:
            self.client.close()


async def _make_async_client(url: str, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(url, **options)


@contextmanager
def running_worker(app: App, database_url: str, **options: Any) -> Iterator[Worker]:
    """A Worker running in a thread of its own (its own event loop) until the block ends."""
    worker = Worker(app, database_url, **{"concurrency": 8, "poll_interval": 0.2, **options})
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        async def go() -> None:
            task = asyncio.create_task(worker.run())
            await asyncio.wait_for(worker.ready.wait(), 30)
            started.set()
            await task

        try:
            loop.run_until_complete(go())
        except BaseException as exc:  # reported by the test, below
            failure.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(40), "the worker did not become ready"
    assert not failure, failure
    try:
        yield worker
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(worker.request_stop)
        thread.join(40)
        assert not thread.is_alive(), "the worker did not stop"
        assert not failure, failure
