"""The JSON API under /v1, plus /healthz and /readyz."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.convertors import Convertor, register_url_convertor

from ..db import NewJob
from ..errors import (
    DatabaseUnavailable,
    InvalidArguments,
    JobNotFound,
    SkiplockError,
    UnknownTask,
)
from ..names import QUEUE_PATTERN
from ..preparation import prepare_job
from . import service
from .deps import State, blocking, public_unavailable, require_read, require_token
from .models import AUTH_ERRORS as _AUTH_ERRORS
from .models import (
    BIGINT_MAX,
    BatchIn,
    BatchItem,
    BatchOut,
    BulkIn,
    BulkOut,
    CountOut,
    Health,
    IdempotencyProblem,
    JobDetail,
    JobFilter,
    JobIn,
    JobPage,
    NewQueueName,
    PauseIn,
    Problem,
    QueuePause,
    QueuesOut,
    QueueText,
    RetryDeadIn,
    RetryDeadOut,
    SafeText,
    WorkersOut,
)
from .models import READ_ERRORS as _READ_ERRORS
from .query_repeats import reject_repeated

log = logging.getLogger("skiplock.api")

router = APIRouter()
Auth = [Depends(require_token), Depends(reject_repeated)]
# Reads of job data: a token (either) when one is configured.
Read = [Depends(require_read), Depends(reject_repeated)]
JobId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="job id")]
# Percent-encoded in the path.
PausedName = Annotated[QueueText, Path(description="queue name")]
NewPausedName = Annotated[NewQueueName, Path(
    description="queue name: letters, digits and _ . : - (as for enqueueing)",
    json_schema_extra={"pattern": QUEUE_PATTERN})]


class _AnyText(Convertor[str]):
    """A path parameter holding any text, "/" and newlines included, so that such a queue
    name gets the 422 that says what names may be (Starlette's own converters stop at a "/"
    (str) or a newline (path): a bare 404), and a queue paused by hand in SQL, whatever its
    name, can be resumed."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())

_IDEMPOTENCY = Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="makes a retried request safe (Stripe's rule): the same key with the same "
                "request answers 200 with the first answer's job(s) and "
                "`Idempotent-Replayed: true`; with a different request, 409 naming the job. "
                "Kept SKIPLOCK_IDEMPOTENCY_RETENTION (default 24 h) and while its jobs exist. "
                "For one job it is the job's unique_key (the Python Client's keys)")
# Set on every answer to a keyed enqueue: "true" for a replay (nothing new was stored).
REPLAYED = "Idempotent-Replayed"
_KEY_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": IdempotencyProblem,
          "description": "the key was first used for a different request; nothing stored"},
}


class _FieldError(InvalidArguments):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _prepare(st: State, job: JobIn, unique_key: str | None, where: str) -> NewJob:
    """``where`` is the field prefix in a batch (``jobs[3].``), empty for a single job."""
    prefix = f"{where.rstrip('.')}: " if where else ""
    try:
        # The Python Client's own preparation (names, sizes, catalogue, arguments), so an HTTP
        # producer is held to exactly the same rules.
        return prepare_job(job.task, job.args, queue=job.queue, priority=job.priority,
                           max_attempts=job.max_attempts, run_at=job.run_at, delay=job.delay,
                           unique_key=unique_key, timeout=job.timeout,
                           max_args_bytes=st.client.max_args_bytes, catalogue=st.catalogue)
    except UnknownTask as exc:
        raise _FieldError(f"{where}task", f"{prefix}{exc}") from None
    except InvalidArguments as exc:
        field = ("task" if str(exc).startswith("task name")
                 else "queue" if str(exc).startswith("queue name") else "args")
        raise _FieldError(f"{where}{field}", f"{prefix}{exc}") from None


@router.post("/v1/jobs", status_code=201, dependencies=Auth, tags=["jobs"],
             response_model=JobDetail,
             responses={**_AUTH_ERRORS, **_KEY_ERRORS,
                        200: {"model": JobDetail, "description": "replay: the key's job"},
                        410: {"model": IdempotencyProblem,
                              "description": "replay: the key's job was pruned"}})
