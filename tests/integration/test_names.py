"""Queue and task names at enqueue, against a real database: the limits exactly, the pattern's
edges, the same rule for one job, many jobs and the HTTP API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from skiplock import Client, InvalidArguments
from tests.integration.api.conftest import open_api  # noqa: F401 (a fixture)

Sql = Callable[..., list[tuple[Any, ...]]]

GOOD_QUEUES = ["q", "0", "Q" * 128, "billing.invoices", "a:b-c_d.e"]
BAD_QUEUES = [
    ("Q" * 129, "queue name is 129 characters long; at most 128"),
    ("-x", "queue name '-x' is not allowed: use letters, digits and '_', '.', ':', '-', "
           "starting with a letter or digit (e.g. 'mail' or 'billing.invoices')"),
    ("mail box", "queue name 'mail box' is not allowed"),
    ("mail\n", "queue name 'mail\\n' is not allowed"),
    ("<script>alert(1)</script>", "queue name '<script>alert(1)</script>' is not allowed"),
    ("", "queue name must not be empty"),
]


@pytest.mark.parametrize("queue", GOOD_QUEUES)
def test_client_enqueues_into_every_allowed_queue(database_url: str, sql: Sql,
                                                  queue: str) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("add", {"a": 1, "b": 2}, queue=queue)
    assert sql("SELECT queue FROM jobs WHERE id = %s", job_id) == [(queue,)]


@pytest.mark.parametrize(("queue", "message"), BAD_QUEUES)
def test_client_refuses_a_bad_queue_and_stores_nothing(database_url: str, sql: Sql, queue: str,
                                                       message: str) -> None:
    with Client(database_url) as c:
        with pytest.raises(InvalidArguments) as one:
            c.enqueue("add", {"a": 1, "b": 2}, queue=queue)
        with pytest.raises(InvalidArguments) as many:
            c.enqueue_many([{"task": "add", "queue": "ok"}, {"task": "add", "queue": queue}])
    assert str(one.value).startswith(message), str(one.value)
    assert str(many.value).startswith(f"job #1: {message}"), str(many.value)
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


def test_task_names_at_the_limit(database_url: str, sql: Sql) -> None:
    with Client(database_url, validate=False) as c:
        job_id = c.enqueue("t" * 256)
        with pytest.raises(InvalidArguments, match=r"^task name is 257 characters long; at most "
                                                   r"256$"):
            c.enqueue("t" * 257)
        with pytest.raises(InvalidArguments, match="must be printable text"):
            c.enqueue("tab\there")
    assert sql("SELECT length(task) FROM jobs") == [(256,)]
    assert sql("SELECT id FROM jobs") == [(job_id,)]


@pytest.mark.parametrize(("queue", "message"), BAD_QUEUES[:-1])
def test_api_refuses_a_bad_queue_naming_the_field(open_api: httpx.Client,  # noqa: F811
                                                  sql: Sql, queue: str, message: str) -> None:
    job = {"task": "add", "args": {"a": 1, "b": 2}, "queue": queue}
    r = open_api.post("/v1/jobs", json=job)
    assert r.status_code == 422, r.text
    fields = r.json()["fields"]
    assert fields[0]["field"] == "queue", fields
    assert message in fields[0]["message"], fields
    r = open_api.post("/v1/jobs/batch", json={"jobs": [{"task": "noop"}, job]})
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == "jobs[1].queue", r.text
    # nothing was stored by either
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


def test_api_accepts_the_longest_queue_and_publishes_the_pattern(
        open_api: httpx.Client) -> None:  # noqa: F811
    r = open_api.post("/v1/jobs", json={"task": "add", "args": {"a": 1, "b": 2},
                                        "queue": "Q" * 128})
    assert r.status_code == 201, r.text
    assert r.json()["queue"] == "Q" * 128
    schema = open_api.get("/openapi.json").json()["components"]["schemas"]["JobIn"]
    assert schema["properties"]["queue"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
