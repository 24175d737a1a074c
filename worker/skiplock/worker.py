"""The worker: claim loop, lease renewal, fenced completion, graceful shutdown.

Each job runs outside any transaction. Three connections, each owned by one service:
claims, writes (heartbeats and completions, serialised so they never deadlock each other)
and LISTEN. Any of them may die; each service reconnects with capped backoff on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import logs, metrics
from .app import App, JobContext
from .db import ClaimedJob, Failure, WorkerConnection
from .errors import DatabaseUnavailable, PermanentError, SkiplockError
from .leases import runs_that_lost_their_lease
from .retry import backoff_delay, reconnect_delay
from .settings import Settings

log = logging.getLogger("skiplock.worker")


def make_worker_id(name: str | None = None) -> str:
    """Unique per process start: a restarted pod that reuses its name still gets a new id."""
    base = name or os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class _Owned:
    job: ClaimedJob
    started: float
    lost: bool = False


@dataclass
class _Outcomes:
    """Finished runs waiting to be written, each with the claim it belongs to."""

    succeeded: list[tuple[ClaimedJob, Any]] = field(default_factory=list)
    failed: list[tuple[ClaimedJob, Failure]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.succeeded) + len(self.failed)


class Worker:
    def __init__(
        self,
        app: App,
        database_url: str,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        shutdown_grace: float = 30.0,
        schema: str = "skiplock",
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        worker_id: str | None = None,
        heartbeat_fraction: float = 1 / 3,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 0 < heartbeat_fraction <= 0.5:
            raise ValueError("heartbeat_fraction must be in (0, 0.5] so a lease is renewed in time")
        self.app = app
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.shutdown_grace = shutdown_grace
        self.heartbeat_interval = lease_seconds * heartbeat_fraction
        self.worker_id = worker_id or make_worker_id()
        self.channel = f"{schema}_jobs"

        def conn(role: str, synchronous_commit: bool = True) -> WorkerConnection:
            return WorkerConnection(
                database_url,
                schema=schema,
                connect_timeout=connect_timeout,
                statement_timeout=statement_timeout,
                application_name=f"skiplock-worker-{role}",
                synchronous_commit=synchronous_commit,
            )

        # Claims (and rescues) commit without waiting for the WAL flush: a claim lost in a
        # server crash leaves the job queued, to be claimed again, and the fences (locked_by,
        # attempts) reject the first runner's writes, which is what a crash means anyway.
        # It takes one fsync off every job's path to its handler. Outcomes, heartbeats and
        # task registration stay durable on the write connection.
        self._claim_db = conn("claim", synchronous_commit=False)
        self._write_db = conn("write")
        self._listen_db = conn("listen")
        self._write_lock = asyncio.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="skiplock-job"
        )
        self._owned: dict[int, _Owned] = {}
        self._executing: dict[int, asyncio.Task[None]] = {}
        self._outcomes = _Outcomes()
        self._outcome_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._more_waiting = False
        self._last_rescue = float("-inf")
        self.ready = asyncio.Event()
        self.processed = 0

    @classmethod
    def from_settings(cls, app: App, settings: Settings, **overrides: Any) -> Worker:
        if not settings.database_url:
            raise SkiplockError("no database URL: set SKIPLOCK_DATABASE_URL or pass --database-url")
        params: dict[str, Any] = {
            "concurrency": settings.concurrency,
            "lease_seconds": settings.lease_seconds,
            "poll_interval": settings.poll_interval,
            "shutdown_grace": settings.shutdown_grace,
            "schema": settings.schema_name,
            "connect_timeout": settings.connect_timeout,
            "statement_timeout": settings.statement_timeout,
            "worker_id": make_worker_id(settings.worker_name) if settings.worker_name else None,
        }
        params.update({k: v for k, v in overrides.items() if v is not None})
        return cls(app, settings.database_url, **params)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; running jobs get the grace period to finish (SIGTERM does this)."""
        if not self._stopping.is_set():
            log.info(
                "stopping: no new claims; %d job(s) running",
                len(self._executing),
                extra={"worker_id": self.worker_id},
            )
        self._stopping.set()
        self._wake.set()

    async def run(self, install_signal_handlers: bool = False) -> None:
        """Serve until request_stop() (or SIGTERM/SIGINT with install_signal_handlers)."""
        with logs.bind(worker_id=self.worker_id):
            await self._run(install_signal_handlers)

    async def _run(self, install_signal_handlers: bool) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        log.info(
            "worker %s starting: queues=%s concurrency=%d lease=%.0fs",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.lease_seconds,
            extra={"worker_id": self.worker_id},
        )
        await self._register_tasks()
        services = [
            asyncio.create_task(self._listen_loop(), name="listen"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._completion_loop(), name="complete"),
        ]
        self.ready.set()
        try:
            await self._fetch_loop()
            await self._drain()
        finally:
            for s in services:
                s.cancel()
            await asyncio.gather(*services, return_exceptions=True)
            await self._flush_all(deadline=time.monotonic() + 5)
            for c in (self._claim_db, self._write_db, self._listen_db):
                await c.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            log.info(
                "worker %s stopped after %d job(s)",
                self.worker_id,
                self.processed,
                extra={"worker_id": self.worker_id},
            )

    def _on_signal(self) -> None:
        if self._stopping.is_set():
            log.warning("second signal: releasing running jobs now")
            self.shutdown_grace = 0
            for t in self._executing.values():
                t.cancel()
        self.request_stop()

    async def _register_tasks(self) -> None:
        failures = 0
        entries = [(t.name, t.params, t.max_attempts, t.queue) for t in self.app.tasks.values()]
        while not self._stopping.is_set():
            try:
                await self._write_db.register_tasks(entries)
                return
            except DatabaseUnavailable as exc:
                failures += 1
                metrics.DB_ERRORS.labels("register").inc()
                delay = reconnect_delay(failures)
                log.warning("%s; retrying in %.1fs", exc, delay)
                await self._sleep_unless_stopping(delay)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- claiming ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            free = self.concurrency - len(self._executing)
            self._wake.clear()
            if free > 0:
                try:
                    await self._maybe_rescue()
                    claimed = await self._claim(free)
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    metrics.DB_ERRORS.labels("claim").inc()
                    delay = reconnect_delay(failures)
                    log.warning("%s; retrying in %.1fs", exc, delay)
                    await self._sleep_unless_stopping(delay)
                    continue
                self._more_waiting = claimed == free
                if self._more_waiting:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def _maybe_rescue(self) -> None:
        now = time.monotonic()
        if now - self._last_rescue < min(1.0, self.lease_seconds / 4):
            return
        self._last_rescue = now
        for job_id, state, attempt in await self._claim_db.rescue_expired(self.queues):
            metrics.RESCUED.inc()
            log.warning(
                "job %d: lease expired on attempt %d; now %s",
                job_id,
                attempt,
                state,
                extra={"job_id": job_id, "attempt": attempt},
            )

    async def _claim(self, limit: int) -> int:
        started = time.perf_counter()
        jobs = await self._claim_db.claim(self.queues, limit, self.worker_id, self.lease_seconds)
        metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
        for job in jobs:
            self._start(job)
        return len(jobs)

    def _start(self, job: ClaimedJob) -> None:
        _child(metrics.JOBS_CLAIMED, job.queue, job.task).inc()
        self._owned[job.id] = _Owned(job, time.monotonic())
        self._executing[job.id] = asyncio.create_task(self._execute(job))

    async def run_once(self) -> int:
        """Claim one batch, run it and record the outcomes (for tests and scripts)."""
        await self._register_tasks()
        n = await self._claim(self.concurrency)
        if self._executing:
            await asyncio.gather(*self._executing.values(), return_exceptions=True)
        await self._flush_all(deadline=time.monotonic() + 30)
        return n

    # -- executing ---------------------------------------------------------------------------

    async def _execute(self, job: ClaimedJob) -> None:
        with logs.bind(job_id=job.id, task=job.task, attempt=job.attempt, queue=job.queue):
            await self._execute_bound(job)

    async def _execute_bound(self, job: ClaimedJob) -> None:
        extra = {
            "job_id": job.id,
            "task": job.task,
            "attempt": job.attempt,
            "queue": job.queue,
            "worker_id": self.worker_id,
        }
        started = time.perf_counter()
        try:
            task = self.app.tasks.get(job.task)
            if task is None:
                known = ", ".join(sorted(self.app.tasks)) or "none"
                self._fail(job, f"unknown task {job.task!r}: this worker runs {known}", 0.0, True)
                return
            ctx = JobContext(
                job.id, job.attempt, job.max_attempts, job.queue, job.task, self.worker_id
            )
            try:
                _check_args(task.func, ctx, job.args)
            except TypeError as exc:
                self._fail(job, f"arguments do not fit task {job.task!r}: {exc}", 0.0, True)
                return
            try:
                if task.is_async:
                    result = await task.func(ctx, **job.args)
                else:
                    loop = asyncio.get_running_loop()
                    # run_in_executor does not carry contextvars: copy them so the handler's
                    # own log lines get the job's fields.
                    call = functools.partial(task.func, ctx, **job.args)
                    result = await loop.run_in_executor(
                        self._executor, contextvars.copy_context().run, call
                    )
                if result is not None:  # None, the common no-result case, needs no check
                    json.dumps(result)
            except asyncio.CancelledError:
                raise
            except PermanentError as exc:
                self._fail(job, f"PermanentError: {exc}", 0.0, True)
                log.warning("job %d failed permanently: %s", job.id, exc, extra=extra)
            except Exception as exc:
                delay = backoff_delay(task.backoff, job.attempt)
                error = f"{type(exc).__name__}: {exc}\n{_short_traceback(exc)}"
                self._fail(job, error, delay, False)
                log.info(
                    "job %d attempt %d/%d failed: %s",
                    job.id,
                    job.attempt,
                    job.max_attempts,
                    exc,
                    extra=extra,
                )
            else:
                if self._still_ours(job):
                    self._outcomes.succeeded.append((job, result))
                    self._outcome_ready.set()
            finally:
                _child(metrics.JOB_SECONDS, job.queue, job.task).observe(
                    time.perf_counter() - started
                )
        finally:
            if self._executing.get(job.id) is asyncio.current_task():
                del self._executing[job.id]
            if self._more_waiting:
                self._wake.set()

    def _holds(self, job: ClaimedJob) -> bool:
        """Whether ``job`` is the run this worker holds for its id (by identity: see below)."""
        owned = self._owned.get(job.id)
        return owned is not None and owned.job is job

    def _still_ours(self, job: ClaimedJob) -> bool:
        """False when this worker claimed the same job again while this run was going on.

        That happens only when the database lost our claim (claims commit without waiting for
        the WAL flush, so a server crash can drop one): the same worker id then gets the same
        attempt number, which the fence cannot tell apart, so the older run steps aside here.
        """
        if self._holds(job):
            return True
        owned = self._owned.get(job.id)
        metrics.STALE_WRITES.inc()
        why = (
            "released at shutdown or already settled"
            if owned is None
            else "claimed again (the database lost this run's claim in a crash)"
        )
        log.warning("job %d attempt %d: outcome discarded, the job was %s", job.id, job.attempt,
                    why)
        return False

    def _fail(self, job: ClaimedJob, error: str, delay: float, permanent: bool) -> None:
        if not self._still_ours(job):
            return
        self._outcomes.failed.append(
            (job, Failure(job.id, job.attempt, error[:4000], delay, permanent))
        )
        self._outcome_ready.set()

    # -- recording outcomes ------------------------------------------------------------------

    async def _completion_loop(self) -> None:
        failures = 0
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            while self._outcomes:
                try:
                    await self._flush()
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    metrics.DB_ERRORS.labels("complete").inc()
                    delay = reconnect_delay(failures)
                    log.warning(
                        "%s; %d outcome(s) kept, retrying in %.1fs", exc, len(self._outcomes), delay
                    )
                    await asyncio.sleep(delay)

    async def _flush(self) -> None:
        """Write pending outcomes in one fenced statement per kind; a failure keeps them.

        Outcomes of runs this worker no longer holds are dropped first: after a crash lost a
        claim, the same worker may hold a newer run of the job (same attempt number, so the
        fence cannot tell them apart), and only that run may settle the job. It also keeps
        each job id at most once per statement.
        """
        batch, self._outcomes = self._outcomes, _Outcomes()
        batch.succeeded = [(job, r) for job, r in batch.succeeded if self._still_ours(job)]
        batch.failed = [(job, f) for job, f in batch.failed if self._still_ours(job)]
        try:
            async with self._write_lock:
                if batch.succeeded:
                    accepted = await self._write_db.complete_succeeded(
                        [(job.id, job.attempt, r) for job, r in batch.succeeded], self.worker_id
                    )
                    for job, _ in batch.succeeded:
                        self._settle(job, job.id in accepted, "succeeded")
                    batch.succeeded = []
                if batch.failed:
                    states = await self._write_db.complete_failed(
                        [f for _, f in batch.failed], self.worker_id
                    )
                    for job, _ in batch.failed:
                        self._settle(job, job.id in states, states.get(job.id, "?"))
                    batch.failed = []
        except BaseException:
            self._outcomes.succeeded[:0] = batch.succeeded
            self._outcomes.failed[:0] = batch.failed
            raise

    def _settle(self, job: ClaimedJob, accepted: bool, state: str) -> None:
        # Forget this run only: while its write was in flight, a claim lost in a crash may have
        # been made again by this worker, and that newer run must keep its heartbeat.
        if self._holds(job):
            del self._owned[job.id]
        job_id, attempt, queue, task = job.id, job.attempt, job.queue, job.task
        if not accepted:
            metrics.STALE_WRITES.inc()
            log.warning(
                "job %d attempt %d: outcome discarded, the job is no longer ours "
                "(lease expired and it was re-claimed or finished)",
                job_id,
                attempt,
                extra={"job_id": job_id, "attempt": attempt, "worker_id": self.worker_id},
            )
            return
        self.processed += 1
        if state == "succeeded":
            _child(metrics.JOBS_SUCCEEDED, queue, task).inc()
        elif state == "dead":
            _child(metrics.JOBS_DEAD, queue, task).inc()
            log.warning(
                "job %d is dead after attempt %d",
                job_id,
                attempt,
                extra={"job_id": job_id, "task": task, "attempt": attempt},
            )
        else:
            _child(metrics.JOBS_RETRIED, queue, task).inc()

    async def _flush_all(self, deadline: float) -> None:
        failures = 0
        while self._outcomes and time.monotonic() < deadline:
            try:
                await self._flush()
            except DatabaseUnavailable as exc:
                failures += 1
                log.warning("%s; %d outcome(s) not yet recorded", exc, len(self._outcomes))
                await asyncio.sleep(
                    min(reconnect_delay(failures), max(0.0, deadline - time.monotonic()))
                )
        if self._outcomes:
            log.error(
                "%d outcome(s) could not be recorded before exit; their leases will expire "
                "and the jobs will run again",
                len(self._outcomes),
            )

    # -- leases ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(
                self.heartbeat_interval
                if failures == 0
                else min(self.heartbeat_interval, reconnect_delay(failures))
            )
            sent = {i: o for i, o in self._owned.items() if not o.lost}
            if not sent:
                continue
            try:
                async with self._write_lock:
                    renewed = await self._write_db.renew_leases(
                        [(i, o.job.attempt) for i, o in sent.items()],
                        self.worker_id,
                        self.lease_seconds,
                    )
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                metrics.DB_ERRORS.labels("heartbeat").inc()
                log.warning("%s; lease renewal will be retried", exc)
                continue
            metrics.LEASE_RENEWALS.inc(len(renewed))
            for run in runs_that_lost_their_lease(sent, renewed, self._owned):
                run.lost = True
                metrics.LEASES_LOST.inc()
                log.warning(
                    "job %d attempt %d: lease lost (expired and taken over); "
                    "its outcome will be discarded",
                    run.job.id,
                    run.job.attempt,
                    extra={"job_id": run.job.id, "attempt": run.job.attempt},
                )

    # -- wake-ups ----------------------------------------------------------------------------

    async def _listen_loop(self) -> None:
        failures = 0
        while True:
            try:
                async for queue in self._listen_db.listen(self.channel):
                    failures = 0
                    if queue in self.queues:
                        self._wake.set()
            except DatabaseUnavailable as exc:
                failures += 1
                metrics.DB_ERRORS.labels("listen").inc()
                log.warning("%s; polling every %.1fs until LISTEN is back", exc, self.poll_interval)
                await asyncio.sleep(reconnect_delay(failures))
                # Jobs inserted while we were deaf sent no notification we could hear.
                self._wake.set()

    # -- shutdown ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        if self._executing:
            log.info(
                "waiting up to %.0fs for %d running job(s)",
                self.shutdown_grace,
                len(self._executing),
            )
            _done, pending = await asyncio.wait(
                list(self._executing.values()), timeout=max(self.shutdown_grace, 0.001)
            )
            if pending:
                await self._release_unfinished()
                for t in pending:
                    t.cancel()
        await self._flush_all(deadline=time.monotonic() + max(5.0, self.shutdown_grace))

    async def _release_unfinished(self) -> None:
        unfinished = [
            (i, self._owned[i].job.attempt) for i in list(self._executing) if i in self._owned
        ]
        if not unfinished:
            return
        for attempt in range(1, 4):
            try:
                async with self._write_lock:
                    released = await self._write_db.release(unfinished, self.worker_id)
                break
            except DatabaseUnavailable as exc:
                log.warning("%s; could not release jobs (try %d)", exc, attempt)
                await asyncio.sleep(reconnect_delay(attempt))
        else:
            return
        for job_id, _ in unfinished:
            owned = self._owned.pop(job_id, None)
            if job_id in released and owned:
                metrics.JOBS_RELEASED.labels(owned.job.queue).inc()
        log.info("released %d unfinished job(s) for other workers", len(released))