async def enqueue(st: State, body: JobIn, response: Response,
                  idempotency_key: Annotated[str | None, _IDEMPOTENCY] = None) -> Any:
    """Enqueue one job. 201 with the job; for a key already used, 200 with its job when this
    is the same request (``Idempotent-Replayed: true``), 409 when it is a different one."""
    key = body.unique_key
    if idempotency_key is not None:
        if key is not None and key != idempotency_key:
            raise _FieldError("unique_key", "unique_key and the Idempotency-Key header differ; "
                                            "send one of them, or the same value in both")
        key = idempotency_key
    def work() -> tuple[int, JobDetail | None, bool]:
        job_id, created = st.db.enqueue(_prepare(st, body, key, ""))
        try:
            return job_id, service.job_detail(st.db, job_id), created
        except JobNotFound:  # a replay whose job finished and was pruned since
            return job_id, None, created

    job_id, detail, created = await blocking(st, work, mutating=True)
    if key is not None:
        response.headers[REPLAYED] = "false" if created else "true"
    if detail is None:
        return JSONResponse(IdempotencyProblem(
            error=f"idempotency key {key!r} was first used for this same request, which "
                  f"created job {job_id}; that job no longer exists (it finished and was "
                  "pruned, or was deleted), so the request was not run again. Use a new key "
                  "to run it again.",
            job_id=job_id, job_ids=[job_id], reason="the key's job no longer exists").model_dump(),
            status_code=410, headers={REPLAYED: "true"})
    if not created:
        response.status_code = 200
    return detail


@router.post("/v1/jobs/batch", status_code=201, dependencies=Auth, tags=["jobs"],
             response_model=BatchOut,
             responses={**_AUTH_ERRORS, **_KEY_ERRORS,
                        200: {"model": BatchOut, "description": "replay: the key's jobs"}})
async def enqueue_batch(st: State, body: BatchIn, response: Response,
                        idempotency_key: Annotated[str | None, _IDEMPOTENCY] = None) -> BatchOut:
    """Enqueue several jobs in one transaction: all are stored or none.

    An Idempotency-Key header names the whole batch: the same batch again answers 200 with
    the first answer's ids (``Idempotent-Replayed: true``); another batch, or a single job,
    with the key answers 409. A job's own unique_key follows the same rule for that job.
    """
    if len(body.jobs) > st.api.max_batch:
        raise _FieldError(
            "jobs", f"at most {st.api.max_batch} jobs per batch, got {len(body.jobs)}")

    def work() -> tuple[list[tuple[int, bool]], bool]:
        prepared = [_prepare(st, job, job.unique_key, f"jobs[{i}].")
                    for i, job in enumerate(body.jobs)]
        return st.db.enqueue_keyed_batch(prepared, idempotency_key)

    done, replayed = await blocking(st, work, mutating=True)
    if idempotency_key is not None:
        response.headers[REPLAYED] = "true" if replayed else "false"
    if replayed:
        response.status_code = 200
    return BatchOut(jobs=[BatchItem(id=i, created=c) for i, c in done])


@router.get("/v1/jobs", dependencies=Read, tags=["jobs"], response_model=JobPage,
            responses=_READ_ERRORS)
