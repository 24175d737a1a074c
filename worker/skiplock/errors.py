"""One root error type; driver errors are wrapped at the database boundary."""

from __future__ import annotations


class SkiplockError(Exception):
    """Root of every error Skiplock raises on purpose."""


class ConfigurationError(SkiplockError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class DatabaseUnavailable(SkiplockError):
    """The database could not be reached (or stopped answering) within the bounded timeout."""


class SchemaMissing(DatabaseUnavailable):
    """The database answers but the Skiplock schema is not there: run ``skiplock migrate``."""


class EnqueueOutcomeUnknown(DatabaseUnavailable):
    """The connection died while committing: the job may or may not exist.

    Retry with the same ``unique_key`` to make the retry safe. ``job_id``: for a single job
    without a unique_key, the id it has if it was stored (taken ahead of its insert, so no
    other job can have it: ``get_job(job_id)`` tells); None otherwise.
    """

    def __init__(self, message: str, *, job_id: int | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class MigrationBlocked(DatabaseUnavailable):
    """A migration could not take a lock it needs within its lock timeout, after retries: a
    long transaction holds the table. Nothing of that migration was applied; retry later."""


class DataRefused(SkiplockError):
    """The database answered and refused the data itself (SQLSTATE class 22, 23 or 54: an
    invalid value, a constraint, a size or nesting limit). Retrying the same data cannot help;
    the worker splits a refused batch to find the one outcome that caused it."""


class WorkerFailed(SkiplockError):
    """A worker service kept failing; the worker drained and stopped (exit non-zero so that
    the process supervisor, e.g. Kubernetes, restarts it)."""


class UnknownTask(SkiplockError):
    """The task name is not in the catalogue that running workers registered."""


class InvalidArguments(SkiplockError):
    """The job arguments do not fit the task's signature."""


class JobNotFound(SkiplockError):
    """No job has this id."""


class IdempotencyConflict(SkiplockError):
    """The idempotency key (``unique_key``, the ``Idempotency-Key`` header) was already used
    for a different request: nothing was stored. ``job_ids`` are the jobs the key's first
    request created (``job_id`` the first of them); ``reason`` says what differs."""

    def __init__(self, key: str, job_ids: list[int], reason: str) -> None:
        self.key = key
        self.job_ids = job_ids
        self.job_id = job_ids[0] if job_ids else None
        self.reason = reason
        jobs = (f"job {job_ids[0]}" if len(job_ids) == 1
                else f"{len(job_ids)} jobs ({job_ids[0]}..{job_ids[-1]})" if job_ids
                else "another job of the same call")
        super().__init__(
            f"idempotency key {key!r} was already used for a different request ({jobs}): "
            f"{reason}. Nothing was stored. Send the first request unchanged to get its "
            "job, or use a new key for a new request.")


class InvalidTransition(SkiplockError):
    """The job is not in a state that allows the requested action."""


class PermanentError(SkiplockError):
    """Raise from a handler to fail the job at once, without retries."""


class JobCancelled(SkiplockError):
    """Raised by ``ctx.raise_if_cancelled()`` in a handler whose job was cancelled or ran past
    its deadline: let it propagate (the job ends cancelled, or the attempt timed out)."""


class Snooze(Exception):  # a request, not an error: ``raise Snooze(60)``
    """Raise from a handler to run the job again ``seconds`` from now (database time), without
    counting an attempt. A task snoozes at most ``max_snoozes`` times (then the job is dead)."""

    MAX_SECONDS = 31_536_000.0  # one year

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            0 <= seconds <= self.MAX_SECONDS
        ):
            raise ValueError(
                f"Snooze(seconds) takes 0 to {self.MAX_SECONDS:.0f} seconds, got {seconds!r}"
            )
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)
