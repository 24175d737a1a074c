"""Producers: enqueue one job, many jobs (COPY), or inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
import getpass
import socket
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from . import collector, transitions
from .copy_data import CopyBatch
from .db import Database
from .errors import InvalidArguments, SkiplockError
from .handles import TaskHandle, task_name
from .names import MAX_QUEUE_NAME, queue_problem
from .outcomes import storable_text
from .preparation import (
    Catalogue,
    bulk_plan,
    job_specs,
    prepare_job,
)
from .settings import Settings
from .waiting import WaitHub, check_wait_timeout

if TYPE_CHECKING:  # annotations only: a sync producer never loads the async pool
    from .adb import AsyncDatabase


class Client:
    """Enqueue jobs and manage them. Thread-safe; keep one per process."""

    def __init__(
        self,
        database_url: str | None = None,
        *,
        schema: str | None = None,
        connect_timeout: float | None = None,
        validate: bool = True,
        settings: Settings | None = None,
    ) -> None:
        s = settings or Settings()
        self.validate = validate
        self.db = Database.from_settings(
            s, application_name="skiplock-client", url=database_url, schema=schema,
            connect_timeout=connect_timeout)
        self._catalogue = Catalogue(self.db.list_tasks)
        self.max_args_bytes = s.max_args_bytes
        self._settings = s
        self._hub: WaitHub | None = None
        self._hub_lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._hub_lock:
            hub, self._hub = self._hub, None
            self._closed = True
        if hub is not None:
            hub.close()
        self.db.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def catalogue(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Tasks that workers registered (cached briefly; refreshed on an unknown name)."""
        return self._catalogue.tasks(refresh)

    def _checked_against(self, validate: bool | None) -> Catalogue | None:
        """The catalogue prepare_job checks a job against; None to skip the check."""
        return self._catalogue if (validate if validate is not None else self.validate) else None

    def enqueue(
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
        connection: psycopg.Connection[Any] | None = None,
        timeout: float | dt.timedelta | None = None,
    ) -> int:
        """Insert a job and return its id.

        ``unique_key`` is an idempotency key (the HTTP API's ``Idempotency-Key`` shares its
        keys): repeating the same request with it returns the first job's id and stores
        nothing (also after that job was pruned, for SKIPLOCK_IDEMPOTENCY_RETENTION); the key
        with a different request (another task, queue, arguments, schedule...) raises
        IdempotencyConflict, whose ``job_id`` is the key's job and ``reason`` what differs.

        ``timeout``: this job's deadline per attempt, overriding the task's own."""
        job = prepare_job(
            task_name(task), args, queue=queue, priority=priority, max_attempts=max_attempts,
            run_at=run_at, delay=delay, unique_key=unique_key, timeout=timeout,
            max_args_bytes=self.max_args_bytes, catalogue=self._checked_against(validate),
        )
        job_id, _created = self.db.enqueue(job, connection=connection)
        return job_id

    def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, validate: bool | None = None
    ) -> int:
        """Insert many jobs in one round trip (COPY when it can); returns how many were inserted.

        Each item: ``{"task": ..., "args": {...}, "queue"?, "priority"?, "max_attempts"?,
        "run_at"?, "unique_key"?, "timeout"?}``. A job whose unique_key was already used for
        the same job is skipped (not counted); for a different job, IdempotencyConflict and
        nothing is stored. Keyed jobs take the unnest path; COPY stays keyless.

        COPY sends the jobs in blocks of 1,000 while it prepares the next (the server stores
        one block while the next is checked): a job refused in a later block ends the COPY
        and nothing is stored. The catalogue (with ``validate``) is read before any job is
        checked, as the AsyncClient does, and the COPY's connection is taken after the first
        block: with the database unreachable, that error comes before a bad job. The time
        spent preparing counts towards the statement timeout.
        """
        # every job of the call stays alive until it returns: no cyclic pass walks them
        # again and again meanwhile (skiplock/collector.py)
        with collector.paused():
            specs = job_specs(jobs)
            if not specs:
                return 0
            checked = self._checked_against(validate)
            # read now: the COPY prepares its blocks while it holds a pooled connection
            catalogue = checked.snapshot(s.get("task") for s in specs) if checked else None
            plan = bulk_plan(specs, max_args_bytes=self.max_args_bytes, catalogue=catalogue)
            if isinstance(plan, CopyBatch):
                return self.db.enqueue_copy(plan)
            return len(self.db.enqueue_unnest(plan))

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        return self.db.get_job(transitions.check_job_id(job_id))

    def retry(self, job_id: int) -> bool:
        """Queue a dead or cancelled job again; False when there is none, or it is neither."""
        return transitions.retried(transitions.retry(self.db, transitions.check_job_id(job_id)))

    def cancel(
        self, job_id: int, reason: str | None = None, *, by: str | None = None
    ) -> str | None:
        """Cancel a job: "cancelled" (it was queued), "requested" (it is running: its worker
        stops the handler and the job ends cancelled), or None (finished, or already asked).

        ``by`` (default: this client's user@host) and ``reason`` go into the job's error
        history."""
        who = transitions.requester(by or f"client {user_at_host()}", reason)
        answer = transitions.cancel(self.db, transitions.check_job_id(job_id), who)
        return transitions.cancel_result(answer)

    def wait(self, job_id: int, timeout: float = 60.0) -> Any:
        """Block until job ``job_id`` finished: its result when it succeeded; JobDead,
        JobWasCancelled, JobNotFound, or WaitTimeout after ``timeout`` seconds (at most a
        day). Woken by the completion NOTIFY, polling as the fallback; every waiter of this
        client shares one connection (skiplock/waiting.py). Thread-safe."""
        job_id = transitions.check_job_id(job_id)
        seconds = check_wait_timeout(timeout)
        with self._hub_lock:
            self._hub = hub = wait_hub(self._hub, self._closed, self.db, self._settings)
        return hub.wait(job_id, seconds)

    def pause_queue(
        self, queue: str, reason: str | None = None, *, by: str | None = None
    ) -> PausedQueue:
        """Stop workers claiming from ``queue``; running jobs finish, new ones wait.

        Workers hear it through NOTIFY at once, and the claim itself skips paused queues, so
        a worker that missed the notification does not claim either. Pausing a paused queue
        changes nothing and returns the first pause (``newly_paused`` False).

        ``queue`` follows the rule for enqueueing (skiplock.names): a paused queue is listed
        in every stats view and metrics scrape, jobs or not. ``by`` says who pauses (default
        ``client USER@HOST``); ``reason`` is stored after it."""
        problem = queue_problem(queue)
        if problem:
            raise InvalidArguments(problem)
        if reason is not None:
            if not isinstance(reason, str):
                raise InvalidArguments(f"reason must be text, got {type(reason).__name__}")
            if len(reason) > MAX_PAUSE_REASON:
                raise InvalidArguments(
                    f"reason is {len(reason)} characters long; at most {MAX_PAUSE_REASON}")
            if storable_text(reason) != reason:
                raise InvalidArguments("reason must not contain NUL characters or lone "
                                       "surrogates")
        who = by or f"client {user_at_host()}"
        row = self.db.pause_queue(queue, f"{who}: {reason}" if reason else who)
        return PausedQueue(row["queue"], row["paused_at"], row["paused_by"],
                           bool(row["newly_paused"]))

    def resume_queue(self, queue: str) -> bool:
        """Let workers claim from ``queue`` again (idle ones are woken at once); False when it
        was not paused.

        Any name the table can hold is taken, not only those ``pause_queue`` takes: a queue
        paused by hand in SQL (or under an older rule) can always be resumed."""
        return self.db.resume_queue(stored_queue_name(queue))

    def paused_queues(self) -> list[PausedQueue]:
        """Every paused queue, by name."""
        return [PausedQueue(r["queue"], r["paused_at"], r["paused_by"])
                for r in self.db.paused_queues()]


