"""Periodic jobs in the API and the dashboard: GET /v1/schedules and the /ui/schedules page
(docs/schedules.md). Read-only: schedules are declared in code (@app.periodic) or as
JobSchedule resources, not through the API. Included by routes.py."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from ..errors import DatabaseUnavailable
from .dashboard import _ctx, _signin_needed, _unavailable, templates
from .deps import ApiState, State, blocking, require_read
from .models import READ_ERRORS

router = APIRouter()


class ScheduleOut(BaseModel):
    name: str
    task: str
    queue: str
    cron: str | None = Field(description="5-field cron expression (None: an interval)")
    every_seconds: int | None = Field(description="the interval in seconds (None: cron)")
    timezone: str = Field(description="IANA zone the cron expression is read in")
    args: dict[str, Any]
    missed: str = Field(description="what firings found late get: skip, once, backfill")
    backfill_limit: int
    grace_seconds: float = Field(description="how late a firing may be found and still be "
                                             "on time")
    jitter_seconds: float
    paused: bool
    source: str = Field(description="'app' (@app.periodic) or 'crd:<namespace>/<name>'")
    next_fire_at: dt.datetime | None
    last_fire_at: dt.datetime | None
    last_job_id: int | None
    missed_total: int = Field(description="firings dropped by the missed policy, in all")
    late_seconds: float = Field(description="how far past next_fire_at (0: on time or paused)")


class SchedulesOut(BaseModel):
    schedules: list[ScheduleOut]


def _schedules(st: ApiState) -> SchedulesOut:
    return SchedulesOut(schedules=[ScheduleOut.model_validate(r)
                                   for r in st.db.list_schedules()])


@router.get("/v1/schedules", dependencies=[Depends(require_read)], tags=["schedules"],
            response_model=SchedulesOut, responses=READ_ERRORS)
async def list_schedules(st: State) -> SchedulesOut:
    """Every schedule: its cadence, missed policy, last firing (and its job) and next firing;
    ``late_seconds`` > a few seconds means no worker is firing it."""
    return await blocking(st, lambda: _schedules(st))


@router.get("/ui/schedules", response_class=HTMLResponse, include_in_schema=False)
async def schedules_page(request: Request, st: State) -> HTMLResponse:
    if (signin := _signin_needed(request, st)) is not None:
        return signin
    try:
        data = await blocking(st, lambda: _schedules(st))
    except DatabaseUnavailable as exc:
        return _unavailable(request, st, exc)
    return templates.TemplateResponse(request, "schedules.html", _ctx(
        request, st, nav="schedules", title="Schedules", schedules=data.schedules,
        now=dt.datetime.now(dt.UTC)))