@functools.lru_cache(maxsize=1024)
def _keyword_shape(func: Any) -> tuple[str, frozenset[str], frozenset[str], bool] | None:
    """(first parameter, accepted names, required names, takes **kwargs) for a handler whose
    fit to keyword arguments is decided by names alone; None when only bind() can tell."""
    params = list(inspect.signature(func).parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return None
    names: set[str] = set()
    required: set[str] = set()
    var_kw = False
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is inspect.Parameter.POSITIONAL_ONLY:
            return None
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(p.name)
            if p.default is inspect.Parameter.empty:
                required.add(p.name)
    return params[0].name, frozenset(names), frozenset(required), var_kw


def _check_args(func: Any, ctx: JobContext, args: dict[str, Any]) -> None:
    """Raise TypeError (bind's message) when the arguments do not fit the handler.

    inspect.signature + bind cost a fifth of a no-op job's CPU; the cached shape answers the
    common case and bind() still explains every misfit."""
    shape = _keyword_shape(func)
    if shape is not None:
        first, names, required, var_kw = shape
        keys = args.keys()
        if first not in keys and required <= keys and (var_kw or keys <= names):
            return
    inspect.signature(func).bind(ctx, **args)


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
    """A labelled metric child, looked up once (labels() costs more than the increment)."""
    return metric.labels(*labels)


def _short_traceback(exc: BaseException, limit: int = 5) -> str:
    return "".join(traceback.format_tb(exc.__traceback__, limit=-limit)).strip()