# Read by people in `skiplock queue list`; stored after who paused it, within paused_by's 1000.
MAX_PAUSE_REASON = 500


@dataclass(frozen=True)
class PausedQueue:
    queue: str
    paused_at: dt.datetime
    paused_by: str | None  # who paused it, then ": reason" when one was given
    # False when it was paused already: that first pause is kept (its time, who and why)
    newly_paused: bool = False


def stored_queue_name(queue: str) -> str:
    """``queue`` as given if a queue column can hold it (1..128 characters of text PostgreSQL
    stores), or InvalidArguments saying what is wrong. Never trimmed or cleaned up: a changed
    name would act on another queue. (New names follow the stricter names.queue_problem.)"""
    if not isinstance(queue, str):
        raise InvalidArguments(f"queue name must be text, got {type(queue).__name__}")
    if not queue:
        raise InvalidArguments("queue name must not be empty")
    if len(queue) > MAX_QUEUE_NAME:
        raise InvalidArguments(
            f"queue name is {len(queue)} characters long; at most {MAX_QUEUE_NAME}")
    if storable_text(queue) != queue:
        raise InvalidArguments("queue name must not contain NUL characters or lone surrogates")
    return queue


def wait_hub(hub: WaitHub | None, closed: bool, db: Database | AsyncDatabase,
             settings: Settings) -> WaitHub:
    """A client's WaitHub (Client's and AsyncClient's): ``hub``, or one made on the first
    wait, on the client's own database settings; SkiplockError once the client is closed."""
    if closed:
        raise SkiplockError("client closed: it cannot wait for jobs any more")
    if hub is not None:
        return hub
    return WaitHub.for_url(db.url, db.schema, settings, connect_timeout=db.connect_timeout,
                           pooler=db.pooler)


def user_at_host() -> str:
    """``user@host`` for the record of who did something (user ``?`` when the process has no
    user name: a container running as a uid without a passwd entry)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"
