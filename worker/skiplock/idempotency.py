"""Idempotency keys: what makes two requests "the same request" (Stripe's rule).

A key names one request. The first request with a key stores its job(s) and the key, with a
hash of the canonical request. A later request with the key is a *replay* when its canonical
request hashes the same (it gets the first request's jobs, nothing new is stored) and a
*conflict* otherwise (IdempotencyConflict, HTTP 409, naming the job and what differs).

The canonical request is the job as it will be stored (after the task's defaults for queue
and max_attempts are applied), so ``{"task": "t"}`` and ``{"task": "t", "queue": "default"}``
are one request when the task's queue is ``default``. Arguments compare as canonical JSON
(keys sorted): ``{"a": 1, "b": 2}`` equals ``{"b": 2, "a": 1}``, but ``1`` and ``1.0`` differ,
as they do in the stored job. ``delay`` compares as given (a retry sends the same delay), not
as the time it resolves to. A batch is one request over all its jobs in order, so a batch key
and a single job's key never match each other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidArguments
from .outcomes import storable_text

if TYPE_CHECKING:
    from .db import NewJob

# The database's limit (idempotency_keys_key_length); the HTTP header allows 200 ASCII.
MAX_KEY_LENGTH = 255
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def check_key(key: object) -> str:
    """``key`` as given, or InvalidArguments saying what is wrong with it. Never trimmed: a
    changed key would be another key."""
    if not isinstance(key, str):
        raise InvalidArguments(f"unique_key must be text, got {type(key).__name__}")
    if not key:
        raise InvalidArguments("unique_key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArguments(
            f"unique_key is {len(key)} characters long; at most {MAX_KEY_LENGTH}")
    if storable_text(key) != key:
        raise InvalidArguments("unique_key must not contain NUL characters or lone surrogates")
    return key


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _instant(value: dt.datetime | None) -> str | None:
    # One instant, one text: 12:00+02:00 and 10:00Z are the same run_at.
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def job_request(job: NewJob) -> dict[str, Any]:
    """The fields of one job that make up its request; args by their canonical hash (so the
    stored request stays small whatever the arguments)."""
    return {
        "kind": "job",
        "task": job.task,
        "queue": job.queue,
        "args": _digest(_canonical(dict(job.args))),
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "run_at": _instant(job.run_at),
        "delay": None if job.delay is None else float(job.delay),
        "timeout": job.timeout,
        # a job's own key is part of a batch's request (and is the key of a single job)
        "unique_key": job.unique_key,
    }


def batch_request(jobs: Sequence[NewJob]) -> dict[str, Any]:
    """One request over the whole batch, in order."""
    return {"kind": "batch", "count": len(jobs),
            "jobs": _digest(_canonical([job_request(j) for j in jobs]))}


def request_hash(request: Mapping[str, Any]) -> str:
    return _digest(_canonical(dict(request)))


# What the conflict message calls each field.
_WHAT = {"kind": "kind", "task": "task", "queue": "queue", "args": "args",
         "priority": "priority", "max_attempts": "max_attempts", "run_at": "run_at",
         "delay": "delay", "timeout": "timeout", "count": "number of jobs", "jobs": "jobs"}
_HASHED = frozenset({"args", "jobs"})
_KIND = {"job": "a single job", "batch": "a batch"}


def differences(stored: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """What differs between the key's first request and this one, in words."""
    if not stored:
        return "the first request is not known in detail"
    if stored.get("kind") != new.get("kind"):
        return (f"the key was first used for {_KIND.get(str(stored.get('kind')), 'a request')},"
                f" this request is {_KIND.get(str(new.get('kind')), 'another kind')}")
    parts = []
    for field, what in _WHAT.items():
        if field == "kind" or stored.get(field) == new.get(field):
            continue
        if field in _HASHED:
            parts.append(f"{what} differ")
        else:
            parts.append(f"{what} was {stored.get(field)!r}, now {new.get(field)!r}")
    return "; ".join(parts) or "the request differs"
