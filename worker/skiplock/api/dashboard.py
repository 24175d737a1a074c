"""Server-rendered dashboard under /ui: queues overview, jobs list with filters, job detail.

Pages are plain HTML from Jinja2 templates (autoescaped) with inline SVG charts; the only
script is static/app.js (retry/cancel, bulk action and pause/resume buttons, token,
auto-refresh). Nothing loads from another origin, and the Content-Security-Policy set in app.py
forbids it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from .. import inspection
from ..errors import DatabaseUnavailable, JobNotFound
from ..names import MAX_QUEUE_NAME
from . import access, charts, service
from .deps import HERE, State, blocking, public_unavailable
from .history import Sample, queue_series
from .models import BIGINT_MAX, INT_MAX, JobState, QueuesOut, SessionIn, WorkersOut, check_text
from .per_sample import PerSample
from .side_by_side import discard

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")
PAGE_SIZE = 50
# Queues on one overview page, each with two charts: at 1,000 queues the whole list took ~1.2 s.
QUEUES_PER_PAGE = 50
# Points per backlog chart: the overview's default (each costs the page's time: at the default
# 360 samples, 50 charts of every sample, as models, were most of a page).
BACKLOG_POINTS = service.BACKLOG_POINTS
WINDOWS = (15, 30, 60, 180, 720, 1440)
OK, DEAD, BACKLOG, INFLIGHT, STUCK = "#3c9a5f", "#c8443a", "#4a78c2", "#8a6bc2", "#e0a030"


class BadFilter(ValueError):
    pass


def _when(value: str, name: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"{name}: {value!r} is not a date and time like 2024-05-01T13:30") from None
    # A datetime-local input has no zone; the dashboard shows and takes UTC throughout.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _int(value: str, name: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise BadFilter(f"{name}: {value!r} is not a whole number") from None
    if not low <= n <= high:
        raise BadFilter(f"{name}: must be between {low} and {high}")
    return n


def parse_filters(q: dict[str, str]) -> tuple[service.JobFilters, int | None]:
    """The jobs page's query string (empty fields ignored) as filters and a cursor."""
    q = {k: v.strip() for k, v in q.items() if v.strip()}
    for k, v in q.items():
        try:
            check_text(v, k)
        except ValueError as exc:
            raise BadFilter(str(exc)) from None
    states: list[JobState] = []
    if "state" in q:
        if q["state"] == "unfinished":
            states = list(service.UNFINISHED)
        else:
            try:
                states = [JobState(q["state"])]
            except ValueError:
                raise BadFilter(f"state: {q['state']!r} is not one of "
                                f"{', '.join(s.value for s in JobState)}, unfinished") from None
    for name, limit in (("queue", 128), ("task", 256), ("error", 200)):
        if len(q.get(name, "")) > limit:
            raise BadFilter(f"{name}: at most {limit} characters")
    f = service.JobFilters(
        states=states, queue=q.get("queue"), task=q.get("task"),
        stuck=q.get("stuck") in ("1", "on", "true"),
        waiting_for_worker=q.get("waiting_for_worker") in ("1", "on", "true"),
        min_attempts=_int(q["min_attempts"], "min_attempts", 0, INT_MAX)
        if "min_attempts" in q else None,
        created_after=_when(q["created_after"], "created_after") if "created_after" in q else None,
        created_before=_when(q["created_before"], "created_before")
        if "created_before" in q else None,
        finished_after=_when(q["finished_after"], "finished_after")
        if "finished_after" in q else None,
        finished_before=_when(q["finished_before"], "finished_before")
        if "finished_before" in q else None,
        error=q.get("error"))
    cursor = _int(q["cursor"], "cursor", 1, BIGINT_MAX) if "cursor" in q else None
    return f, cursor


def _ctx(request: Request, st: State, **kw: Any) -> dict[str, Any]:
    scope = access.scope_of(request, st.api)
    return {"request": request, "auth_required": scope is not None,
            "scope": scope.name if scope is not None else "open",
            "nav": kw.pop("nav", ""), **kw}


NONE = "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


templates.env.filters["age"] = _age
templates.env.filters["ts"] = (
    lambda t: t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if t else NONE)
