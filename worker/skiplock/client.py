"""Producers: enqueue one job, many jobs (COPY), or inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import math
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from .catalogue import check_known, validate_args
from .db import Database, NewJob
from .errors import ConfigurationError, InvalidArguments, UnknownTask
from .idempotency import check_key
from .names import MAX_QUEUE_NAME, queue_problem, task_problem
from .outcomes import storable_text
from .settings import Settings

_CATALOGUE_TTL = 5.0
# Strict (no default=): what it cannot encode is an error for the producer, not a string.
_to_json = json.JSONEncoder(separators=(",", ":")).encode


# One year: a longer deadline is a typo, and the database refuses it (jobs_timeout_positive).
MAX_TIMEOUT = 31_536_000.0


def check_timeout(timeout: float | dt.timedelta | None) -> float | None:
    """A job deadline in seconds, or InvalidArguments saying what is wrong with it."""
    if timeout is None:
        return None
    if isinstance(timeout, dt.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArguments(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidArguments(
            f"timeout must be > 0 and at most {MAX_TIMEOUT:.0f} seconds (one year), got {timeout}"
        )
    return float(timeout)


def check_args_size(task: str, args_json: str, max_bytes: int) -> None:
    """InvalidArguments when a job's arguments (as JSON) are over ``max_bytes``: every claim
    loads them into a worker, ``concurrency`` at a time, so one huge job is an out-of-memory."""
    # _to_json escapes non-ASCII (ensure_ascii), so characters are bytes.
    size = len(args_json)
    if size > max_bytes:
        raise InvalidArguments(
            f"arguments for {task!r} are {_mib(size)} as JSON, over the {_mib(max_bytes)} limit "
            "(SKIPLOCK_MAX_ARGS_BYTES): store large data elsewhere (a table, object storage) "
            "and pass its key"
        )


# Nesting of job arguments: far more than real arguments need, well inside what every reader
# copes with (pydantic, which the API answers with, gives up serialising at 255 levels; a
# worker thread decodes with less stack than the producer had).
MAX_ARGS_DEPTH = 128


def _too_deep(args: Mapping[str, Any], args_json: str) -> bool:
    """Nested deeper than MAX_ARGS_DEPTH (``args`` itself is level 1)."""
    if args_json.count("[") + args_json.count("{") <= MAX_ARGS_DEPTH:
        return False  # the common case: too few brackets to be that deep, no walk
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > MAX_ARGS_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


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
        url = database_url or s.database_url
        if not url:
            raise ConfigurationError(
                "no database URL: pass Client(database_url) or set SKIPLOCK_DATABASE_URL "
                "(e.g. postgresql://user:pass@localhost:5432/app)"
            )
        self.validate = validate
        self.db = Database(
            url,
            schema=schema or s.schema_name,
            connect_timeout=connect_timeout or s.connect_timeout,
            statement_timeout=s.statement_timeout,
            application_name="skiplock-client",
        )
        self._catalogue: dict[str, dict[str, Any]] = {}
        self._catalogue_at = float("-inf")
        self.max_args_bytes = s.max_args_bytes

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def catalogue(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """Tasks that workers registered (cached briefly; refreshed on an unknown name)."""
        if refresh or time.monotonic() - self._catalogue_at > _CATALOGUE_TTL:
            self._catalogue = self.db.list_tasks()
            self._catalogue_at = time.monotonic()
        return self._catalogue

    def _prepare(
        self,
        task: str,
        args: Mapping[str, Any] | None,
        queue: str | None,
        priority: int,
        max_attempts: int | None,
        run_at: dt.datetime | None,
        delay: float | dt.timedelta | None,
        unique_key: str | None,
        validate: bool | None,
        timeout: float | dt.timedelta | None = None,
    ) -> NewJob:
        # Names are bounded (see names.py): every queue costs a stats subquery, a metrics
        # series and a dashboard line, so free-form names are a way to run the API out of room.
        problem = task_problem(task) or (queue_problem(queue) if queue is not None else None)
        if problem:
            raise InvalidArguments(problem)
        arguments = dict(args) if args else {}
        if arguments and not all(isinstance(k, str) for k in arguments):
            raise InvalidArguments("argument names must be strings")
        try:
            args_json = _to_json(arguments) if arguments else "{}"
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(
                f"arguments for {task!r} must be JSON-serialisable: {exc}"
            ) from None
        except RecursionError:
            args_json = ""  # deeper than Python's recursion limit (a cycle is a ValueError)
        if not args_json or _too_deep(arguments, args_json):
            raise InvalidArguments(
                f"arguments for {task!r} are nested more than {MAX_ARGS_DEPTH} levels deep: "
                "send flatter JSON"
            )
        check_args_size(task, args_json, self.max_args_bytes)
        if run_at is not None and delay is not None:
            raise InvalidArguments("pass run_at or delay, not both")
        if run_at is not None and run_at.tzinfo is None:
            raise InvalidArguments(
                "run_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
            )
        if isinstance(delay, dt.timedelta):
            delay = delay.total_seconds()
        if delay is not None and delay < 0:
            raise InvalidArguments("delay must be >= 0 seconds")
        if not -32768 <= priority <= 32767:
            raise InvalidArguments(
                "priority must fit in a smallint (-32768..32767); lower runs first"
            )
        if max_attempts is not None and max_attempts < 1:
            raise InvalidArguments("max_attempts must be >= 1")
        timeout = check_timeout(timeout)
        entry: Mapping[str, Any] | None = None
        if validate if validate is not None else self.validate:
            catalogue = self.catalogue()
            if catalogue and task not in catalogue:
                catalogue = self.catalogue(refresh=True)
            if catalogue:
                entry = check_known(task, catalogue)
                validate_args(task, entry["params"], arguments)
        return NewJob(
            task=task,
            args=arguments,
            args_json=args_json,
            queue=queue if queue is not None else (entry["queue"] if entry else "default"),
            priority=priority,
            max_attempts=max_attempts or (int(entry["max_attempts"]) if entry else 5),
            run_at=run_at,
            delay=delay,
            unique_key=None if unique_key is None else check_key(unique_key),
            timeout=timeout,
        )

    def enqueue(
        self,
        task: str,
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
        job = self._prepare(
            task, args, queue, priority, max_attempts, run_at, delay, unique_key, validate,
            timeout,
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
        """
        prepared = []
        for i, spec in enumerate(jobs):
            try:
                prepared.append(
                    self._prepare(
                        spec["task"],
                        spec.get("args"),
                        spec.get("queue"),
                        spec.get("priority", 0),
                        spec.get("max_attempts"),
                        spec.get("run_at"),
                        None,
                        spec.get("unique_key"),
                        validate,
                        spec.get("timeout"),
                    )
                )
            except KeyError:
                raise InvalidArguments(f"job #{i} has no 'task'") from None
            except (InvalidArguments, UnknownTask) as exc:
                raise type(exc)(f"job #{i}: {exc}") from None
        if not prepared:
            return 0
        if all(j.run_at is None and j.unique_key is None and j.timeout is None
               for j in prepared):
            return self.db.enqueue_copy(prepared)
        return len(self.db.enqueue_unnest(prepared))

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        return self.db.get_job(job_id)

    def retry(self, job_id: int) -> bool:
        return self.db.retry_job(job_id) is not None

    def cancel(
        self, job_id: int, reason: str | None = None, *, by: str | None = None
    ) -> str | None:
        """Cancel a job: "cancelled" (it was queued), "requested" (it is running: its worker
        stops the handler and the job ends cancelled), or None (finished, or already asked).

        ``by`` (default: this client's user@host) and ``reason`` go into the job's error
        history."""
        who = (by or f"client {user_at_host()}") + (f" ({reason})" if reason else "")
        state = self.db.cancel_job(job_id, who)
        return {"cancelled": "cancelled", "running": "requested"}.get(state or "")

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


def user_at_host() -> str:
    """``user@host`` for the record of who did something (user ``?`` when the process has no
    user name: a container running as a uid without a passwd entry)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}"
