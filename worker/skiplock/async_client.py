"""The asyncio producer: Client's methods, awaited, on psycopg's async pool.

Jobs are prepared by the same code as Client's (preparation.prepare_job / prepare_many, the
catalogue read with await first), stored by the same statements (adb.AsyncDatabase), and
retry/cancel answer through the same transitions decisions (transitions.retry_async /
cancel_async, retried, cancel_result): only the I/O differs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from . import collector, transitions
from .adb import AsyncDatabase
from .client import user_at_host, wait_hub
from .copy_data import CopyBatch
from .handles import TaskHandle, task_name
from .preparation import (
    AsyncCatalogue,
    bulk_plan,
    job_specs,
    prepare_job,
)
from .settings import Settings
from .waiting import WaitHub, check_wait_timeout


class AsyncClient:
    """Enqueue jobs and manage them from asyncio code; keep one per process (and event loop).

    ``async with AsyncClient(url) as client: await client.enqueue(...)``."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        connect_timeout: float | None = None,
        validate: bool = True,
        settings: Settings | None = None,
        max_size: int = 4,
    ) -> None:
        s = settings or Settings()
        self.validate = validate
        self.db = AsyncDatabase.from_settings(
            s, application_name="skiplock-client", url=database_url, schema=schema,
            connect_timeout=connect_timeout, max_size=max_size)
        self._catalogue = AsyncCatalogue(self.db.list_tasks)
        self.max_args_bytes = s.max_args_bytes
        self._hub: WaitHub | None = None
        self._closed = False
        self._settings = s

    async def close(self) -> None:
        self._closed = True
        hub, self._hub = self._hub, None
        if hub is not None:
            # Joining the hub's thread may take up to its connect timeout: not on the loop.
            await asyncio.to_thread(hub.close)
        await self.db.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def catalogue(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        return await self._catalogue.tasks(refresh)

    def _validating(self, validate: bool | None) -> bool:
        return validate if validate is not None else self.validate

    async def enqueue(
        self,
        task: str | TaskHandle[Any, Any],
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        run_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        max_attempts: int | None = None,
        unique_key: str | None = None,
        validate: bool | None = None,
        connection: psycopg.AsyncConnection[Any] | None = None,
        # the job's deadline per attempt (as Client's), not this call's
        timeout: float | dt.timedelta | None = None,  # noqa: ASYNC109
    ) -> int:
        """Client.enqueue, awaited; ``connection``: the caller's AsyncConnection (the job
        is part of its open transaction)."""
        name = task_name(task)
        catalogue = (await self._catalogue.snapshot([name])
                     if self._validating(validate) else None)
        job = prepare_job(
            name, args, queue=queue, priority=priority, max_attempts=max_attempts,
            run_at=run_at, delay=delay, unique_key=unique_key, timeout=timeout,
            max_args_bytes=self.max_args_bytes, catalogue=catalogue,
        )
        job_id, _created = await self.db.enqueue(job, connection=connection)
        return job_id

    async def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, validate: bool | None = None
    ) -> int:
        """Client.enqueue_many, awaited (COPY when it can; the collector paused as
        there: the loop's other tasks get their cyclic passes after the call)."""
        with collector.paused():
            specs = job_specs(jobs)
            catalogue = (await self._catalogue.snapshot(s.get("task") for s in specs)
                         if self._validating(validate) else None)
            if not specs:
                return 0
            plan = bulk_plan(specs, max_args_bytes=self.max_args_bytes, catalogue=catalogue)
            if isinstance(plan, CopyBatch):
                return await self.db.enqueue_copy(plan)
            return len(await self.db.enqueue_unnest(plan))

    async def get_job(self, job_id: int) -> dict[str, Any] | None:
        return await self.db.get_job(transitions.check_job_id(job_id))

    async def retry(self, job_id: int) -> bool:
        """Client.retry: queue a dead or cancelled job again."""
        answer = await transitions.retry_async(self.db, transitions.check_job_id(job_id))
        return transitions.retried(answer)

    async def cancel(
        self, job_id: int, reason: str | None = None, *, by: str | None = None
    ) -> str | None:
        """Client.cancel: "cancelled", "requested" or None."""
        who = transitions.requester(by or f"client {user_at_host()}", reason)
        answer = await transitions.cancel_async(self.db, transitions.check_job_id(job_id), who)
        return transitions.cancel_result(answer)

    # timeout= as Client.wait's: the same call, awaited (the API)
    async def wait(self, job_id: int, timeout: float = 60.0) -> Any:  # noqa: ASYNC109
        """The result of job ``job_id`` once it succeeded; JobDead, JobWasCancelled, or
        WaitTimeout after ``timeout`` seconds (see skiplock/waiting.py)."""
        job_id = transitions.check_job_id(job_id)
        seconds = check_wait_timeout(timeout)
        return await self._wait_hub().wait_async(job_id, seconds)

    def _wait_hub(self) -> WaitHub:
        self._hub = hub = wait_hub(self._hub, self._closed, self.db, self._settings)
        return hub
