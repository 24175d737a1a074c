"""The database goes away under the API: bounded 503s with Retry-After, no secrets, and a
retried POST with its idempotency key stores the job exactly once."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
from pydantic import SecretStr

from skiplock.api.config import ApiSettings
from skiplock.settings import Settings
from tests.conftest import ROOT
from tests.integration.api.conftest import AUTH, TOKEN, register_tasks
from tests.integration.api.server import client, serve
from tests.support.pgserver import PgServer, free_port
from tests.support.waits import wait_until

PASSWORD = "hunter2-not-for-logs"
CONNECT_TIMEOUT = 1.0


def with_password(url: str) -> str:
    # The test server trusts local connections, so the password is accepted and ignored: it
    # is here only to prove it never leaks.
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def test_database_down_gives_bounded_503_and_retries_are_safe(
        pg: PgServer, database_url: str, sql: Callable[..., list[tuple[object, ...]]],
        caplog: pytest.LogCaptureFixture) -> None:
    register_tasks(sql)
    caplog.set_level(logging.INFO)
    settings = Settings(database_url=with_password(database_url), connect_timeout=CONNECT_TIMEOUT)
    api = ApiSettings(token=SecretStr(TOKEN), retry_after=3, sample_interval=0.2)
    job = {"task": "add", "args": {"a": 1, "b": 2}}
    with serve(settings, api) as url, client(url) as c:
        assert c.post("/v1/jobs", json=job, headers=AUTH).status_code == 201
        pg.stop()
        try:
            calls = [("POST", "/v1/jobs", {**AUTH, "Idempotency-Key": "k-outage"}),
                     ("POST", "/v1/jobs/batch", AUTH), ("GET", "/v1/jobs", AUTH),
                     ("GET", "/v1/jobs/1", AUTH), ("POST", "/v1/jobs/1/retry", AUTH),
                     ("GET", "/v1/queues", AUTH), ("GET", "/readyz", {}), ("GET", "/ui/", AUTH),
                     ("GET", "/ui/jobs", AUTH)]
            for method, path, headers in calls:
                body = {"jobs": [job]} if path.endswith("batch") else job
                started = time.monotonic()
                r = c.request(method, path, headers=headers,
                              json=body if method == "POST" else None)
                took = time.monotonic() - started
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["Retry-After"] == "3", path
                # Bounded: one connect attempt's timeout plus slack for a loaded machine.
                assert took < CONNECT_TIMEOUT + 4, (path, took)
                assert PASSWORD not in r.text and "unreachable" in r.text, r.text
            assert c.get("/healthz").status_code == 200
            assert "skiplock_queue_stats_up 0.0" in c.get("/metrics").text
        finally:
            pg.start()
        # The producer retries the POST that got a 503; then retries it once more as if the
        # answer had been lost. One job, whatever happened.
        first = wait_until(lambda: (r := c.post("/v1/jobs", json=job, headers={
            **AUTH, "Idempotency-Key": "k-outage"})).status_code in (200, 201) and r,
            timeout=30, message="the API to recover")
        again = c.post("/v1/jobs", json=job, headers={**AUTH, "Idempotency-Key": "k-outage"})
        assert again.status_code == 200
        assert again.json()["id"] == first.json()["id"]  # type: ignore[union-attr]
        assert c.get("/readyz").status_code == 200
    with psycopg.connect(database_url, options="-c search_path=skiplock") as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE unique_key = 'k-outage'"
                            ).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (2,)
    assert PASSWORD not in caplog.text and TOKEN not in caplog.text


def test_skiplock_api_command_serves_and_logs_json_without_secrets(database_url: str,
                                                                   tmp_path: object) -> None:
    port = free_port()
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": with_password(database_url),
           "SKIPLOCK_API_TOKEN": TOKEN, "SKIPLOCK_LOG_JSON": "1",
           "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    proc = subprocess.Popen([sys.executable, "-m", "skiplock", "api", "--port", str(port),
                             "--access-log"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            def up() -> bool:
                try:
                    return c.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(up, timeout=30, message="skiplock api to listen")
            assert c.get("/readyz").json() == {"status": "ok", "detail": None}
            assert c.post("/v1/jobs", json={"task": "noop"}).status_code == 401
            r = c.post("/v1/jobs", json={"task": "noop"}, headers=AUTH)
            assert r.status_code == 201, r.text
            assert c.get("/ui/").status_code == 401  # reads need a token too
            assert c.get("/ui/", headers=AUTH).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    text = out.decode()
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -15).
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "Application shutdown complete" in text, text
    assert PASSWORD not in text and TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any("/v1/jobs" in entry["msg"] for entry in lines), text