async def list_jobs(
    st: State,
    q: Annotated[JobFilter, Query()],
    cursor: Annotated[int | None, Query(ge=1, le=BIGINT_MAX,
                                        description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobPage:
    """Jobs, newest first, filtered; follow next_cursor for older pages."""
    f = service.filters_of(q)
    if f is None:
        return JobPage(jobs=[], next_cursor=None)
    return await blocking(st, lambda: service.search(st.db, f, cursor, limit))


@router.get("/v1/jobs/count", dependencies=Read, tags=["jobs"], response_model=CountOut,
            responses=_READ_ERRORS)
async def count_jobs(st: State, q: Annotated[JobFilter, Query()]) -> CountOut:
    """How many jobs the filters (those of GET /v1/jobs) match: what a bulk action would act
    on. Counting stops at 1,000,000 (``capped``), so it stays cheap on a huge table."""
    f = service.filters_of(q)
    return await blocking(st, lambda: service.count(st.db, f))


@router.post("/v1/jobs/bulk", dependencies=Auth, tags=["jobs"], response_model=BulkOut,
             responses=_AUTH_ERRORS)
async def bulk(st: State, body: BulkIn) -> BulkOut:
    """One batch of cancel, retry or delete over the jobs a filter matches (the filters of
    GET /v1/jobs), newest first: at most ``limit`` jobs, in one short transaction. Call again
    with the answer's ``cursor`` while ``more`` is true. Jobs enqueued after the first batch
    are never reached. An empty filter needs ``"all": true``."""
    f = service.filters_of(body.filter)
    return await blocking(st, lambda: service.bulk(st.db, body.action, f, body.cursor,
                                                   body.limit), mutating=True)


@router.post("/v1/jobs/retry-dead", dependencies=Auth, tags=["jobs"],
             response_model=RetryDeadOut, responses=_AUTH_ERRORS)
async def retry_dead(st: State, body: RetryDeadIn) -> RetryDeadOut:
    """Queue again the dead jobs matching the filters, e.g. after fixing the bug that killed
    them. Repeat the call while ``retried`` equals ``limit`` to work through a large set."""
    ids = await blocking(st, lambda: st.db.retry_dead_matching(
        queue=body.queue, task=body.task, error_contains=body.error, limit=body.limit),
        mutating=True)
    return RetryDeadOut(retried=len(ids), ids=ids)


@router.get("/v1/jobs/{job_id}", dependencies=Read, tags=["jobs"], response_model=JobDetail,
            responses={**_READ_ERRORS, 404: {"model": Problem}})
async def get_job(st: State, job_id: JobId) -> JobDetail:
    """One job with its arguments, result and the error of every failed attempt."""
    return await blocking(st, lambda: service.job_detail(st.db, job_id))


@router.post("/v1/jobs/{job_id}/retry", dependencies=Auth, tags=["jobs"],
             response_model=JobDetail,
             responses={**_AUTH_ERRORS, 404: {"model": Problem}, 409: {"model": Problem}})
async def retry_job(st: State, job_id: JobId) -> JobDetail:
    """Queue a dead or cancelled job again (it gets one more attempt if it had none left)."""
    return await blocking(st, lambda: service.retry(st.db, job_id), mutating=True)


@router.post("/v1/jobs/{job_id}/cancel", dependencies=Auth, tags=["jobs"],
             response_model=JobDetail,
             responses={**_AUTH_ERRORS, 404: {"model": Problem}, 409: {"model": Problem}})
async def cancel_job(st: State, job_id: JobId) -> JobDetail:
    """Cancel a job. A queued job is cancelled at once; for a running one the cancel request is
    stored and its worker stops the handler (``cancel_requested_at`` is set in the answer; the
    job ends ``cancelled`` within the worker's cancel grace). 409 for a finished job."""
    return await blocking(st, lambda: service.cancel(st.db, job_id), mutating=True)


@router.get("/v1/queues", dependencies=Read, tags=["queues"], response_model=QueuesOut,
            responses=_READ_ERRORS)
async def queues(st: State,
           window_minutes: Annotated[int, Query(ge=1, le=1440)] = 30,
           queue: Annotated[list[Annotated[SafeText, Field(min_length=1, max_length=128)]],
                            Query(description="only these queues (repeat for several)")] = [],  # noqa: B006 - FastAPI copies it
           after: Annotated[QueueText | None, Query(
               description="the page after this queue name: the last page's `next_after`")
           ] = None,
           limit: Annotated[int | None, Query(
               ge=1, le=service.OVERVIEW_PAGE_MAX,
               description="queues per page (default 100, or every queue named with queue=)")
           ] = None,
           backlog_points: Annotated[int, Query(
               ge=0, le=100_000,
               description="at most this many points of backlog_history per queue (each the "
                           "largest of neighbouring samples, the newest sample last; 0: none; "
                           "the history size, 360 by default, or more: every sample)"
           )] = service.BACKLOG_POINTS,
           ) -> QueuesOut:
    """Per queue: backlog, in-flight, dead, stuck, high-retry, oldest runnable age, throughput
    per bucket over the window and the backlog samples this process took. One page of queues
    in name order (`limit`, default 100, or all those named by `queue=` up to 1000);
    `next_after` names the next page, `total_queues` counts them all."""
    return await blocking(st, lambda: service.overview(
        st.db, st.history, st.finished, window_minutes, queue, after=after, limit=limit,
        backlog_points=backlog_points, reads=st.reads, last_pages=st.last_pages,
        backlog_series=st.backlog_series))


@router.post("/v1/queues/{queue:anytext}/pause", dependencies=Auth, tags=["queues"],
             response_model=QueuePause, responses=_AUTH_ERRORS)
async def pause_queue(st: State, queue: NewPausedName,
                      body: PauseIn | None = None) -> QueuePause:
    """Stop workers claiming from the queue, within a second (NOTIFY, and the claim itself
    skips paused queues); running jobs finish, new jobs wait. The queue need not have jobs
    yet. Pausing a paused queue keeps the first pause (``changed`` false)."""
    reason = body.reason if body is not None else None
    return await blocking(st, lambda: service.pause_queue(st.client, queue, reason),
                          mutating=True)


@router.post("/v1/queues/{queue:anytext}/resume", dependencies=Auth, tags=["queues"],
             response_model=QueuePause, responses=_AUTH_ERRORS)
async def resume_queue(st: State, queue: PausedName) -> QueuePause:
    """Let workers claim from the queue again; idle ones are woken at once. ``changed`` is
    false when the queue was not paused."""
    return await blocking(st, lambda: service.resume_queue(st.client, queue), mutating=True)


@router.get("/v1/workers", dependencies=Read, tags=["queues"], response_model=WorkersOut,
            responses=_READ_ERRORS)
async def workers(st: State) -> WorkersOut:
    """Workers holding running jobs, per queue: live leases and expired ones. A worker with
    only expired leases died or was cut off mid-job; its jobs come back after the rescuer
    runs (or go dead when out of attempts).

    ``processes``: one entry per worker id, from the worker registry (alive, healthy, what it
    reports: running jobs, outcomes waiting to be written, its queues and tasks) merged with
    its lease counts. ``stalled`` marks a worker whose outcomes are not being written."""
    return await blocking(st, lambda: service.workers(st.db))


@router.get("/healthz", tags=["health"], response_model=Health)
def healthz() -> Health:
    """The process is up (no database check: a database outage must not restart the API)."""
    return Health(status="ok")


@router.get("/readyz", tags=["health"], response_model=Health,
            responses={503: {"model": Health, "description": "database unreachable"}})
async def readyz(st: State) -> Any:
    """Ready when the database answers within the connect timeout."""
    try:
        await blocking(st, st.db.now)
    except DatabaseUnavailable as exc:
        detail = public_unavailable(exc, "readyz")
        return JSONResponse(Health(status="unavailable", detail=detail).model_dump(),
                            status_code=503, headers={"Retry-After": str(st.api.retry_after)})
    except SkiplockError as exc:
        log.error("readyz: %s", exc)  # redacted at the database boundary; callers are anonymous
        return JSONResponse(Health(status="error", detail="database error; the API log has "
                                   "the details").model_dump(), status_code=503)
    return Health(status="ok")


# -- issue 14: periodic jobs (GET /v1/schedules and the /ui/schedules page: api/schedules.py) --
from . import schedules as _schedules  # noqa: E402  (its own block at the end of a shared file)

router.include_router(_schedules.router)