templates.env.filters["pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True, default=str)


def _unavailable(request: Request, st: State, exc: DatabaseUnavailable) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "error.html", _ctx(request, st, title="Database unavailable",
                                    message=public_unavailable(exc, request.url.path)),
        status_code=503, headers={"Retry-After": str(st.api.retry_after)})


def _signin_needed(request: Request, st: State) -> HTMLResponse | None:
    """The page asking for a token, when one is configured and the request has none."""
    scope = access.scope_of(request, st.api)
    if scope is None or scope >= access.Scope.read:
        return None
    return templates.TemplateResponse(request, "error.html", _ctx(
        request, st, title="Sign in", signin=True,
        message="This dashboard needs a token: enter the read token (to look) or the write "
                "token (to also retry, cancel and pause) at the top right."), status_code=401)


@router.post("/ui/session", dependencies=[Depends(access.require_same_origin)])
async def sign_in(request: Request, st: State, body: SessionIn) -> JSONResponse:
    """Trade a token, sent in a JSON body (never in a URL), for the session cookie."""
    if not access.auth_configured(st.api):
        return JSONResponse({"scope": "open", "detail": "no token is configured: nothing to "
                                                        "sign in to"})
    scope = access.scope_of_token(body.token.get_secret_value(), st.api)
    if scope < access.Scope.read:
        raise access.unauthorized()
    response = JSONResponse({"scope": scope.name})
    response.set_cookie(access.COOKIE, access.session_value(body.token.get_secret_value()),
                        httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.delete("/ui/session", dependencies=[Depends(access.require_same_origin)])
async def sign_out() -> JSONResponse:
    response = JSONResponse({"scope": "none"})
    response.delete_cookie(access.COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _after_problem(after: str) -> str | None:
    """What is wrong with an ``after`` page cursor (a queue name), or None."""
    if len(after) > MAX_QUEUE_NAME:
        return f"at most {MAX_QUEUE_NAME} characters (a queue name)"
    try:
        check_text(after, "it")
    except ValueError as exc:
        return str(exc)
    return None


def backlog_chart(samples: Sequence[Sample], queue: str, sample_interval: float) -> Markup:
    """A queue's backlog chart on the queues page, from the sampler's ring."""
    h = queue_series(samples, queue, BACKLOG_POINTS)
    return charts.lines(
        f"{queue}: backlog, in-flight and stuck (sampled every {sample_interval:g}s;"
        f" at most {BACKLOG_POINTS} points, each the peak of its samples)",
        h.at, [charts.Series("backlog", BACKLOG, h.backlog),
               charts.Series("in-flight", INFLIGHT, h.in_flight),
               charts.Series("stuck", STUCK, h.stuck)])


def backlog_charts(sample_interval: float) -> PerSample[str, Markup]:
    """The queues page's backlog charts by queue, made once per sample (api/per_sample.py):
    what ``queues_page`` gets from ``State.backlog_charts``."""
    return PerSample(lambda samples, queue: backlog_chart(samples, queue, sample_interval))


def _overview_and_workers(st: State, window: int, after: str | None
                          ) -> tuple[QueuesOut, WorkersOut]:
    """The queues page's reads, the lease holders' beside the overview's."""
    workers = st.reads.start(lambda: service.workers(st.db))
    try:
        data = service.overview(st.db, st.history, st.finished, window, after=after,
                                limit=QUEUES_PER_PAGE, backlog_points=0, reads=st.reads,
                                last_pages=st.last_pages)
    except BaseException:
        discard(workers)
        raise
    return data, workers.result()


@router.get("/ui/", response_class=HTMLResponse)
async def queues_page(request: Request, st: State) -> HTMLResponse:
    if (signin := _signin_needed(request, st)) is not None:
        return signin
    raw = request.query_params.get("window", "30")
    window = int(raw) if raw.isdigit() and int(raw) in WINDOWS else 30
    after = request.query_params.get("after") or None
    if after is not None and (problem := _after_problem(after)):
        return templates.TemplateResponse(request, "error.html", _ctx(
            request, st, title="Bad page", message=f"after: {problem}; "
            "follow the page links, or open /ui/ for the first page"), status_code=400)
    try:
        data, workers = await blocking(st, lambda: _overview_and_workers(st, window, after))
    except DatabaseUnavailable as exc:
        return _unavailable(request, st, exc)
    rows = []
    taken, samples = st.history.snapshot()
    for q in data.queues:
        times = [p.at for p in q.throughput]
        flow = charts.stacked_bars(
            f"{q.queue}: jobs finished per {data.bucket_seconds // 60} min", times,
            [charts.Series("succeeded", OK, [p.succeeded for p in q.throughput]),
             charts.Series("dead", DEAD, [p.dead for p in q.throughput])])
        backlog = st.backlog_charts.get(taken, samples, q.queue)
        rows.append({"q": q, "flow": flow, "backlog": backlog})
    keep = {"window": str(window)} if window != 30 else {}
    return templates.TemplateResponse(request, "queues.html", _ctx(
        request, st, nav="queues", title="Queues", data=data, rows=rows, windows=WINDOWS,
        holders=workers.workers, processes=workers.processes,
        window=window, high_attempts=inspection.HIGH_RETRY_ATTEMPTS,
        next_page=(f"/ui/?{urlencode({**keep, 'after': data.next_after})}"
                   if data.next_after else None),
        first_page=f"/ui/?{urlencode(keep)}" if after else None, page_size=QUEUES_PER_PAGE))


@router.get("/ui/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request, st: State) -> HTMLResponse:
    if (signin := _signin_needed(request, st)) is not None:
        return signin
    params = dict(request.query_params)
    error = None
    page = None
    bulk_filter: dict[str, Any] = {}
    try:
        filters, cursor = parse_filters(params)
        page = await blocking(st, lambda: service.search(st.db, filters, cursor, PAGE_SIZE))
        # The bulk buttons act on exactly these filters, as parsed here; not offered without
        # any filter (every job is too much for a button) nor when nothing matches.
        if page.jobs:
            bulk_filter = service.as_filter(filters)
    except BadFilter as exc:
        error = str(exc)
    except DatabaseUnavailable as exc:
        return _unavailable(request, st, exc)
    keep = {k: v for k, v in params.items() if k != "cursor" and v.strip()}
    older = (f"/ui/jobs?{urlencode({**keep, 'cursor': page.next_cursor})}"
             if page and page.next_cursor else None)
    newest = f"/ui/jobs?{urlencode(keep)}" if "cursor" in params else None
    return templates.TemplateResponse(request, "jobs.html", _ctx(
        request, st, nav="jobs", title="Jobs", page=page, error=error, f=params,
        states=[s.value for s in JobState], older=older, newest=newest,
        bulk_filter=bulk_filter), status_code=400 if error else 200)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(request: Request, st: State, job_id: str) -> HTMLResponse:
    if (signin := _signin_needed(request, st)) is not None:
        return signin
    if not job_id.isdigit() or not 1 <= int(job_id) <= BIGINT_MAX:
        return templates.TemplateResponse(request, "error.html", _ctx(
            request, st, title="Not found", message=f"{job_id!r} is not a job id"),
            status_code=404)
    try:
        job = await blocking(st, lambda: service.job_detail(st.db, int(job_id)))
    except JobNotFound as exc:
        return templates.TemplateResponse(request, "error.html", _ctx(
            request, st, title="Not found", message=str(exc)), status_code=404)
    except DatabaseUnavailable as exc:
        return _unavailable(request, st, exc)
    marks = [(e.at, f"#{e.attempt} failed", DEAD) for e in job.errors if e.at is not None]
    end = job.finished_at or dt.datetime.now(dt.UTC)
    if job.finished_at is not None:
        colour = {"succeeded": OK, "dead": DEAD}.get(job.state.value, "#777")
        marks.append((job.finished_at, job.state.value, colour))
    elif job.state is JobState.running and job.started_at is not None:
        marks.append((job.started_at, f"#{job.attempts} running", STUCK if job.stuck else INFLIGHT))
    timeline = charts.attempt_timeline(job.created_at, marks, max([end, *[m[0] for m in marks]]))
    return templates.TemplateResponse(request, "job.html", _ctx(
        request, st, nav="jobs", title=f"Job {job.id}", job=job, timeline=timeline))
