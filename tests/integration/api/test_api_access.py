"""Access control against a real uvicorn + Postgres: read and write tokens, the dashboard's
session cookie, forged cross-site requests, foreign Host headers, and `skiplock api` refusing an
open non-loopback bind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from skiplock.api import create_app
from skiplock.api.access import COOKIE, session_value
from skiplock.api.config import ApiSettings
from tests.conftest import ROOT
from tests.integration.api.conftest import (
    AUTH,
    READ,
    READ_TOKEN,
    TOKEN,
    register_tasks,
)
from tests.integration.api.conftest import (
    settings as db_settings,
)
from tests.integration.api.server import client, serve
from tests.support.pgserver import free_port
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[object, ...]]]
# The only content types an HTML form can send without a CORS preflight, a missing one (a
# bodyless fetch in no-cors mode, navigator.sendBeacon of a string... ) and variants of case
# and parameters a lax check might let through.
FORGEABLE = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
             "text/plain", "TEXT/PLAIN; charset=utf-8", "text/plain;application/json", None,
             "application/x-www-form-urlencoded; charset=application/json"]


def state_of(sql: Sql) -> list[tuple[object, ...]]:
    """Everything a forged request could have changed."""
    return [*sql("SELECT id, state::text, attempts, cancel_requested_at IS NOT NULL FROM jobs "
                 "ORDER BY id"),
            *sql("SELECT 'paused', queue FROM paused_queues ORDER BY queue")]


def seed_targets(sql: Sql) -> tuple[int, int]:
    (dead,) = sql("INSERT INTO jobs (task, state, finished_at) VALUES ('noop', 'dead', now()) "
                  "RETURNING id")[0]
    (queued,) = sql("INSERT INTO jobs (task) VALUES ('noop') RETURNING id")[0]
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('held', 'test')")
    return int(dead), int(queued)  # type: ignore[call-overload]


def mutations(dead: int, queued: int) -> list[tuple[str, str, dict[str, object]]]:
    """Every mutating route of the app, each with a body that would do something if accepted
    (the classic trick: a JSON text sent as text/plain)."""
    bodies: dict[str, tuple[str, dict[str, object]]] = {
        "/v1/jobs": ("/v1/jobs", {"task": "noop"}),
        "/v1/jobs/batch": ("/v1/jobs/batch", {"jobs": [{"task": "noop"}]}),
        "/v1/jobs/bulk": ("/v1/jobs/bulk", {"action": "delete", "filter": {"all": True}}),
        "/v1/jobs/retry-dead": ("/v1/jobs/retry-dead", {}),
        "/v1/jobs/{job_id}/retry": (f"/v1/jobs/{dead}/retry", {}),
        "/v1/jobs/{job_id}/cancel": (f"/v1/jobs/{queued}/cancel", {}),
        "/v1/queues/{queue}/pause": ("/v1/queues/mail/pause", {}),
        "/v1/queues/{queue}/resume": (f"/v1/queues/{quote('held')}/resume", {}),
        "/ui/session": ("/ui/session", {"token": TOKEN}),
    }
    app = create_app(db_settings("postgresql://x@127.0.0.1:1/x"), ApiSettings())
    found: list[tuple[str, str, dict[str, object]]] = []
    for route in _walk(app.routes):
        for method in sorted(getattr(route, "methods", None) or ()):
            if method in ("GET", "HEAD", "OPTIONS"):
                continue
            # {queue:path} or {queue:anytext}: the converter does not matter here.
            template = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", getattr(route, "path", ""))
            assert template in bodies, f"a mutating route this test does not forge: {template}"
            path, body = bodies[template]
            found.append((method, path, body))
    assert len(found) == len(bodies) + 1  # + DELETE /ui/session
    return found


def _walk(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        # An included router (FastAPI keeps it whole) holds its own routes.
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        if inner is not None:
            yield from _walk(inner)
        else:
            yield route


def forge(c: httpx.Client, method: str, path: str, body: dict[str, object],
          ctype: str | None, headers: dict[str, str] | None = None) -> httpx.Response:
    h = dict(headers or {})
    content: bytes | None = None
    if ctype is not None:
        h["Content-Type"] = ctype
        content = (json.dumps(body) if "plain" in ctype.lower()
                   else "&".join(f"{k}={v}" for k, v in body.items())).encode()
    return c.request(method, path, content=content, headers=h)


@pytest.fixture
def cookie_api(database_url: str, sql: Sql) -> Iterator[httpx.Client]:
    """The token-configured API, as a browser signed in with the write token sees it: the
    session cookie goes with every request, like a browser's would (SameSite aside: another
    port on localhost is the same site)."""
    register_tasks(sql)
    api = ApiSettings(token=SecretStr(TOKEN), read_token=SecretStr(READ_TOKEN))
    with serve(db_settings(database_url), api) as url, client(url) as c:
        r = c.post("/ui/session", json={"token": TOKEN})
        assert r.status_code == 200 and r.json() == {"scope": "write"}, r.text
        assert c.cookies[COOKIE] == session_value(TOKEN)
        yield c


@pytest.mark.parametrize("fixture", ["open_api", "cookie_api"])
def test_forged_cross_site_requests_change_nothing(fixture: str, request: pytest.FixtureRequest,
                                                   sql: Sql) -> None:
    c: httpx.Client = request.getfixturevalue(fixture)
    dead, queued = seed_targets(sql)
    before = state_of(sql)
    for method, path, body in mutations(dead, queued):
        for ctype in FORGEABLE:
            r = forge(c, method, path, body, ctype)
            assert r.status_code == 415, (method, path, ctype, r.status_code, r.text)
            assert "application/json" in r.json()["error"], r.text
        # A page on another origin that manages a JSON body (it cannot, without a preflight
        # this server never grants) or the header is still refused by its Origin.
        for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
            r = c.request(method, path, json=body, headers={"Origin": origin})
            assert r.status_code == 403, (method, path, origin, r.text)
            assert "cross-origin" in r.json()["error"]
    assert state_of(sql) == before
    # ...while the dashboard's own way (JSON, or the header on a bodyless POST) works.
    r = c.post(f"/v1/jobs/{dead}/retry", headers={"X-Skiplock-Request": "1",
                                                   "Origin": str(c.base_url).rstrip("/")})
    assert r.status_code == 200, r.text
    assert c.post("/v1/jobs", json={"task": "noop"}).status_code == 201


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ctype=st.from_regex(r"\A[a-zA-Z]{1,12}/[a-zA-Z0-9.+-]{1,20}(; ?[a-z]+=[a-z0-9/]+)?\Z"))
def test_any_non_json_content_type_is_refused_for_a_change(cookie_api: httpx.Client,
                                                           sql: Sql, ctype: str) -> None:
    sub = ctype.split(";")[0].strip().lower()
    is_json = sub == "application/json" or sub.endswith("+json")
    before = sql("SELECT count(*) FROM jobs")
    r = cookie_api.post("/v1/jobs", content=b'{"task": "noop"}', headers={"Content-Type": ctype})
    if is_json:
        assert r.status_code == 201, (ctype, r.text)
    else:
        assert r.status_code == 415, (ctype, r.text)
        assert sql("SELECT count(*) FROM jobs") == before


READS = ["/v1/jobs", "/v1/jobs/count", "/v1/jobs/{id}", "/v1/queues", "/v1/workers",
         "/v1/schedules", "/ui/", "/ui/jobs", "/ui/jobs/{id}", "/ui/schedules"]


def test_read_token_reads_and_cannot_write_write_token_does_both(api: httpx.Client,
                                                                 sql: Sql) -> None:
    dead, queued = seed_targets(sql)
    before = state_of(sql)
    for path in (p.format(id=dead) for p in READS):
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token-123456"},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
                        {"Authorization": f"Bearer {TOKEN[:-1]}"}):
            r = api.get(path, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert TOKEN not in r.text and READ_TOKEN not in r.text
        for token in (READ, AUTH):
            r = api.get(path, headers=token)
            assert r.status_code == 200, (path, r.text)
    for method, path, body in mutations(dead, queued):
        if path == "/ui/session":
            continue
        r = api.request(method, path, json=body, headers=READ)
        assert r.status_code == 403, (path, r.text)
        assert "read token cannot change" in r.json()["error"]
        r = api.request(method, path, json=body)
        assert r.status_code == 401, (path, r.text)
    assert state_of(sql) == before
    assert api.post(f"/v1/jobs/{dead}/retry", headers=AUTH).json()["state"] == "queued"
    assert api.post("/v1/queues/held/resume", headers=AUTH).json()["changed"] is True


def test_sign_in_cookie_grants_the_tokens_scope_and_nothing_else(database_url: str,
                                                                sql: Sql) -> None:
    register_tasks(sql)
    dead, _ = seed_targets(sql)
    api = ApiSettings(token=SecretStr(TOKEN), read_token=SecretStr(READ_TOKEN))
    with serve(db_settings(database_url), api) as url, client(url) as c:
        for bad in ({"token": "wrong-token-123456"}, {"token": ""}, {"tok": TOKEN}):
            r = c.post("/ui/session", json=bad)
            assert r.status_code in (401, 422), r.text
            assert COOKIE not in c.cookies and TOKEN not in r.text
        r = c.post("/ui/session", json={"token": READ_TOKEN})
        assert r.status_code == 200 and r.json() == {"scope": "read"}
        set_cookie = r.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        # The cookie is a digest of the token, not the token.
        assert READ_TOKEN not in r.headers["set-cookie"]
        assert c.get("/v1/jobs").status_code == 200 and c.get("/ui/").status_code == 200
        r = c.post(f"/v1/jobs/{dead}/retry", json={})
        assert r.status_code == 403, r.text
        # A forged cookie, or the raw token as cookie, is no credential.
        for value in ("x", READ_TOKEN, TOKEN, session_value("another-token-1234")):
            c.cookies.clear()
            c.cookies.set(COOKIE, value)
            assert c.get("/v1/jobs").status_code == 401, value
        c.cookies.clear()
        assert c.post("/ui/session", json={"token": TOKEN}).json() == {"scope": "write"}
        # A wrong Authorization header is not rescued by a good cookie beside it.
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post(f"/v1/jobs/{dead}/retry", json={}).json()["state"] == "queued"
        r = c.request("DELETE", "/ui/session", headers={"X-Skiplock-Request": "1"})
        assert r.status_code == 200
        assert COOKIE not in c.cookies
        assert c.get("/ui/").status_code == 401
    # A changed token ends every session made with the old one.
    rotated = ApiSettings(token=SecretStr(TOKEN + "-rotated"))
    with serve(db_settings(database_url), rotated) as url, client(url) as c:
        c.cookies.set(COOKIE, session_value(TOKEN))
        assert c.get("/v1/jobs").status_code == 401


def test_a_read_only_server_refuses_every_change(database_url: str, sql: Sql) -> None:
    register_tasks(sql)
    dead, queued = seed_targets(sql)
    before = state_of(sql)
    with serve(db_settings(database_url), ApiSettings(read_token=SecretStr(READ_TOKEN))) as url, \
            client(url) as c:
        assert c.get("/v1/jobs").status_code == 401
        assert c.get("/v1/jobs", headers=READ).status_code == 200
        for method, path, body in mutations(dead, queued):
            if path == "/ui/session":
                continue
            r = c.request(method, path, json=body, headers=READ)
            assert r.status_code == 403 and "read-only" in r.json()["error"], (path, r.text)
    assert state_of(sql) == before


HOSTS = ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.nip.io",
         "localhost:80@evil.example", "localhost:x", "[::2]", "", "LOCALHOST-evil"]


def test_a_foreign_host_header_is_refused_before_anything(api: httpx.Client, sql: Sql) -> None:
    (dead,) = sql("INSERT INTO jobs (task, state, finished_at) VALUES ('noop', 'dead', now()) "
                  "RETURNING id")[0]
    port = api.base_url.port
    for host in HOSTS:
        for method, path in (("GET", "/v1/jobs"), ("GET", "/ui/"), ("GET", "/metrics"),
                             ("GET", "/openapi.json"), ("POST", f"/v1/jobs/{dead}/retry")):
            r = api.request(method, path, headers={**AUTH, "Host": host})
            assert r.status_code == 400, (host, path, r.status_code)
            assert "SKIPLOCK_API_TRUSTED_HOSTS" in r.json()["error"]
    assert sql("SELECT state::text FROM jobs") == [("dead",)]
    # Probes answer whatever the Host (kubelet sends the pod IP); they show no job data.
    assert api.get("/healthz", headers={"Host": "10.1.2.3:8080"}).status_code == 200
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}",
                 "LocalHost.", "127.0.0.1"):
        assert api.get("/v1/jobs", headers={"Host": host}).status_code == 200, host


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=st.from_regex(r"\A[a-z0-9.\-\[\]:@]{1,40}\Z"))
def test_no_other_host_name_is_answered(api: httpx.Client, host: str) -> None:
    name = host
    if host.count(":") == 1:
        before, port = host.split(":")
        name = before if port == "" or port.isdigit() else host
    if name.strip("[]").rstrip(".") in ("localhost", "127.0.0.1", "::1"):
        return
    try:
        r = api.get("/v1/jobs", headers={"Host": host})
    except httpx.LocalProtocolError:
        return  # not even sendable
    assert r.status_code in (400,), (host, r.status_code)


def test_trusted_hosts_setting_replaces_the_default(database_url: str, sql: Sql) -> None:
    register_tasks(sql)
    api = ApiSettings(trusted_hosts=["jobs.example.com", "*.internal.example"])
    with serve(db_settings(database_url), api) as url, client(url) as c:
        assert c.get("/v1/jobs", headers={"Host": "jobs.example.com"}).status_code == 200
        assert c.get("/v1/jobs", headers={"Host": "a.internal.example:443"}).status_code == 200
        for host in ("localhost", "internal.example", "jobs.example.com.evil",
                     "evilinternal.example"):
            assert c.get("/v1/jobs", headers={"Host": host}).status_code == 400, host
        # An Origin named as trusted may change (a proxy rewrote Host), any other may not.
        ok = c.post("/v1/jobs", json={"task": "noop"}, headers={
            "Host": "jobs.example.com", "Origin": "https://a.internal.example"})
        assert ok.status_code == 201, ok.text
        bad = c.post("/v1/jobs", json={"task": "noop"}, headers={
            "Host": "jobs.example.com", "Origin": "https://evil.example"})
        assert bad.status_code == 403
    with pytest.raises(ValueError, match="no scheme, port or path"):
        ApiSettings(trusted_hosts=["https://jobs.example.com"])
    assert ApiSettings(trusted_hosts=["::1", "[::1]"]).trusted_hosts == ["::1", "[::1]"]


def _api_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    return {**env, "SKIPLOCK_DATABASE_URL": database_url,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", "api", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "api.example.com"])
def test_skiplock_api_refuses_an_open_non_loopback_bind(database_url: str, host: str) -> None:
    done = _run(["--host", host, "--port", str(free_port())], _api_env(database_url))
    assert done.returncode == 2, done
    assert "refusing to listen on" in done.stderr and "--insecure-no-token" in done.stderr
    assert "SKIPLOCK_API_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_skiplock_api_rejects_a_weak_token_without_echoing_it(database_url: str) -> None:
    done = _run(["--port", str(free_port())],
                _api_env(database_url, SKIPLOCK_API_TOKEN="hunter2-short"))
    assert done.returncode == 2, done
    assert "at least 16 printable characters" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def _serve_until_up(args: list[str], env: dict[str, str], port: int
                    ) -> tuple[subprocess.Popen[str], httpx.Client]:
    proc = subprocess.Popen([sys.executable, "-m", "skiplock", "api", "--port", str(port),
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return c.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False
    wait_until(up, timeout=30, message="skiplock api to listen")
    assert proc.poll() is None, proc.communicate()[0]
    return proc, c


def _stop(proc: subprocess.Popen[str], c: httpx.Client) -> str:
    c.close()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    return out


@pytest.mark.parametrize("how", ["--insecure-no-token", "token"])
def test_skiplock_api_serves_a_non_loopback_bind_when_told(database_url: str, sql: Sql,
                                                           how: str) -> None:
    register_tasks(sql)
    port = free_port()
    extra = {"SKIPLOCK_API_TOKEN": TOKEN} if how == "token" else {}
    args = ["--host", "0.0.0.0"] + ([how] if how != "token" else [])
    proc, c = _serve_until_up(args, _api_env(database_url, **extra), port)
    try:
        # Bound to every address, it answers whatever name it is reached by.
        r = c.get("/v1/jobs", headers={"Host": "skiplock.svc.cluster.local", **(
            AUTH if how == "token" else {})})
        assert r.status_code == 200, r.text
        if how == "token":
            assert c.get("/v1/jobs").status_code == 401
    finally:
        _stop(proc, c)


def test_tokens_never_appear_in_a_url_or_a_log_line(database_url: str, sql: Sql) -> None:
    register_tasks(sql)
    port = free_port()
    env = _api_env(database_url, SKIPLOCK_API_TOKEN=TOKEN, SKIPLOCK_API_READ_TOKEN=READ_TOKEN,
                   SKIPLOCK_LOG_LEVEL="DEBUG")
    proc, c = _serve_until_up(["--access-log"], env, port)
    secrets = [TOKEN, READ_TOKEN, session_value(TOKEN), session_value(READ_TOKEN)]
    try:
        pages: list[str] = []
        for headers in (AUTH, READ, {"Authorization": f"Bearer {TOKEN}x"}, {}):
            for path in ("/v1/jobs", "/ui/", "/ui/jobs?queue=a", "/v1/jobs/1"):
                r = c.get(path, headers=headers)
                pages.append(r.text)
                assert r.status_code in (200, 401, 404), (path, r.status_code)
        r = c.post("/v1/jobs", json={"task": "noop"}, headers=AUTH)
        assert r.status_code == 201, r.text
        for token in (TOKEN, READ_TOKEN, "wrong-token-123456"):
            r = c.post("/ui/session", json={"token": token})
            pages.append(r.text)
        assert c.post("/ui/session", content=f"token={TOKEN}", headers={
            "Content-Type": "application/x-www-form-urlencoded"}).status_code == 415
        r = c.get("/ui/jobs")  # signed in by the last good cookie
        pages.append(r.text)
        assert r.status_code == 200
        for page in pages:
            for s in secrets:
                assert s not in page
    finally:
        out = _stop(proc, c)
    assert "/ui/session" in out and "/v1/jobs" in out, out  # the access log did run
    for s in secrets:
        assert s not in out, out
