"""A FastAPI service that enqueues jobs with skiplock.AsyncClient and can wait for a result.

    SKIPLOCK_DATABASE_URL=postgresql://... uvicorn examples.service:app

``POST /welcome`` enqueues a welcome mail and answers at once with the job id (202);
``POST /reports/{id}?wait=5`` enqueues a report and waits up to 5 s for its result (200 with
the result, 202 with the job id when it is not done yet, 422 when the job died, 409 when it
was cancelled). ``wait`` is bounded (0 < wait <= 30): a request must not hold a connection
slot for a day.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from examples.tasks_api import render_report, send_welcome
from skiplock import AsyncClient, JobDead, JobWasCancelled, WaitTimeout

# Longest a request waits for its report (seconds); past it the caller polls /jobs/{id}.
MAX_WAIT = 30.0


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One AsyncClient per process: its pool serves every request, and every waiting request
    # shares its one LISTEN connection.
    async with AsyncClient() as client:
        app.state.skiplock = client
        yield


app = FastAPI(title="skiplock example", lifespan=lifespan)


def _client(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.skiplock
    return client


class Welcome(BaseModel):
    email: str
    name: str = "there"


@app.post("/welcome", status_code=202)
async def welcome(body: Welcome, request: Request) -> dict[str, Any]:
    # typed: mypy rejects send_welcome.enqueue_async(client, mail=...) or a non-str email
    job_id = await send_welcome.enqueue_async(_client(request), body.email, name=body.name)
    return {"job_id": job_id}


@app.post("/reports/{report_id}")
async def report(report_id: int, request: Request,
                 wait: float = Query(5.0, gt=0, le=MAX_WAIT),
                 fail: bool = False) -> JSONResponse:
    client = _client(request)
    job_id = await render_report.enqueue_async(client, report_id, fail=fail)
    try:
        result = await client.wait(job_id, timeout=wait)
    except WaitTimeout:
        return JSONResponse({"job_id": job_id, "state": "pending"}, status_code=202)
    except JobDead as exc:
        raise HTTPException(422, f"report {report_id} failed: {exc.error}") from None
    except JobWasCancelled as exc:
        raise HTTPException(409, f"report {report_id} was cancelled"
                            + (f" ({exc.reason})" if exc.reason else "")) from None
    return JSONResponse({"job_id": job_id, "result": result})


@app.get("/jobs/{job_id}")
async def job(job_id: int, request: Request) -> dict[str, Any]:
    found = await _client(request).get_job(job_id)
    if found is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return {"id": found["id"], "state": found["state"], "result": found["result"]}
