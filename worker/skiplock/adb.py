"""The async database boundary of the AsyncClient: Database's producer and job methods on
psycopg's AsyncConnectionPool.

The statements, their parameters and the decisions about their results are Database's own
(db.py: PoolSettings, which makes the connections and finds a pooler; the named queries,
enqueue_plan, ENQUEUE_TRIES and unread_key, caller_enqueue_outcome, the search_path_swap
parameters, unnest_params, _keyed_outcome, check_unnest_keys, insert_failure and
outcome_unknown, OneTripEnqueue, wrap_error): only the awaiting differs, so both clients store
exactly the same rows and raise exactly the same errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Self, Unpack

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .copy_data import CopyBatch, CopyRefused, next_block
from .db import (
    ENQUEUE_TRIES,
    NewJob,
    OneTripEnqueue,
    PoolOptions,
    PoolSettings,
    Q,
    Row,
    _keyed_outcome,
    caller_enqueue_outcome,
    check_unnest_keys,
    enqueue_plan,
    insert_failure,
    needs_reconnect,
    outcome_unknown,
    refuses_startup_options,
    restored_search_path,
    schema_search_path,
    unnest_params,
    unread_key,
    wrap_error,
)
from .job_ids import RESERVE, ReservedIds
from .pool_check import acheck_unless_fresh, given_back, insert_checkout
from .redact import scrub

log = logging.getLogger("skiplock.db")


class _AsyncPoolConnection(psycopg.AsyncConnection[Any]):
    """_PoolConnection's async twin: a refused startup ``options`` means a transaction pooler
    (``skiplock_on_refused`` switches the AsyncDatabase to pooler mode)."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        on_refused: Callable[[], str] | None = kwargs.pop("skiplock_on_refused", None)
        try:
            return await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            if on_refused is None or not refuses_startup_options(exc):
                raise
            retry_with = on_refused()
        return await super().connect(retry_with, **{**kwargs, "prepare_threshold": None})


