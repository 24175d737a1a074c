"""Request and response bodies; these shapes are the OpenAPI document."""

from __future__ import annotations

import datetime as dt
import enum
import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from ..client import MAX_PAUSE_REASON
from ..db import BULK_DEFAULT_BATCH, BULK_MAX_BATCH
from ..names import MAX_QUEUE_NAME, QUEUE_PATTERN, queue_problem

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
# Ten years: far beyond any sensible delay, and far inside PostgreSQL's interval range.
MAX_DELAY_SECONDS = 10 * 366 * 86400.0


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    dead = "dead"
    cancelled = "cancelled"


def check_text(value: str, what: str) -> str:
    """PostgreSQL text holds neither NUL nor lone surrogates; say so instead of failing later."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL (\\u0000) characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates)") from None
    return value


def check_json(value: Any, path: str) -> None:
    """Reject what jsonb cannot store: NUL or lone surrogates in strings, NaN and infinities."""
    if isinstance(value, str):
        check_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} must be a finite number (JSON has no NaN or Infinity)")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, f"key {k!r} in {path}")
            check_json(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json(v, f"{path}[{i}]")


def _plain_text(value: str) -> str:
    return check_text(value, "the value")


def _queue_name(value: str) -> str:
    problem = queue_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _iso_only(value: Any) -> Any:
    # pydantic would read a bare number as a Unix timestamp (also 1e3 or 3.7e-273, which
    # float() catches where a digits check did not); the documented form is ISO 8601.
    if not isinstance(value, str | dt.datetime) or (isinstance(value, str)
                                                    and _is_number(value)):
        raise ValueError("must be an ISO 8601 date-time with a timezone, e.g. 2024-05-01T13:30:00Z")
    return value


Instant = Annotated[AwareDatetime, BeforeValidator(_iso_only)]

# Text a query parameter may carry into SQL: refused with a 422 when PostgreSQL could not hold it.
SafeText = Annotated[str, AfterValidator(_plain_text)]
# Queue names in a path: any name a queue column can hold (QueueText: resume, so that a queue
# paused by hand in SQL can be resumed), or one new names may take (NewQueueName: pause, the
# producers' rule). The length comes first so that pydantic says "String should have at most
# 128 characters" (after the validator it would say "items").
QueueText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUEUE_NAME),
                      AfterValidator(_plain_text)]
NewQueueName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUEUE_NAME),
                         AfterValidator(_queue_name)]


class JobIn(BaseModel):
    """One job to enqueue; validated like ``skiplock.Client.enqueue``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"task": "send_email", "args": {"to": "a@example.com"}, "queue": "mail"}]})

    task: str = Field(min_length=1, max_length=256, description="registered task name")
    args: dict[str, Any] = Field(default_factory=dict,
                                 description="keyword arguments (JSON object)")
    # The producers' rule (names.queue_problem, which says what to do) rather than pydantic's
    # "String should match pattern"; the pattern is published for clients all the same.
    queue: Annotated[str, AfterValidator(_queue_name)] | None = Field(
        default=None, min_length=1, max_length=MAX_QUEUE_NAME,
        json_schema_extra={"pattern": QUEUE_PATTERN},
        description="default: the task's queue, else 'default'; letters, digits and _ . : - "
        "(the JobQueue CRD's pattern)")
    priority: int = Field(default=0, ge=-32768, le=32767, description="lower runs first")
    max_attempts: int | None = Field(default=None, ge=1, le=INT_MAX,
                                     description="default: the task's setting, else 5")
    run_at: Instant | None = Field(default=None, description="not before (with a timezone)")
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False,
                                description="seconds from now; not with run_at")
    unique_key: str | None = Field(
        default=None, min_length=1, max_length=255,
        description="at most one job per key while it is stored; a repeat returns that job")
    timeout: float | None = Field(
        default=None, gt=0, le=31_536_000, allow_inf_nan=False,
        description="each attempt's deadline in seconds, overriding the task's own")

    @field_validator("task", "queue", "unique_key")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "the value")

    @field_validator("args")
    @classmethod
    def _args(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_json(value, "args")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> JobIn:
        if self.run_at is not None and self.delay is not None:
            raise ValueError("pass run_at or delay, not both")
        return self


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobIn] = Field(min_length=1, description="stored all together or not at all")


