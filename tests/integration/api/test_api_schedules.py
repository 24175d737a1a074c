"""Schedules in the API (GET /v1/schedules), the dashboard (/ui/schedules) and the metrics:
seeded with SQL, exact answers; reads need a token; names are escaped."""

from __future__ import annotations

import html
from collections.abc import Callable

import httpx

from tests.integration.api.conftest import AUTH, READ
from tests.integration.api.seed import HOSTILE

Sql = Callable[..., list[tuple[object, ...]]]


def seed_schedules(sql: Sql) -> None:
    sql("INSERT INTO schedules (name, task, queue, cron, every_seconds, timezone, args, "
        "source, next_fire_at, last_fire_at, missed, backfill_limit, paused) VALUES "
        "('nightly', 'report', 'default', '0 2 * * *', NULL, 'Europe/Berlin', "
        "'{\"kind\": \"daily\"}', 'crd:ns/nightly', now() - interval '10 minutes', "
        "now() - interval '1 day 10 minutes', 'backfill', 3, false), "
        "(%s, 'tick', 'q2', NULL, 30, 'UTC', '{}', 'app', now() + interval '20 seconds', "
        "NULL, 'skip', 0, false), "
        "('held', 'tick', 'q2', NULL, 60, 'UTC', '{}', 'app', now() - interval '1 hour', "
        "NULL, 'once', 0, true)", HOSTILE)
    sql("INSERT INTO schedule_firings (schedule, fire_at, job_id) VALUES "
        "('nightly', now() - interval '1 day 10 minutes', 41), "
        "('nightly', now() - interval '2 days 10 minutes', 40)")


def test_list_schedules(api: httpx.Client, sql: Sql) -> None:
    seed_schedules(sql)
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong-token-123456"}):
        assert api.get("/v1/schedules", headers=headers).status_code == 401
        assert api.get("/ui/schedules", headers=headers).status_code == 401
    for token in (READ, AUTH):
        r = api.get("/v1/schedules", headers=token)
        assert r.status_code == 200, r.text
    got = {s["name"]: s for s in r.json()["schedules"]}
    assert list(got) == sorted(got)
    nightly = got["nightly"]
    assert (nightly["cron"], nightly["timezone"], nightly["every_seconds"]) == (
        "0 2 * * *", "Europe/Berlin", None)
    assert nightly["missed"] == "backfill" and nightly["backfill_limit"] == 3
    assert nightly["source"] == "crd:ns/nightly" and nightly["args"] == {"kind": "daily"}
    assert nightly["last_job_id"] == 41  # the latest firing's job
    assert 600 <= nightly["late_seconds"] < 700
    assert got[HOSTILE]["late_seconds"] == 0 and got[HOSTILE]["every_seconds"] == 30
    assert got["held"]["paused"] is True and got["held"]["late_seconds"] == 0


def test_schedules_page(api: httpx.Client, sql: Sql) -> None:
    seed_schedules(sql)
    r = api.get("/ui/schedules", headers=READ)
    assert r.status_code == 200
    page = r.text
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert html.escape("<script>alert(1)</script>") in page
    assert 'data-schedule="nightly"' in page and "0 2 * * *" in page and "Europe/Berlin" in page
    row = page.split('data-schedule="nightly"')[1].split("</tr>")[0]
    assert "(late 10m)" in row and 'href="/ui/jobs/41"' in row and "backfill 3" in row
    held = page.split('data-schedule="held"')[1].split("</tr>")[0]
    assert "paused" in held and "late" not in held.split('data-col="next"')[1]


def test_empty_schedules(api: httpx.Client) -> None:
    assert api.get("/v1/schedules", headers=READ).json() == {"schedules": []}
    assert 'id="no-schedules"' in api.get("/ui/schedules", headers=READ).text