class AsyncDatabase(PoolSettings):
    """Async access for producers (AsyncClient); settings (PoolSettings) as Database's."""

    def __init__(self, url: str, **options: Unpack[PoolOptions]) -> None:
        super().__init__(url, **options)
        self._pool = AsyncConnectionPool(
            connection_class=_AsyncPoolConnection, open=False,
            check=acheck_unless_fresh, **self._pool_arguments(self.max_size))
        self._opened = False
        self._open_lock: asyncio.Lock | None = None
        self._ids = ReservedIds()

    async def close(self) -> None:
        if self._opened:
            await self._pool.close()
            self._opened = False

    async def _open(self) -> None:
        # Opened on first use, inside the caller's event loop (the pool binds to it).
        if self._opened:
            return
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if not self._opened:
                await self._pool.open()
                self._opened = True

    @contextlib.asynccontextmanager
    async def _checkout(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        await self._open()
        async with self._pool.connection() as conn:
            try:
                yield conn
            except psycopg.Error as exc:
                if needs_reconnect(exc):  # see db._discarded_on_failover
                    await conn.close()
                raise
            finally:
                given_back(conn)

    @contextlib.asynccontextmanager
    async def _inserting_checkout(
        self, *, skip_ping: bool = True
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """_checkout for an insert path: with ``skip_ping`` (its first try) a fresh connection
        is lent without its ping (pool_check.insert_checkout); the retry of a failure before
        COMMIT pings, as the next idle connection may be as dead as the one that failed."""
        # Opened first: the pool's own tasks, created by open(), must not inherit the flag.
        await self._open()
        with insert_checkout() if skip_ping else contextlib.nullcontext():
            async with self._checkout() as conn:
                yield conn

    async def _settings(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.pooler:
            await conn.execute(Q["transaction_settings"], self._transaction_settings())

    async def _rows(self, name: str, params: Mapping[str, Any] | None = None,
                    doing: str | None = None) -> list[Row]:
        try:
            async with self._checkout() as conn, conn.cursor(row_factory=dict_row) as cur:
                if self.pooler:
                    async with conn.pipeline():
                        await self._settings(conn)
                        await cur.execute(Q[name], params or {})
                else:
                    await cur.execute(Q[name], params or {})
                return await cur.fetchall() if cur.description else []
        except (psycopg.Error, PoolTimeout) as exc:
            raise wrap_error(exc, self.url, doing or name) from None

    async def _insert_transaction(
        self, doing: str, what: str,
        run: Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]], *, pipeline: bool = True,
    ) -> Any:
        """Database._insert_transaction awaited: one retry on a fresh connection for a failure
        before COMMIT was sent, EnqueueOutcomeUnknown for one while committing."""
        retry = True
        while True:
            committing = False
            try:
                async with self._inserting_checkout(skip_ping=retry) as conn:
                    if pipeline:
                        async with conn.pipeline():
                            await conn.execute("BEGIN")
                            await self._settings(conn)
                            result = await run(conn)
                            committing = True
                            await conn.execute("COMMIT")
                    else:
                        if self.pooler:
                            async with conn.pipeline():
                                await conn.execute("BEGIN")
                                await self._settings(conn)
                        else:
                            await conn.execute("BEGIN")
                        result = await run(conn)
                        committing = True
                        await conn.execute("COMMIT")
                return result
            except PoolTimeout as exc:
                raise wrap_error(exc, self.url, doing) from None
            except psycopg.Error as exc:
                decision = insert_failure(exc, committing, retried=not retry)  # Database's
                if decision == "unknown":
                    raise outcome_unknown(doing, what, self.url) from exc
                if decision == "retry":
                    retry = False
                    log.info(
                        "%s: %s; nothing was stored, retrying on a fresh connection", doing,
                        scrub((str(exc).strip() or type(exc).__name__).splitlines()[0], self.url))
                    continue
                raise wrap_error(exc, self.url, doing) from None

    # -- producers --------------------------------------------------------------------------

    async def enqueue(
        self, job: NewJob, connection: psycopg.AsyncConnection[Any] | None = None
    ) -> tuple[int, bool]:
        """Database.enqueue: (id, created)."""
        query, params = enqueue_plan(job)  # Database.enqueue's decisions, awaited
        if connection is not None:
            return await self._enqueue_in(connection, query, params)
        doing = f"enqueue {job.task!r}"
        if job.unique_key is None:
            return await self._enqueue_with_id(doing, params)

        async def insert(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(query, params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row

        for _ in range(ENQUEUE_TRIES):
            found = await self._insert_transaction(doing, "the job", insert)
            if found is not None:
                return _keyed_outcome(found, params)
        raise unread_key(doing)

    async def _enqueue_with_id(self, doing: str, params: Mapping[str, Any]) -> tuple[int, bool]:
        """Database._enqueue_with_id awaited: one round trip under an id taken ahead, a lost
        connection sent again with the same id."""
        job_id = self._ids.take()
        if job_id is None:  # the first enqueue of this AsyncDatabase: one round trip more
            self._ids.add(int(r["nextval"]) for r in await self._rows(
                "reserve_job_ids", {"n": RESERVE}, doing))
            job_id = self._ids.take()
            assert job_id is not None
        trip = OneTripEnqueue(doing, self.url, job_id, self._ids)
        params = {**params, "id": job_id}
        while True:
            try:
                async with self._inserting_checkout(skip_ping=not trip.tries) as conn:
                    more = None
                    refill = self._ids.running_out()  # the next block rides on this trip
                    # No BEGIN or COMMIT: what goes out before one Sync is one implicit
                    # transaction. A pipeline only when more than the insert goes out (the
                    # settings behind a pooler, the next block): it costs ~0.1 ms of waits.
                    if self.pooler or refill:
                        async with conn.pipeline():
                            await self._settings(conn)
                            if refill:
                                more = await conn.execute(Q["reserve_job_ids"], {"n": RESERVE})
                            cur = await conn.execute(Q["enqueue_with_id"], params)
                    else:
                        cur = await conn.execute(Q["enqueue_with_id"], params)
                    row = await cur.fetchone()
                    if more is not None:
                        self._ids.add(int(r[0]) for r in await more.fetchall())
            except (psycopg.Error, PoolTimeout) as exc:
                trip.failed(exc)  # raises unless the job is to be sent again
                continue
            except asyncio.CancelledError as cancelled:
                # the INSERT went out with its commit: a cancelled call may have stored it
                cancelled.add_note(f"{doing}: cancelled while the job was being sent; it may "
                                   f"have been stored, under id {job_id} (get_job tells)")
                raise
            outcome = trip.answered(row)
            if outcome is not None:
                return outcome

    async def _enqueue_in(
        self, conn: psycopg.AsyncConnection[Any], query: str, params: Mapping[str, Any]
    ) -> tuple[int, bool]:
        """In the caller's transaction, with our schema only for this statement."""
        try:
            swapped = await conn.execute(Q["search_path_swap"], schema_search_path(self.schema))
            previous = await swapped.fetchone()
            try:
                row = await (await conn.execute(query, params)).fetchone()
            finally:
                await conn.execute(Q["search_path_swap"], restored_search_path(previous))
        except psycopg.Error as exc:
            raise wrap_error(exc, self.url, "enqueue in caller's transaction") from None
        return caller_enqueue_outcome(row, params)

    async def enqueue_copy(self, jobs: Sequence[NewJob] | CopyBatch) -> int:
        """Database.enqueue_copy, awaited: the same COPY text, block by block."""
        batch = jobs if isinstance(jobs, CopyBatch) else CopyBatch.of(jobs)

        async def copy_rows(conn: psycopg.AsyncConnection[Any]) -> int:
            texts = batch.texts()
            codec = conn.info.encoding
            async with conn.cursor() as cur, cur.copy(Q["copy_jobs"]) as copy:
                while (block := next_block(texts, codec)) is not None:
                    await copy.write(block)
            return batch.count

        try:
            count: int = await self._insert_transaction(
                f"enqueue_many ({batch.total} jobs)", "the jobs", copy_rows, pipeline=False)
        except CopyRefused as refused:  # rolled back, never retried
            raise refused.cause from None
        return count

    async def enqueue_unnest(self, jobs: Sequence[NewJob]) -> list[int]:
        params, requests, hashes, keyed = unnest_params(jobs)

        async def insert(conn: psycopg.AsyncConnection[Any]) -> list[int]:
            cur = await conn.execute(Q["enqueue_many_unnest"], params)
            ids = [int(r[0]) for r in await cur.fetchall()]
            if keyed:
                cur = await conn.execute(Q["idempotency_keys"], {"keys": list(keyed)})
                check_unnest_keys(await cur.fetchall(), jobs, hashes, requests, keyed)
            return ids

        ids: list[int] = await self._insert_transaction(
            f"enqueue_many ({len(jobs)} jobs)", "the jobs", insert)
        return ids

    async def list_tasks(self) -> dict[str, Row]:
        return {r["name"]: r for r in await self._rows("list_tasks")}

    # -- jobs -----------------------------------------------------------------------------

    async def get_job(self, job_id: int) -> Row | None:
        rows = await self._rows("get_job", {"id": job_id}, f"get job {job_id}")
        return rows[0] if rows else None

    async def job_state(self, job_id: int) -> str | None:
        rows = await self._rows("job_state", {"id": job_id})
        return str(rows[0]["state"]) if rows else None

    async def retry_job(self, job_id: int) -> Row | None:
        rows = await self._rows("retry_job", {"id": job_id}, f"retry job {job_id}")
        if rows:
            await self._rows(
                "notify_queue", {"channel": f"{self.schema}_jobs", "queue": rows[0]["queue"]})
        return rows[0] if rows else None

    async def cancel_job(self, job_id: int, reason: str) -> str | None:
        rows = await self._rows("cancel_jobs", {
            "ids": [job_id], "reason": reason[:1000], "channel": f"{self.schema}_control",
        }, f"cancel job {job_id}")
        return str(rows[0]["state"]) if rows else None