class BatchItem(BaseModel):
    id: int
    created: bool = Field(description="false when a job with this unique_key already existed")


class BatchOut(BaseModel):
    jobs: list[BatchItem]


class AttemptError(BaseModel):
    attempt: int | None = None
    at: dt.datetime | None = None
    worker: str | None = None
    error: str


class Job(BaseModel):
    id: int
    queue: str
    task: str
    state: JobState
    stuck: bool = Field(description="running with an expired lease: its worker is gone")
    priority: int
    attempts: int
    max_attempts: int
    run_at: dt.datetime
    locked_until: dt.datetime | None
    locked_by: str | None
    last_error: str | None
    unique_key: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    cancel_requested_at: dt.datetime | None = Field(
        default=None, description="a cancel was asked while it ran: its worker is stopping it")
    snoozes: int = Field(default=0, description="times its handler snoozed it (raise Snooze)")


class JobDetail(Job):
    args: dict[str, Any]
    result: Any = None
    errors: list[AttemptError] = Field(description="one entry per failed attempt, oldest first")
    cancel_reason: str | None = Field(default=None, description="who asked to cancel it")
    timeout_seconds: float | None = Field(
        default=None, description="its own deadline per attempt (None: the task's, if any)")


class JobPage(BaseModel):
    jobs: list[Job]
    next_cursor: int | None = Field(description="pass as cursor for the next (older) page")


class Point(BaseModel):
    at: dt.datetime
    succeeded: int
    dead: int


class BacklogPoint(BaseModel):
    at: dt.datetime
    backlog: int
    in_flight: int
    stuck: int
    dead: int


class QueueOut(BaseModel):
    queue: str
    backlog: int = Field(description="runnable + stuck, less waiting_on_limit")
    runnable: int
    scheduled: int
    in_flight: int
    stuck: int
    dead: int
    dead_last_hour: int
    high_retry: int
    waiting_for_worker: int = Field(
        description="queued jobs no live worker can run (unknown task, or arguments no "
                    "registered signature takes): they wait for one, then go dead")
    waiting_on_limit: int = Field(
        default=0, description="runnable jobs a concurrency or rate limit holds back now "
                               "(part of runnable, not of backlog)")
    limit_capacity: int | None = Field(
        default=None, description="the most jobs that may run at once when all of the queue's "
                                  "work is under concurrency limits; null: no such bound")
    oldest_runnable_age_seconds: float | None
    succeeded_in_window: int
    dead_in_window: int
    throughput_per_minute: float = Field(description="finished jobs per minute over the window")
    throughput: list[Point] = Field(description="finished jobs per bucket, oldest first")
    backlog_history: list[BacklogPoint] = Field(
        description="the backlog samples this API process keeps (its last history_size), "
                    "oldest first, at most backlog_points of them (default 120): each point "
                    "the largest counts of a run of neighbouring samples, the newest sample "
                    "last")
    paused: bool = Field(default=False, description="no worker claims from it (running jobs "
                                                    "finish); POST .../resume to undo")
    paused_at: dt.datetime | None = None
    paused_by: str | None = Field(default=None, description="who paused it, then ': reason'")


class QueuesOut(BaseModel):
    generated_at: dt.datetime
    window_minutes: int
    bucket_seconds: int
    total_queues: int = Field(description="queues listed over all pages")
    next_after: str | None = Field(
        description="pass as `after` for the next page; null on the last page")
    queues: list[QueueOut] = Field(description="this page, in name order")


class PauseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, min_length=1, max_length=MAX_PAUSE_REASON,
                               description="why; stored with who paused it")

    @field_validator("reason")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        return None if value is None else check_text(value, "reason")


class QueuePause(BaseModel):
    """A queue's pause state after a pause or resume request."""

    queue: str
    paused: bool
    paused_at: dt.datetime | None = Field(description="when the pause in force began")
    paused_by: str | None = Field(description="who paused it, then ': reason'")
    changed: bool = Field(
        description="false when there was nothing to do: already paused (the first pause is "
                    "kept) or, for resume, not paused")


class RetryDeadIn(BaseModel):
    """Which dead jobs to queue again (all filters optional, combined with AND)."""

    model_config = ConfigDict(extra="forbid")
    queue: SafeText | None = Field(default=None, min_length=1, max_length=128)
    task: SafeText | None = Field(default=None, min_length=1, max_length=256)
    error: SafeText | None = Field(default=None, min_length=1, max_length=200,
                                   description="text the last error contains")
    limit: int = Field(default=1000, ge=1, le=10_000, description="at most this many, oldest first")


