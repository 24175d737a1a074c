"""The Worker: wires the services together and owns the lifecycle (start, drain, signals).

Three connections: claims (also rescues and the registry heartbeat), writes (outcomes and lease
renewals) and LISTEN. Any of them may die; each service reconnects with capped backoff on its
own, and the supervisor restarts a service that fails for any other reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import logs, metrics
from ..app import App
from ..db import WorkerConnection
from ..errors import DatabaseUnavailable, SkiplockError, WorkerFailed
from ..eventloop import loop_name
from ..outcomes import DEFAULT_MAX_RESULT_BYTES
from ..retry import reconnect_delay
from ..settings import Settings
from .cancel_watcher import CancelWatcher
from .claimer import Claimer
from .completer import Completer
from .executor import Executor
from .health import Health, stale
from .lease_renewer import LeaseRenewer
from .listener import Listener
from .loops import wait_event
from .monitor import INTERVAL as MONITOR_INTERVAL
from .monitor import Monitor
from .registry import Registry
from .rescuer import Rescuer
from .scheduler import Scheduler
from .state import WorkerState
from .supervisor import Supervisor

log = logging.getLogger("skiplock.worker")

# How long shutdown waits for cancelled services (seconds; after a second signal, hurried).
STUCK_SERVICE_GRACE = 2.0
STUCK_SERVICE_GRACE_HURRIED = 0.5

__all__ = ["Worker", "WorkerFailed", "make_worker_id"]


def make_worker_id(name: str | None = None) -> str:
    """Unique per process start: a restarted pod that reuses its name still gets a new id."""
    base = name or os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}:{os.getpid()}:{secrets.token_hex(3)}"


def _pooler_settings(settings: Settings) -> dict[str, Any]:
    """``pooler`` and the direct LISTEN URL from SKIPLOCK_POOLER and SKIPLOCK_LISTEN_URL."""
    found: dict[str, Any] = {"pooler": settings.pooler == "transaction"}
    if settings.listen_url:
        found["connection_urls"] = {"listen": settings.listen_url}
    return found


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
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        unrunnable_grace: float = 120.0,
        connection_urls: Mapping[str, str] | None = None,
        cancel_grace: float = 10.0,
        pooler: bool = False,
    ) -> None:
        """``unrunnable_grace``: how long a job no live worker can run (unknown task, arguments
        that fit no registered version) waits for one before it goes dead.
        ``connection_urls``: a URL per connection ("claim", "write", "listen") where one must
        differ from ``database_url`` (e.g. a direct URL for LISTEN behind a pooler).
        ``pooler``: ``database_url`` is a transaction pooler's (PgBouncer): the claim and
        write connections send their settings per transaction and prepare nothing (see
        db.Database); the listen connection needs its own, direct, URL, or the worker polls.
        ``cancel_grace``: how long a handler told to stop (cancel request, deadline) has before
        its outcome is written without it (see executor.py)."""
        if not queues:
            raise ValueError("a worker needs at least one queue")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not 0 < heartbeat_fraction <= 0.5:
            raise ValueError("heartbeat_fraction must be in (0, 0.5] so a lease is renewed in time")
        if unrunnable_grace < 0:
            raise ValueError("unrunnable_grace must be >= 0")
        if cancel_grace < 0:
            raise ValueError("cancel_grace must be >= 0")
        unknown_roles = set(connection_urls or {}) - {"claim", "write", "listen"}
        if unknown_roles:
            raise ValueError(f"unknown connection roles {sorted(unknown_roles)}")
        self.app = app
        self.queues = list(dict.fromkeys(queues))
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.shutdown_grace = shutdown_grace
        self.worker_id = worker_id or make_worker_id()
        urls = dict(connection_urls or {})

        def conn(role: str, synchronous_commit: bool = True) -> WorkerConnection:
            return WorkerConnection(
                urls.get(role, database_url),
                schema=schema,
                connect_timeout=connect_timeout,
                statement_timeout=statement_timeout,
                application_name=f"skiplock-worker-{role}",
                synchronous_commit=synchronous_commit,
                # A URL of its own for a role is a direct one (LISTEN's behind a pooler); one
                # that is not after all is found out on connecting.
                pooler=pooler and role not in urls,
            )

        # Claims (and rescues) commit without waiting for the WAL flush: a claim lost in a
        # server crash leaves the job queued, to be claimed again, and the fences (locked_by,
        # attempts) reject the first runner's writes, which is what a crash means anyway.
        # It takes one fsync off every job's path to its handler. Outcomes, heartbeats and
        # task registration stay durable on the write connection.
        self._claim_db = conn("claim", synchronous_commit=False)
        self._write_db = conn("write")
        self._listen_db = conn("listen")
        self.state = WorkerState(self.worker_id, concurrency, lease_seconds)
        self.failure: str | None = None
        # services that ignored their cancellation at shutdown (Supervisor.stop): the CLI
        # leaves the process at once, as asyncio.run would wait for them again, for ever
        self.stuck_services: list[str] = []
        self._hurry = asyncio.Event()
        self.supervisor = Supervisor(self._fail, self.state.stopping.is_set)
        heartbeat = lease_seconds * heartbeat_fraction
        self.executor = Executor(
            self.state,
            app,
            max_result_bytes=max_result_bytes,
            unrunnable_grace=unrunnable_grace,
            report_failure=self.supervisor.report,
            cancel_grace=cancel_grace,
        )
        self.completer = Completer(self.state, self._write_db)
        self.monitor = Monitor(self.state, self.supervisor.problems)
        self.registry = Registry(
            self.state, self._claim_db, app, self.queues, heartbeat, self.health
        )
        self.claimer = Claimer(self.state, self._claim_db, self.executor, self.queues,
                               poll_interval)
        cancel_watcher = CancelWatcher(self.state, self._claim_db, poll_interval,
                                       self.executor.cancel)
        self.services: dict[str, Any] = {
            s.name: s
            for s in (
                self.claimer,
                self.completer,
                LeaseRenewer(self.state, self._write_db, heartbeat, self.executor.cancel),
                Listener(self.state, self._listen_db, schema, self.queues, poll_interval,
                         cancel_watcher.look_now),
                cancel_watcher,
                Rescuer(self._claim_db, self.queues, lease_seconds),
                self.registry,
                self.monitor,
                # periodic jobs: every worker fires due schedules, no leader (scheduler.py).
                # On the claim connection, not the write one: there its statements would queue
                # behind and ahead of lease renewals (docs/schedules.md says why this one)
                Scheduler(self._claim_db, app, poll_interval),
            )
        }
        self.ready = asyncio.Event()

    @classmethod
    def from_settings(cls, app: App, settings: Settings, **overrides: Any) -> Worker:
        url = settings.require_url()
        params: dict[str, Any] = {
            "concurrency": settings.concurrency,
            "lease_seconds": settings.lease_seconds,
            "poll_interval": settings.poll_interval,
            "shutdown_grace": settings.shutdown_grace,
            "schema": settings.schema_name,
            "connect_timeout": settings.connect_timeout,
            "statement_timeout": settings.statement_timeout,
            "worker_id": make_worker_id(settings.worker_name) if settings.worker_name else None,
            "max_result_bytes": settings.max_result_bytes,
            "unrunnable_grace": settings.unrunnable_grace,
            "cancel_grace": settings.cancel_grace,
            **_pooler_settings(settings),
        }
        params.update({k: v for k, v in overrides.items() if v is not None})
        return cls(app, url, **params)

    @property
    def processed(self) -> int:
        """Jobs whose final outcome of an attempt (success, retry, dead) this worker wrote."""
        return self.state.processed

    def health(self) -> Health:
        """What /livez reports; safe to call from another thread (it reads a snapshot)."""
        return stale(self.monitor.snapshot, time.monotonic(), max_age=10 * MONITOR_INTERVAL)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; running jobs get the grace period to finish (SIGTERM does this)."""
        if not self.state.stopping.is_set():
            log.info("stopping: no new claims; %d job(s) running", len(self.state.executing))
        self.state.stopping.set()
        self.state.wake.set()

    def _fail(self, why: str) -> None:
        """A service keeps failing: stop as for SIGTERM, and exit non-zero (WorkerFailed)."""
        self.failure = self.failure or why
        self.request_stop()

    def _on_signal(self) -> None:
        if self.state.stopping.is_set():
            log.warning("second signal: releasing every unfinished job now")
            self._hurry.set()
        self.request_stop()

    async def _release_in_time(self, executing_only: bool) -> None:
        """The release, bounded after a second signal (a hung database must not keep a
        double Ctrl-C waiting for minutes)."""
        try:
            async with asyncio.timeout(3.0 if self._hurry.is_set() else None):
                await self._release_unfinished(executing_only=executing_only)
        except TimeoutError:
            log.warning("could not release the unfinished jobs in time; their leases will "
                        "expire and they will run again")

    async def run(self, install_signal_handlers: bool = False) -> None:
        """Serve until request_stop() (or SIGTERM/SIGINT with install_signal_handlers).

        Raises WorkerFailed when a service kept failing (after draining as for SIGTERM)."""
        with logs.bind(worker_id=self.worker_id):
            await self._run(install_signal_handlers)
        if self.failure:
            raise WorkerFailed(self.failure)

    async def _run(self, install_signal_handlers: bool) -> None:
        loop = asyncio.get_running_loop()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal)
        log.info(
            "worker %s starting: queues=%s concurrency=%d lease=%.0fs loop=%s",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.lease_seconds,
            loop_name(loop),
        )
        metrics.declare_series(self.queues, list(self.app.tasks), list(self.services))
        try:
            # The monitor first: /livez must not call a worker still retrying its start-up
            # (a slow database) "stuck".
            self.supervisor.start(self.monitor)
            await self._register()
            for name, service in self.services.items():
                if name not in ("claimer", "monitor"):
                    self.supervisor.start(service)
            # Claiming starts last: peers' tasks are known (a rolling deploy's jobs are left
            # to them from the first claim on).
            self.supervisor.start(self.claimer)
            self.ready.set()
            await self.state.stopping.wait()
            # A claim in flight has committed its rows: let it hand them to the executor
            # (so they are drained or released) rather than cancel it and orphan them.
            # (asyncio.wait: neither cancels the claim on timeout nor swallows a cancellation
            # of this worker, as suppressing CancelledError around wait_for did.)
            claiming = self.supervisor.tasks.get("claimer")
            if claiming is not None:
                await asyncio.wait([claiming], timeout=self._claim_db.deadline)
            await self._drain()
        finally:
            # Cancelled services end at their next await. The wait for one that does not is
            # short: the pod's flush margin (10 s past the drain) must still hold the last
            # writes and releases, and a second signal has promised ~3 s in all.
            self.stuck_services = await self.supervisor.stop(
                grace=STUCK_SERVICE_GRACE_HURRIED if self._hurry.is_set()
                else STUCK_SERVICE_GRACE)
            await self._finish()

    async def _register(self) -> None:
        """Tasks into the catalogue, this worker into the registry, a first heartbeat and a
        first rescue."""
        failures = 0
        entries = [(t.name, t.params, t.max_attempts, t.queue) for t in self.app.tasks.values()]
        while not self.state.stopping.is_set():
            try:
                await self._write_db.require_schema()
                await self._write_db.register_tasks(entries)
                await self.registry.register()
                await self.registry.run_once()
                # Expired leases back in the queue before the first claim: a crashed worker's
                # jobs keep their place at the head of the queue instead of waiting behind it.
                await self.services["rescuer"].run_once()
                return
            except DatabaseUnavailable as exc:
                failures += 1
                delay = reconnect_delay(failures)
                log.warning("%s; retrying in %.1fs", exc, delay)
                await wait_event(self.state.stopping, delay)

    async def run_once(self) -> int:
        """Claim one batch, run it and record the outcomes (for tests and scripts)."""
        await self._register()
        n = await self.claimer.run_once(self.concurrency)
        if self.state.executing:
            await asyncio.gather(*self.state.executing.values(), return_exceptions=True)
        await self.completer.flush_all(deadline=time.monotonic() + 30)
        return n

    # -- shutdown ----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Running jobs get the grace period (cut short by a second signal); what is still
        running then is released, fenced, before its task is cancelled."""
        running = list(self.state.executing.values())
        if running and not self._hurry.is_set():
            log.info("waiting up to %.0fs for %d running job(s)", self.shutdown_grace,
                     len(running))
            all_done = asyncio.ensure_future(asyncio.wait(running))
            hurry = asyncio.ensure_future(self._hurry.wait())
            await asyncio.wait([all_done, hurry], timeout=max(self.shutdown_grace, 0.001),
                               return_when=asyncio.FIRST_COMPLETED)
            all_done.cancel()  # cancels the waiting only, not the jobs
            hurry.cancel()
        await self._release_in_time(executing_only=True)
        for task in list(self.state.executing.values()):
            task.cancel()

    async def _finish(self) -> None:
        # After a second signal the database gets a few seconds in all, not a timeout per call.
        budget = 3.0 if self._hurry.is_set() else None
        try:
            async with asyncio.timeout(budget):
                await self._finish_writes()
        except TimeoutError:
            log.warning("gave up writing the last outcomes and releases after a second signal; "
                        "their leases will expire")
        # Released (or written) by now: a handler still running (its drain was cut short by a
        # cancellation of this worker) is stopped, not left to run a job another worker has.
        for task in list(self.state.executing.values()):
            task.cancel()
        for c in (self._claim_db, self._write_db, self._listen_db):
            await c.close()
        self.executor.shutdown()
        log.info("worker %s stopped after %d job(s)", self.worker_id, self.state.processed)

    async def _finish_writes(self) -> None:
        try:
            await self.completer.flush_all(
                deadline=time.monotonic() + (1.0 if self._hurry.is_set() else 5.0)
            )
        except Exception:
            log.exception("could not write the last outcomes")
        await self._release_unfinished(executing_only=False)
        with contextlib.suppress(SkiplockError):
            await self._claim_db.forget_worker(self.worker_id)

    async def _release_unfinished(self, *, executing_only: bool) -> None:
        """Hand back runs this worker still holds (still running; with ``executing_only``
        False also those whose outcome could not be written): the attempt does not count,
        and another worker can take the job at once instead of waiting for the lease."""
        runs = [r for _, r in sorted(self.state.owned.items())
                if r.executing or not executing_only]
        if not runs:
            return
        for attempt in range(1, 4):
            try:
                released = await self._write_db.release(
                    [(r.job.id, r.job.attempt) for r in runs], self.worker_id
                )
                break
            except SkiplockError as exc:
                log.warning("%s; could not release jobs (try %d)", exc, attempt)
                await asyncio.sleep(0.1 if self._hurry.is_set() else reconnect_delay(attempt))
        else:
            return
        for run in runs:
            self.state.forget(run.job)
            if run.job.id in released:
                metrics.JOBS_RELEASED.labels(run.job.queue).inc()
        # Outcomes of released runs must never be written.
        taken = self.state.outcomes.take()
        self.state.outcomes.settled(taken)
        self.state.outcomes.put_back([o for o in taken if self.state.holds(o.run.job)])
        log.info("released %d unfinished job(s) for other workers", len(released))
