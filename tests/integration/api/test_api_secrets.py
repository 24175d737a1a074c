"""The API with a database URL from the secrets table (tests/integration/secret_urls.py): a
real uvicorn server answers /readyz and 503s without the password, and without telling an
anonymous caller the user, host, port or database either (those go to the log, redacted)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from skiplock.api import create_app
from skiplock.api.config import ApiSettings
from skiplock.errors import ConfigurationError
from skiplock.settings import Settings
from tests.conftest import ROOT
from tests.integration.api.server import client, serve
from tests.integration.secret_urls import Case, assert_no_password, cases
from tests.support.pgserver import PgServer, free_port

UNREACHABLE = "database unreachable; try again later (the API log has the details)"


def table(pg: PgServer) -> list[Case]:
    return cases(pg.port, "skiplock_template")


def ids(outcome: str) -> list[str]:
    return [c.name for c in cases(1, "x") if c.outcome == outcome]


def find(pg: PgServer, name: str) -> Case:
    (case,) = [c for c in table(pg) if c.name == name]
    return case


def assert_anonymous(text: str) -> None:
    """Nothing about where the database is: no user, host, port or database name."""
    for where in ("postgres@", "127.0.0.1", "skiplock_template", "no_such_db"):
        assert where not in text, (where, text)


@pytest.mark.parametrize("name", ids("unreachable"))
def test_readyz_and_503_bodies_say_only_unreachable(pg: PgServer, name: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    case = find(pg, name)
    caplog.set_level(logging.DEBUG)
    # each request waits this long for a pool connection; the pool's attempts fail at once
    # (refused, no such database, a name that does not resolve), so their errors reach the
    # log as with a longer wait (1 s made this 8 requests x 1 s a case)
    with serve(Settings(database_url=case.url, connect_timeout=0.25), ApiSettings()) as url, \
            client(url) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "detail": UNREACHABLE}
        bodies = [ready.text]
        for method, path in (("GET", "/v1/queues"), ("GET", "/v1/jobs/1"),
                             ("POST", "/v1/jobs"), ("GET", "/v1/jobs")):
            r = c.request(method, path, json={"task": "add", "args": {"a": 1, "b": 2}}
                          if method == "POST" else None)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["error"] == UNREACHABLE, (path, r.text)
            bodies.append(r.text)
        page = c.get("/ui/")
        assert page.status_code == 503
        assert UNREACHABLE in page.text
        bodies.append(page.text)
        metrics = c.get("/metrics").text
    for body in bodies:
        assert_no_password(case, body)
        assert_anonymous(body)
    assert_no_password(case, metrics, caplog.text)
    # whoever runs the API still learns what failed, and where (redacted)
    assert "readyz: " in caplog.text and "is unreachable" in caplog.text, caplog.text


def test_a_reachable_database_is_ready(pg: PgServer, caplog: pytest.LogCaptureFixture) -> None:
    case = find(pg, "dsn quoted")
    caplog.set_level(logging.DEBUG)
    with serve(Settings(database_url=case.url, connect_timeout=2), ApiSettings()) as url, \
            client(url) as c:
        assert c.get("/readyz").json() == {"status": "ok", "detail": None}
        r = c.get("/v1/jobs/999999")
        assert r.status_code == 404
        assert_no_password(case, r.text)
    assert_no_password(case, caplog.text)


@pytest.mark.parametrize("name", ids("malformed"))
def test_a_malformed_url_stops_the_api_with_a_clean_error(pg: PgServer, name: str,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    case = find(pg, name)
    with pytest.raises(ConfigurationError, match=r"^the database URL \(.*\) is malformed: "):
        create_app(Settings(database_url=case.url), ApiSettings())
    out = subprocess.run(
        [sys.executable, "-m", "skiplock", "api", "--port", str(free_port())],
        env={**os.environ, "SKIPLOCK_DATABASE_URL": case.url,
             "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"},
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stderr.splitlines()[-1].startswith("skiplock: error: the database URL ("), out
    assert "Traceback" not in out.stderr
    assert_no_password(case, out.stdout, out.stderr, caplog.text)