class RetryDeadOut(BaseModel):
    retried: int
    ids: list[int]


class JobFilter(BaseModel):
    """Which jobs: the filters of ``GET /v1/jobs`` (all optional, combined with AND). The query
    parameters of the jobs list and of the count, and the ``filter`` of a bulk action."""

    state: list[JobState] = Field(default_factory=list, description="repeat for several")
    unfinished: bool = Field(default=False, description="queued or running (with min_attempts: "
                                                        "the high-retry jobs)")
    queue: SafeText | None = Field(default=None, min_length=1, max_length=128)
    task: SafeText | None = Field(default=None, min_length=1, max_length=256)
    stuck: bool = Field(default=False, description="running with an expired lease")
    waiting_for_worker: bool = Field(
        default=False, description="queued, but no live worker can run it (it waits for one, "
                                   "then goes dead)")
    min_attempts: int | None = Field(default=None, ge=0, le=INT_MAX)
    created_after: Instant | None = None
    created_before: Instant | None = None
    finished_after: Instant | None = None
    finished_before: Instant | None = None
    error: SafeText | None = Field(default=None, min_length=1, max_length=200,
                                   description="text the last error contains")

    def is_empty(self) -> bool:
        """No filter set: it matches every job."""
        return self.model_dump() == JobFilter().model_dump()


