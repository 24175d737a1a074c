"""Retry and cancel of one job, and why either may not happen: one answer for every caller.

The CLI maps an Answer to its output and exit code, the HTTP API to a status (404, 409), the
Python Client to its return value; the words for "not found" and "wrong state" are here only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .db import Database

if TYPE_CHECKING:  # only for annotations: the CLI and HTTP API never load the async pool
    from .adb import AsyncDatabase
from .errors import InvalidArguments, InvalidTransition, JobNotFound, SkiplockError

# jobs.id is a bigint identity: 1 .. 2**63-1.
MAX_JOB_ID = 2**63 - 1


class Outcome(enum.Enum):
    DONE = "done"  # retry: queued again; cancel: cancelled at once (it was queued)
    REQUESTED = "requested"  # cancel of a running job: its worker stops it
    ALREADY_REQUESTED = "already requested"  # running, asked to stop before: nothing changed
    NOT_FOUND = "not found"  # no such job (never was, or pruned or deleted)
    WRONG_STATE = "wrong state"  # the job's state does not allow it (``state`` says which)


@dataclass(frozen=True)
class Answer:
    job_id: int
    action: str  # "retry" or "cancel"
    outcome: Outcome
    state: str | None = None  # the job's state when it was not changed
    cancel_reason: str | None = None  # ALREADY_REQUESTED: who asked first, and why

    @property
    def message(self) -> str:
        """What happened, for a person."""
        n = self.job_id
        if self.outcome is Outcome.NOT_FOUND:
            return f"job {n} does not exist (it may have been pruned)"
        if self.outcome is Outcome.WRONG_STATE:
            allowed = "dead or cancelled" if self.action == "retry" else "queued or running"
            done = "retried" if self.action == "retry" else "cancelled"
            return f"job {n} is {self.state}; only {allowed} jobs can be {done}"
        if self.outcome is Outcome.ALREADY_REQUESTED:
            return (f"job {n}: a cancel was already requested ({self.cancel_reason or '?'}); "
                    "its worker is stopping it")
        if self.outcome is Outcome.REQUESTED:
            return (f"job {n} is running: cancel requested; its worker stops the handler and "
                    "the job ends cancelled")
        return f"job {n} queued again" if self.action == "retry" else f"job {n} cancelled"

    def refusal(self) -> SkiplockError | None:
        """The error for an answer that changed nothing because it could not (JobNotFound,
        InvalidTransition); None when it was done, requested, or asked already."""
        if self.outcome is Outcome.NOT_FOUND:
            return JobNotFound(self.message)
        if self.outcome is Outcome.WRONG_STATE:
            return InvalidTransition(self.message)
        return None


def retry_answer(job_id: int, retried: bool, state: str | None) -> Answer:
    """``retried``: the retry changed the job; ``state``: its state otherwise (None: none)."""
    if retried:
        return Answer(job_id, "retry", Outcome.DONE)
    if state is None:
        return Answer(job_id, "retry", Outcome.NOT_FOUND)
    return Answer(job_id, "retry", Outcome.WRONG_STATE, state=state)


def cancel_answer(job_id: int, done: str | None, job: Mapping[str, Any] | None) -> Answer:
    """``done``: what Database.cancel_job did ('cancelled', 'running' or None); ``job``: the
    job's row when it did nothing (None: there is none)."""
    if done == "cancelled":
        return Answer(job_id, "cancel", Outcome.DONE)
    if done == "running":
        return Answer(job_id, "cancel", Outcome.REQUESTED)
    if job is None:
        return Answer(job_id, "cancel", Outcome.NOT_FOUND)
    state = str(job["state"])
    if state == "running":  # cancel_job does nothing to a running job only when asked before
        return Answer(job_id, "cancel", Outcome.ALREADY_REQUESTED, state=state,
                      cancel_reason=job.get("cancel_reason"))
    return Answer(job_id, "cancel", Outcome.WRONG_STATE, state=state)


def retry(db: Database, job_id: int) -> Answer:
    """Queue a dead or cancelled job again."""
    if db.retry_job(job_id) is not None:
        return retry_answer(job_id, True, None)
    return retry_answer(job_id, False, db.job_state(job_id))


def cancel(db: Database, job_id: int, by: str) -> Answer:
    """Cancel a queued job, or ask a running job's worker to stop it; ``by`` (who, and why)
    goes into the job's error history."""
    done = db.cancel_job(job_id, by)
    return cancel_answer(job_id, done, None if done else db.get_job(job_id))


async def retry_async(db: AsyncDatabase, job_id: int) -> Answer:
    """retry, awaited (AsyncClient): the same statements and the same answer."""
    if await db.retry_job(job_id) is not None:
        return retry_answer(job_id, True, None)
    return retry_answer(job_id, False, await db.job_state(job_id))


async def cancel_async(db: AsyncDatabase, job_id: int, by: str) -> Answer:
    """cancel, awaited (AsyncClient): the same statements and the same answer."""
    done = await db.cancel_job(job_id, by)
    return cancel_answer(job_id, done, None if done else await db.get_job(job_id))


def retried(answer: Answer) -> bool:
    """Client.retry's and AsyncClient.retry's return value: the job was queued again."""
    return answer.outcome is Outcome.DONE


def cancel_result(answer: Answer) -> str | None:
    """Client.cancel's and AsyncClient.cancel's return value: "cancelled" (it was queued),
    "requested" (it is running: its worker stops it), None (nothing changed)."""
    return {Outcome.DONE: "cancelled", Outcome.REQUESTED: "requested"}.get(answer.outcome)


def requester(by: str, reason: str | None) -> str:
    """Who cancelled, as the error history records it: ``by``, then ``(reason)``."""
    return by + (f" ({reason})" if reason else "")


def check_job_id(job_id: object) -> int:
    """A job id as the clients take it (an int, not a bool, 1..2**63-1), or InvalidArguments:
    a float or a bigint-overflowing id would otherwise fail deep in a query (or never match)."""
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise InvalidArguments(f"job id must be an integer, got {type(job_id).__name__}")
    if not 1 <= job_id <= MAX_JOB_ID:
        raise InvalidArguments(f"job id must be between 1 and {MAX_JOB_ID}, got {job_id}")
    return job_id
