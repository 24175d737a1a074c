"""Producers: enqueue one job, many jobs (COPY), or inside the caller's transaction."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import psycopg

from .catalogue import check_known, validate_args
from .db import Database, NewJob
from .errors import ConfigurationError, InvalidArguments, UnknownTask
from .settings import Settings

_CATALOGUE_TTL = 5.0
# Strict (no default=): what it cannot encode is an error for the producer, not a string.
_to_json = json.JSONEncoder(separators=(",", ":")).encode


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
    ) -> NewJob:
        if not isinstance(task, str) or not task.strip():
            raise InvalidArguments("task name must be a non-empty string")
        arguments = dict(args) if args else {}
        if arguments and not all(isinstance(k, str) for k in arguments):
            raise InvalidArguments("argument names must be strings")
        try:
            args_json = _to_json(arguments) if arguments else "{}"
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(
                f"arguments for {task!r} must be JSON-serialisable: {exc}"
            ) from None
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
            queue=queue or (entry["queue"] if entry else "default"),
            priority=priority,
            max_attempts=max_attempts or (int(entry["max_attempts"]) if entry else 5),
            run_at=run_at,
            delay=delay,
            unique_key=unique_key,
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
    ) -> int:
        """Insert a job and return its id (the existing job's id for a repeated unique_key)."""
        job = self._prepare(
            task, args, queue, priority, max_attempts, run_at, delay, unique_key, validate
        )
        job_id, _created = self.db.enqueue(job, connection=connection)
        return job_id

    def enqueue_many(
        self, jobs: Iterable[Mapping[str, Any]], *, validate: bool | None = None
    ) -> int:
        """Insert many jobs in one round trip (COPY when it can); returns how many were inserted.

        Each item: ``{"task": ..., "args": {...}, "queue"?, "priority"?, "max_attempts"?,
        "run_at"?, "unique_key"?}``. Jobs whose unique_key already exists are skipped.
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
                    )
                )
            except KeyError:
                raise InvalidArguments(f"job #{i} has no 'task'") from None
            except (InvalidArguments, UnknownTask) as exc:
                raise type(exc)(f"job #{i}: {exc}") from None
        if not prepared:
            return 0
        if all(j.run_at is None and j.unique_key is None for j in prepared):
            return self.db.enqueue_copy(prepared)
        return len(self.db.enqueue_unnest(prepared))

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        return self.db.get_job(job_id)

    def retry(self, job_id: int) -> bool:
        return self.db.retry_job(job_id) is not None

    def cancel(self, job_id: int) -> bool:
        return self.db.cancel_job(job_id)