class BulkFilter(JobFilter):
    # A misspelt field must be refused, not ignored: ignored, it would widen the filter and
    # the action would reach jobs nobody meant.
    model_config = ConfigDict(extra="forbid")

    # JSON has real booleans and numbers: "stuck": "no" or "min_attempts": false is a client's
    # mistake to report, not to guess at (the query string's "true" and "3" are text, so the
    # jobs list itself reads them leniently).
    @field_validator("stuck", "waiting_for_worker", "unfinished", mode="before")
    @classmethod
    def _json_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    @field_validator("min_attempts", mode="before")
    @classmethod
    def _json_int(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("must be a whole number or null")
        return value


class BulkAction(enum.StrEnum):
    cancel = "cancel"
    retry = "retry"
    delete = "delete"


class BulkIn(BaseModel):
    """One batch of a bulk action over the jobs a filter matches."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"action": "retry", "filter": {"state": ["dead"], "queue": "mail",
                                       "error": "KeyError"}, "limit": 500},
        {"action": "delete", "filter": {}, "all": True, "cursor": 12345}]})

    action: BulkAction = Field(description="cancel (queued at once; running ones are asked to "
                                           "stop), retry (dead or cancelled ones), or delete "
                                           "(never a running one)")
    filter: BulkFilter = Field(default_factory=BulkFilter,
                               description="the jobs to act on, as for GET /v1/jobs")
    # strict: only a JSON true means everything ("all": "no" must not)
    all: bool = Field(default=False, strict=True,
                      description="act on every job: required when the filter is empty, so an "
                                  "empty or missing filter never means everything by accident")
    # one batch is one short transaction, holding at most BULK_MAX_BATCH row locks
    limit: int = Field(default=BULK_DEFAULT_BATCH, ge=1, le=BULK_MAX_BATCH, strict=True,
                       description="at most this many jobs in this batch")
    cursor: int | None = Field(default=None, ge=1, le=BIGINT_MAX, strict=True,
                               description="the previous answer's cursor; omit to start")

    @model_validator(mode="after")
    def _all_is_explicit(self) -> BulkIn:
        empty = self.filter.is_empty()
        if empty and not self.all:
            raise ValueError('the filter is empty, so it matches every job: set at least one '
                             'filter, or send "all": true to act on every job')
        if self.all and not empty:
            raise ValueError('"all": true acts on every job, so it takes an empty filter: drop '
                             'the filter to act on everything, or drop "all" to act on the '
                             'filter\'s jobs')
        return self


class BulkOut(BaseModel):
    action: BulkAction
    done: int = Field(description="jobs acted on in this batch (cancel: cancelled, or running "
                                  "and asked to stop)")
    skipped: int = Field(
        description="matching jobs this batch passed over: the action does not apply (cancel: "
                    "finished or already asked; retry: not dead or cancelled; delete: running) "
                    "or another transaction held the job at that instant")
    cursor: int | None = Field(description="send it back as cursor for the next batch")
    more: bool = Field(description="more jobs may match past the cursor: call again with it")


class CountOut(BaseModel):
    count: int = Field(description="jobs matching the filter")
    capped: bool = Field(description="counting stopped at the cap: at least this many match")


class LeaseHolder(BaseModel):
    worker: str = Field(description="worker id: pod:pid:suffix")
    pod: str
    queue: str
    live: int = Field(description="running jobs whose lease this worker keeps renewing")
    expired: int = Field(description="running jobs whose lease expired: the worker is gone")
    silent_for_seconds: float | None = Field(
        description="seconds since its newest lease ran out (only when all have expired)")


class WorkerProcess(BaseModel):
    """One worker process: its registry row (what it reports with each heartbeat) merged with
    the leases it holds. A worker with no row (crashed long ago and pruned, or an older
    version) still appears when it holds running jobs; its reported fields are then null."""

    worker: str = Field(description="worker id: pod:pid:suffix")
    pod: str
    registered: bool = Field(description="it has a row in the worker registry")
    alive: bool = Field(
        description="registered: heartbeat younger than its lease; otherwise: it renews a lease")
    healthy: bool | None = Field(
        description="its own liveness check passes (null: not registered)")
    stalled: bool = Field(
        description="not healthy, or its oldest outcome waiting to be written is older than "
                    "half its lease: its results are not reaching the database")
    problem: str | None = Field(description="why it is not healthy, in its own words")
    started_at: dt.datetime | None
    last_seen: dt.datetime | None = Field(description="its last registry heartbeat")
    silent_for_seconds: float | None = Field(
        description="registered: seconds since its last heartbeat; otherwise: since its newest "
                    "lease ran out (only when all have)")
    running: int | None = Field(description="jobs it reported running")
    pending_outcomes: int | None = Field(description="outcomes it holds, not yet written")
    oldest_pending_seconds: float | None = Field(
        description="age of its oldest outcome not yet written (null when none waits)")
    queues: list[str] = Field(description="queues it serves (unregistered: where it holds leases)")
    tasks: list[str] = Field(description="task names its version can run")
    concurrency: int | None
    lease_seconds: float | None
    live: int = Field(description="running jobs whose lease it keeps renewing, all queues")
    expired: int = Field(description="running jobs whose lease expired, all queues")


class WorkersOut(BaseModel):
    workers: list[LeaseHolder] = Field(description="lease holders, per worker and queue")
    processes: list[WorkerProcess] = Field(
        description="one entry per worker id: stalled or holding expired leases first, then "
                    "alive, then by id")


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    error: str = Field(description="what was wrong and what to do")
    fields: list[FieldProblem] = Field(default_factory=list)


# The error answers routes document (OpenAPI), shared by every router of the API.
# 400 on every route: the Host header must be a trusted one (api/access.py TrustedHosts).
UNTRUSTED_HOST = "the Host header is not one this server answers to (SKIPLOCK_API_TRUSTED_HOSTS)"
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": f"the body is not JSON, or {UNTRUSTED_HOST}"},
    401: {"model": Problem, "description": "token missing or wrong"},
    403: {"model": Problem, "description": "the read token cannot change anything, or the "
                                           "request came from another site's page"},
    415: {"model": Problem, "description": "not JSON: send Content-Type: application/json "
                                           "(without a body: X-Skiplock-Request: 1)"},
    422: {"model": Problem, "description": "invalid request; `fields` names each bad field"},
}
READ_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": UNTRUSTED_HOST},
    401: AUTH_ERRORS[401], 422: AUTH_ERRORS[422]}



class IdempotencyProblem(Problem):
    """409: the Idempotency-Key (or unique_key) was first used for a different request.
    410: a replay of the key's first request, whose job has since been pruned."""

    job_id: int | None = Field(description="the key's job (the first, for a batch's key)")
    job_ids: list[int] = Field(description="every job the key's first request created")
    reason: str = Field(description="what differs from the key's first request")


class Health(BaseModel):
    status: str
    detail: str | None = None


class SessionIn(BaseModel):
    """The dashboard's sign-in: the token in a JSON body, so it is never in a URL or a log."""
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    token: SecretStr = Field(min_length=1, max_length=1000)
