"""An API app on a fresh database, with the test tasks registered as a worker would."""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator

import httpx
import pytest
from pydantic import SecretStr

from skiplock.api.config import ApiSettings
from skiplock.settings import Settings
from tests.integration.api.server import client, serve
from tests.tasks import app as task_app

TOKEN = "s3cret-t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_TOKEN = "r3ad-only-t0ken-for-tests"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}


class ReadsWithReadToken(httpx.Auth):
    """Sends the read token with every GET that has no Authorization of its own: reads need a
    token once one is configured, while a POST without headers still goes unauthenticated (so
    tests of the 401 stay what they say)."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if request.method == "GET" and "authorization" not in request.headers:
            request.headers["Authorization"] = READ["Authorization"]
        yield request


def register_tasks(sql: Callable[..., list[tuple[object, ...]]]) -> None:
    for t in task_app.tasks.values():
        sql("INSERT INTO tasks (name, params, max_attempts, queue) VALUES (%s, %s, %s, %s)",
            t.name, json.dumps(dict(t.params)), t.max_attempts, t.queue)


def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, connect_timeout=2)


@pytest.fixture
def api(database_url: str, sql: Callable[..., list[tuple[object, ...]]]) -> Iterator[httpx.Client]:
    register_tasks(sql)
    with serve(settings(database_url), ApiSettings(token=SecretStr(TOKEN),
                                                   read_token=SecretStr(READ_TOKEN),
                                                   sample_interval=0.1)
               ) as url, client(url) as c:
        c.auth = ReadsWithReadToken()
        yield c


@pytest.fixture
def open_api(database_url: str, sql: Callable[..., list[tuple[object, ...]]]
             ) -> Iterator[httpx.Client]:
    """The same API without a token configured."""
    register_tasks(sql)
    with serve(settings(database_url), ApiSettings()) as url, client(url) as c:
        yield c
