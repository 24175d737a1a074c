"""examples/: the worker module in a real ``skiplock worker`` process, the FastAPI service
(its lifespan, its AsyncClient) in a real uvicorn server, against the test Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from skiplock import Client
from tests.support.pgserver import free_port
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]


def test_the_example_service_and_worker(database_url: str, spawn_worker: Callable[..., Any],
                                        sql: Sql, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPLOCK_DATABASE_URL", database_url)
    from examples.service import app

    worker = spawn_worker("examples.worker:app", "--queue", "default", "--queue", "mail",
                          "--poll-interval", "0.2")
    wait_until(lambda: sql("SELECT count(*) FROM tasks") == [(2,)], 30,
               "the example worker to register its tasks")
    with _serve(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        answer = http.post("/reports/12", params={"wait": 30})
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == {"report_id": 12, "pages": 6}

        dead = http.post("/reports/3", params={"wait": 30, "fail": True})
        assert dead.status_code == 422 and "has no data" in dead.json()["detail"]

        queued = http.post("/welcome", json={"email": "ada@example.com", "name": "Ada"})
        assert queued.status_code == 202
        job_id = queued.json()["job_id"]
        wait_until(lambda: http.get(f"/jobs/{job_id}").json()["state"] == "succeeded", 30,
                   "the welcome mail job to finish")
        assert http.get(f"/jobs/{job_id}").json()["result"] == {
            "to": "ada@example.com", "subject": "Welcome, Ada!"}
        assert sql("SELECT queue FROM jobs WHERE id = %s", job_id) == [("mail",)]

        bad = http.post("/welcome", json={"name": "no email"})  # the service's own validation
        assert bad.status_code == 422
        for wait in (0, -1, 31, 1e6):  # a request's wait is bounded, refused clearly
            assert http.post("/reports/1", params={"wait": wait}).status_code == 422, wait

        # a report cancelled while its request waits: 409, not a server error
        with Client(database_url) as admin:
            admin.pause_queue("default", "hold the report")
            answer_box: list[httpx.Response] = []
            waiting = threading.Thread(target=lambda: answer_box.append(
                http.post("/reports/7", params={"wait": 30})))
            waiting.start()
            wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE task = %s "
                                   "AND state = 'queued'", "render_report") == [(1,)], 20,
                       "the report job to be enqueued")
            (report_job,), = sql("SELECT id FROM jobs WHERE task = %s AND state = 'queued'",
                                 "render_report")
            assert admin.cancel(report_job, "not needed") == "cancelled"
            waiting.join(30)
            admin.resume_queue("default")
        assert answer_box[0].status_code == 409, answer_box[0].text
        assert "cancelled (" in answer_box[0].json()["detail"]
    assert worker.terminate() == 0


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the service did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
