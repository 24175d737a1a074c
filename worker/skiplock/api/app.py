"""The FastAPI application: JSON API under /v1, dashboard under /ui, health and metrics."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as prometheus_text
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__, inspection
from ..client import Client
from ..db import Database, QueryScope, query_scope
from ..errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidArguments,
    InvalidTransition,
    JobNotFound,
    SkiplockError,
    UnknownTask,
)
from ..metrics import QueueStatsCollector, ScheduleCollector
from ..preparation import Catalogue
from ..settings import Settings
from . import access, dashboard, routes, service
from .config import ApiSettings
from .deps import HERE, ApiState, blocking, public_unavailable, state_of
from .history import BacklogHistory
from .last_pages import LastPages
from .limits import BodyLimit
from .models import FieldProblem, IdempotencyProblem, Problem
from .side_by_side import SideBySide
from .throughput import GRACE_SECONDS, ThroughputCache

log = logging.getLogger("skiplock.api")


def _problem(status: int, message: str, fields: Sequence[FieldProblem] = (),
             headers: dict[str, str] | None = None) -> JSONResponse:
    body = Problem(error=message, fields=list(fields)).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _field_name(loc: Sequence[int | str]) -> str:
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name or str(loc[0] if loc else "request")


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for e in exc.errors():
            msg = str(e.get("msg", "invalid"))
            if e.get("type") == "extra_forbidden":
                msg = "unknown field (check the spelling)"
            fields.append(FieldProblem(field=_field_name(e.get("loc", ())), message=msg))
        text = "; ".join(f"{f.field}: {f.message}" for f in fields[:5])
        return _problem(422, f"invalid request: {text}", fields)

    @app.exception_handler(access.AccessDenied)
    async def _denied(request: Request, exc: access.AccessDenied) -> JSONResponse:
        return _problem(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(UnknownTask)
    async def _unknown(request: Request, exc: UnknownTask) -> JSONResponse:
        return _problem(422, str(exc), [FieldProblem(field="task", message=str(exc))])

    @app.exception_handler(InvalidArguments)
    async def _bad_args(request: Request, exc: InvalidArguments) -> JSONResponse:
        field = getattr(exc, "field", "args")
        return _problem(422, str(exc), [FieldProblem(field=field, message=str(exc))])

    @app.exception_handler(JobNotFound)
    async def _missing(request: Request, exc: JobNotFound) -> JSONResponse:
        return _problem(404, str(exc))

    @app.exception_handler(IdempotencyConflict)
    async def _key_conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        body = IdempotencyProblem(error=str(exc), job_id=exc.job_id, job_ids=exc.job_ids,
                                  reason=exc.reason)
        return JSONResponse(body.model_dump(), status_code=409)

    @app.exception_handler(InvalidTransition)
    async def _conflict(request: Request, exc: InvalidTransition) -> JSONResponse:
        return _problem(409, str(exc))

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        retry_after = str(state_of(request).api.retry_after)
        return _problem(503, public_unavailable(exc, f"{request.method} {request.url.path}"),
                        headers={"Retry-After": retry_after})

    @app.exception_handler(SkiplockError)
    async def _other(request: Request, exc: SkiplockError) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return _problem(500, "internal error; the API log has the details")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "the request body is not valid JSON (send UTF-8 JSON, Content-Type: " \
                     "application/json)"
            if isinstance(exc.__cause__, RecursionError):
                detail = ("the request body is nested too deeply (arrays and objects inside "
                          "each other, about 1000 levels): send flatter JSON")
        return _problem(exc.status_code, detail,
                        headers=dict(exc.headers) if exc.headers else None)


def create_app(settings: Settings | None = None, api: ApiSettings | None = None) -> FastAPI:
    s = settings or Settings()
    a = api or ApiSettings()
    # A statement never outlives the request that waits for it (the deadline also cancels it;
    # this bounds a query whose cancel request was lost).
    statement_timeout = min(s.statement_timeout, a.request_timeout)
    db = Database.from_settings(s, application_name="skiplock-api",
                                statement_timeout=statement_timeout, max_size=a.pool_size,
                                read_pool_size=a.read_pool_size)
    # Pause and resume go through the Client (its name rules); its statements are bounded
    # like the API's own. model_copy skips validation, which is safe for this one field: the
    # smaller of two validated timeouts is within both fields' bounds.
    client = Client(settings=s.model_copy(update={"statement_timeout": statement_timeout}))

    def sample() -> list[inspection.QueueStats]:
        with query_scope(QueryScope(read_only=True)):
            return inspection.queue_stats(db)

    history = BacklogHistory(sample, a.sample_interval, a.history_size)
    # A registry of its own: the API's /metrics must not depend on what else was imported.
    registry = CollectorRegistry()
    registry.register(QueueStatsCollector(lambda: inspection.queue_stats(db)))
    registry.register(ScheduleCollector(db.list_schedules))
    requests = Counter("skiplock_api_requests", "HTTP requests served",
                       ["method", "route", "status"], registry=registry)
    latency = Histogram("skiplock_api_request_duration_seconds", "HTTP request latency",
                        ["method", "route"], registry=registry,
                        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
    # The catalogue is read on the Client's connections, as the Client's own is: a burst of
    # catalogue reads cannot take the pool that enqueue writes through.
    st = ApiState(db=db, client=client, catalogue=Catalogue(client.db.list_tasks), api=a,
                  history=history, registry=registry,
                  # a finishing transaction runs a statement or two (the bulk cancel picks,
                  # then cancels), each bounded by the statement timeout workers share
                  finished=ThroughputCache(grace=max(GRACE_SECONDS, 2 * s.statement_timeout)),
                  requests=requests, latency=latency,
                  # no more threads than read connections: a read never waits for a thread
                  # while holding one
                  reads=SideBySide(a.read_pool_size), last_pages=LastPages(),
                  backlog_charts=dashboard.backlog_charts(a.sample_interval),
                  backlog_series=service.backlog_series())
    history.before_publish("the backlog charts", st.backlog_charts.renew)
    history.before_publish("the backlog series", st.backlog_series.renew)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        history.start()
        try:
            yield
        finally:
            history.stop()
            st.reads.close()
            client.close()
            db.close()

    app = FastAPI(
        title="Skiplock", version=__version__, lifespan=lifespan,
        # FastAPI's /docs and /redoc pages load their scripts from a CDN; nothing here may
        # fetch from the internet, so only the document itself is served.
        docs_url=None, redoc_url=None,
        description="Enqueue and inspect Skiplock jobs over HTTP. When the server has a token "
                    "configured, reads need `Authorization: Bearer <token>` (the read or the "
                    "write token) and changes the write token. Changes take `Content-Type: "
                    "application/json` (or, without a body, an `X-Skiplock-Request: 1` or "
                    "Authorization header).",
        responses={503: {"model": Problem, "description": "database unreachable; see Retry-After"}},
    )
    app.state.skiplock = st
    _install_handlers(app)
    # Inside _observe (added after it, below), so that 413s are counted like other answers.
    app.add_middleware(BodyLimit, max_bytes=a.max_body_bytes)

    @app.middleware("http")
    async def _observe(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, not the path: one series per endpoint, not one per job id.
        name = getattr(route, "path", "unmatched")
        st.requests.labels(request.method, name, str(response.status_code)).inc()
        st.latency.labels(request.method, name).observe(time.perf_counter() - started)
        if name.startswith("/ui"):
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    app.include_router(routes.router)
    app.include_router(dashboard.router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="static")
    # Outermost (added last): a request under an untrusted Host name (DNS rebinding) is
    # answered 400 before anything reads its body or the database.
    app.add_middleware(access.TrustedHosts, allowed=access.allowed_hosts(a))

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        text = await blocking(st, lambda: prometheus_text(st.registry))
        return Response(text, media_type="text/plain; version=0.0.4")

    return app
