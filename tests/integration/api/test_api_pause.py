"""Pause and resume a queue over HTTP, and how the queue views show it."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import httpx
import pytest
from markupsafe import escape

from tests.integration.api.conftest import AUTH, READ

Sql = Callable[..., list[tuple[object, ...]]]
HOSTILE = "<b>q'\"&amp;/日本 🚀</b>"
ODD = ("Billing.v2:eu-west_1-" * 7)[:128]


def url(queue: str, action: str) -> str:
    # safe="": a slash in the name travels as %2F
    return f"/v1/queues/{quote(queue, safe='')}/{action}"


def queues(api: httpx.Client) -> dict[str, dict[str, object]]:
    r = api.get("/v1/queues")
    assert r.status_code == 200, r.text
    return {q["queue"]: q for q in r.json()["queues"]}


def test_pause_and_resume_need_the_write_token(api: httpx.Client, sql: Sql) -> None:
    for action in ("pause", "resume"):
        for headers in ({"Authorization": "Bearer wrong"}, READ):
            r = api.post(url("mail", action), headers=headers)
            assert r.status_code in (401, 403), r.text
            assert "token" in r.json()["error"]
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


def test_pause_twice_then_resume_twice(api: httpx.Client, sql: Sql) -> None:
    sql("INSERT INTO jobs (queue, task) VALUES ('busy', 'noop')")
    first = api.post(url("mail", "pause"), json={"reason": "provider outage"}, headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["queue"], body["paused"], body["changed"], body["paused_by"]) == (
        "mail", True, True, "api: provider outage")
    again = api.post(url("mail", "pause"), headers=AUTH)  # no body at all
    assert again.status_code == 200, again.text
    assert again.json() == {**body, "changed": False}  # the first pause is kept

    # A paused queue with no jobs is listed, with who paused it and when ("default" is the
    # registered tasks' queue).
    shown = queues(api)
    assert set(shown) == {"busy", "default", "mail"}
    assert (shown["mail"]["paused"], shown["mail"]["paused_by"]) == (True, "api: provider outage")
    assert shown["mail"]["paused_at"] == body["paused_at"]
    assert (shown["busy"]["paused"], shown["busy"]["paused_at"], shown["busy"]["paused_by"]) == (
        False, None, None)
    only = api.get("/v1/queues", params={"queue": "mail"}).json()["queues"]
    assert [(q["queue"], q["paused"]) for q in only] == [("mail", True)]

    r = api.post(url("mail", "resume"), headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"queue": "mail", "paused": False, "paused_at": None, "paused_by": None,
                        "changed": True}
    r = api.post(url("mail", "resume"), headers=AUTH)
    assert (r.status_code, r.json()["changed"]) == (200, False)
    assert set(queues(api)) == {"busy", "default"}
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


@pytest.mark.parametrize("name", [ODD, "0", "a.b:c-d_e"])
def test_names_round_trip_through_the_path(api: httpx.Client, sql: Sql, name: str) -> None:
    r = api.post(url(name, "pause"), headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["queue"] == name
    assert sql("SELECT queue FROM paused_queues") == [(name,)]
    assert queues(api)[name]["paused"] is True
    r = api.post(url(name, "resume"), headers=AUTH)
    assert (r.status_code, r.json()["changed"]) == (200, True)


@pytest.mark.parametrize("name", [HOSTILE, "a/b", " spaced ", "new\nline", "/", "ends/pause"])
def test_a_queue_paused_by_hand_is_resumed_whatever_its_name(api: httpx.Client, sql: Sql,
                                                             name: str) -> None:
    """Pause takes the names new queues may have; resume any a queue column holds, so a queue
    paused in SQL (or under an older rule) never stays paused for want of a valid name."""
    sql("INSERT INTO paused_queues (queue) VALUES (%s)", name)
    r = api.post(url(name, "pause"), headers=AUTH)
    assert r.status_code == 422 and "is not allowed" in r.json()["error"], r.text
    assert queues(api)[name]["paused"] is True
    r = api.post(url(name, "resume"), headers=AUTH)
    assert (r.status_code, r.json()["changed"], r.json()["queue"]) == (200, True, name), r.text
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


@pytest.mark.parametrize(("path", "body", "field", "words"), [
    (url("x" * 129, "pause"), None, "queue", "at most 128 characters"),
    (url("x" * 129, "resume"), None, "queue", "at most 128 characters"),
    ("/v1/queues//pause", None, "queue", "at least 1 character"),
    (url("a\x00b", "pause"), None, "queue", "is not allowed"),
    (url("a\x00b", "resume"), None, "queue", "NUL"),
    (url(HOSTILE, "pause"), None, "queue", "is not allowed: use letters, digits and"),
    (url("mail", "pause"), {"reason": ""}, "reason", "at least 1 character"),
    (url("mail", "pause"), {"reason": "r" * 501}, "reason", "at most 500 characters"),
    (url("mail", "pause"), {"why": "typo"}, "why", "unknown field"),
])
def test_bad_requests_are_422_naming_the_field(api: httpx.Client, sql: Sql, path: str,
                                               body: dict[str, str] | None, field: str,
                                               words: str) -> None:
    r = api.post(path, json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert field in {f["field"] for f in problem["fields"]}, problem
    assert words in problem["error"], problem
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


def test_metrics_and_openapi(api: httpx.Client, sql: Sql) -> None:
    sql("INSERT INTO jobs (queue, task) VALUES ('busy', 'noop')")
    assert api.post(url("mail", "pause"), headers=AUTH).status_code == 200
    text = api.get("/metrics").text
    assert 'skiplock_queue_paused{queue="mail"} 1.0' in text
    assert 'skiplock_queue_paused{queue="busy"} 0.0' in text
    doc = api.get("/openapi.json").json()
    assert {"/v1/queues/{queue}/pause", "/v1/queues/{queue}/resume"} <= set(doc["paths"])
    assert doc["paths"]["/v1/queues/{queue}/pause"]["post"]["security"]


def test_dashboard_shows_the_badge_and_the_button_escaped(api: httpx.Client, sql: Sql) -> None:
    # a name from before the naming rule (or raw SQL), paused by hand
    sql("INSERT INTO jobs (queue, task) VALUES ('busy', 'noop')")
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES (%s, 'api: <i>why</i>')", HOSTILE)
    page = api.get("/ui/").text
    assert HOSTILE not in page and "<i>why</i>" not in page
    escaped = str(escape(HOSTILE))  # Jinja's autoescape
    assert f'<tr data-queue="{escaped}" data-paused="true" class="paused">' in page
    assert f'data-action="resume" data-queue="{escaped}">Resume</button>' in page
    assert '<span class="badge paused" data-col="paused">paused</span>' in page
    assert "by api: &lt;i&gt;why&lt;/i&gt;</div>" in page
    assert 'data-action="pause" data-queue="busy">Pause</button>' in page
