"""A database that stops answering without closing the connection (packets swallowed by a
real fault-injecting proxy): the API still answers 503 within its request deadline."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable

from pydantic import SecretStr

from skiplock.api.config import ApiSettings
from skiplock.settings import Settings
from tests.integration.api.conftest import AUTH, TOKEN, register_tasks
from tests.integration.api.server import client, serve
from tests.support.pgserver import PgServer
from tests.support.toxiproxy import running_toxiproxy
from tests.support.waits import wait_until

DEADLINE = 2.0
_names = itertools.count()


def test_blackholed_database_gives_503_within_the_deadline(
        pg: PgServer, database_url: str, sql: Callable[..., list[tuple[object, ...]]]) -> None:
    register_tasks(sql)
    job = {"task": "add", "args": {"a": 1, "b": 2}}
    with running_toxiproxy() as toxiproxy:
        proxy = toxiproxy.create(f"api{os.getpid()}_{next(_names)}", pg.port)
        settings = Settings(database_url=proxy.url(database_url), connect_timeout=1)
        api = ApiSettings(token=SecretStr(TOKEN), request_timeout=DEADLINE, sample_interval=60)
        try:
            with serve(settings, api) as url, client(url) as c:
                assert c.post("/v1/jobs", json=job, headers=AUTH).status_code == 201
                # the overview pages have listed once, so their next reads start side by
                # side on the names they listed (api/last_pages.py)
                for page in ("/v1/queues", "/ui/"):
                    assert c.get(page, headers=AUTH).status_code == 200
                # "timeout" with timeout=0: data stops flowing both ways, no connection closes.
                with proxy.toxic("timeout", stream="downstream", timeout=0), \
                        proxy.toxic("timeout", stream="upstream", timeout=0,
                                    name="timeout_up"):
                    for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
                                         ("GET", "/v1/queues"), ("GET", "/readyz"),
                                         ("GET", "/ui/jobs"), ("GET", "/ui/")):
                        started = time.monotonic()
                        r = c.request(method, path, json=job if method == "POST" else None,
                                      headers=AUTH)
                        took = time.monotonic() - started
                        assert r.status_code == 503, (path, r.status_code, r.text)
                        assert took < DEADLINE + 3, (path, took)
                        assert "did not answer" in r.text or "unreachable" in r.text, r.text
                    post = c.post("/v1/jobs", json=job, headers=AUTH)
                    assert "may or may not" in post.json()["error"], post.text
                    assert c.get("/healthz").status_code == 200
                # The link is back: the API recovers without a restart.
                wait_until(lambda: c.get("/readyz").status_code == 200, timeout=60,
                           message="readiness after the blackhole")
                assert c.get("/v1/jobs", headers=AUTH).status_code == 200
                # no connection a cancelled side read held went back to the pool
                for page in ("/v1/queues", "/ui/"):
                    assert c.get(page, headers=AUTH).status_code == 200, page
        finally:
            toxiproxy.delete(proxy.name)
