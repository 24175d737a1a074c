"""The JSON API against a real uvicorn server and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.api.conftest import AUTH
from tests.integration.api.seed import filter_cases, seed
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[object, ...]]]


def count(sql: Sql) -> int:
    return int(sql("SELECT count(*) FROM jobs")[0][0])  # type: ignore[call-overload]


def test_enqueue_returns_201_with_the_stored_job(api: httpx.Client, sql: Sql) -> None:
    r = api.post("/v1/jobs", json={"task": "add", "args": {"a": 1, "b": 2}, "priority": 3,
                                   "delay": 60}, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "queued" and body["args"] == {"a": 1, "b": 2}
    # Defaults come from the task the worker registered, as with the Python client.
    assert body["max_attempts"] == 5 and body["queue"] == "default" and body["priority"] == 3
    row = sql("SELECT task, priority, run_at > now() + interval '50 seconds' FROM jobs"
              " WHERE id = %s", body["id"])
    assert row == [("add", 3, True)]


@pytest.mark.parametrize(("payload", "field", "words"), [
    ({"task": "add", "args": {"a": 1, "b": 2}, "priority": 40000}, "priority", "32767"),
    ({"task": "nope", "args": {}}, "task", "unknown task 'nope'"),
    ({"task": "add", "args": {"a": "x", "b": 2}}, "args", "'a' must be integer"),
    ({"task": "add", "args": {"a": 1}}, "args", "missing required 'b'"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "prio": 1}, "prio", "unknown field"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "run_at": "2030-01-01T00:00:00"}, "run_at",
     "timezone"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "run_at": "2030-01-01T00:00:00Z", "delay": 5},
     "body", "run_at or delay"),
    ({"task": "add", "args": {"a": 1, "b": 2, "c": "\u0000"}}, "args", "NUL"),
    ({"task": "add", "args": [1, 2]}, "args", "dictionary"),
    ({"task": "", "args": {}}, "task", "at least 1"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "max_attempts": 0}, "max_attempts",
     "greater than or equal to 1"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "delay": -1}, "delay", "greater than or equal to 0"),
])
def test_bad_job_is_422_naming_the_field_and_stores_nothing(
        api: httpx.Client, sql: Sql, payload: dict[str, object], field: str, words: str) -> None:
    r = api.post("/v1/jobs", json=payload, headers=AUTH)
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in {f["field"] for f in body["fields"]}, body
    assert words in body["error"], body
    assert count(sql) == 0


def test_nan_in_args_is_rejected(api: httpx.Client, sql: Sql) -> None:
    # Python's JSON parser accepts NaN, jsonb does not: it must be a 422, not a 500.
    r = api.post("/v1/jobs", content=b'{"task": "add", "args": {"a": 1, "b": NaN}}',
                 headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert count(sql) == 0


def test_idempotency_key_makes_a_retried_post_safe(api: httpx.Client, sql: Sql) -> None:
    job = {"task": "add", "args": {"a": 1, "b": 2}}
    first = api.post("/v1/jobs", json=job, headers={**AUTH, "Idempotency-Key": "order-17"})
    again = api.post("/v1/jobs", json=job, headers={**AUTH, "Idempotency-Key": "order-17"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["unique_key"] == "order-17"
    assert count(sql) == 1
    clash = api.post("/v1/jobs", json={**job, "unique_key": "other"},
                     headers={**AUTH, "Idempotency-Key": "order-18"})
    assert clash.status_code == 422 and clash.json()["fields"][0]["field"] == "unique_key"
    assert count(sql) == 1


def test_batch_is_all_or_nothing_and_idempotent(api: httpx.Client, sql: Sql) -> None:
    good = [{"task": "add", "args": {"a": i, "b": i}} for i in range(3)]
    bad = api.post("/v1/jobs/batch", json={"jobs": [*good, {"task": "add", "args": {"a": 1}}]},
                   headers=AUTH)
    assert bad.status_code == 422, bad.text
    assert bad.json()["fields"][0]["field"] == "jobs[3].args"
    assert count(sql) == 0

    headers = {**AUTH, "Idempotency-Key": "batch-1"}
    r = api.post("/v1/jobs/batch", json={"jobs": good}, headers=headers)
    assert r.status_code == 201, r.text
    ids = [j["id"] for j in r.json()["jobs"]]
    assert len(set(ids)) == 3 and all(j["created"] for j in r.json()["jobs"])
    replay = api.post("/v1/jobs/batch", json={"jobs": good}, headers=headers)
    assert [j["id"] for j in replay.json()["jobs"]] == ids
    assert not any(j["created"] for j in replay.json()["jobs"])
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert count(sql) == 3
    # The header names the whole batch (one key row); no job gets a derived KEY:i of its own
    # that a single job's key could collide with.
    assert sql("SELECT unique_key FROM jobs ORDER BY id") == [(None,)] * 3
    assert sql("SELECT key, job_ids FROM idempotency_keys") == [("batch-1", ids)]


def test_mutations_need_the_token_and_reads_need_one_too(api: httpx.Client, sql: Sql) -> None:
    job = {"task": "add", "args": {"a": 1, "b": 2}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        r = api.post("/v1/jobs", json=job, headers=headers)
        assert r.status_code == 401, r.text
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "s3cret" not in r.text
    assert count(sql) == 0
    (job_id,) = sql("INSERT INTO jobs (task, state, finished_at) VALUES ('noop', 'dead', now())"
                    " RETURNING id")[0]
    for action in ("retry", "cancel"):
        assert api.post(f"/v1/jobs/{job_id}/{action}").status_code == 401
    assert sql("SELECT state::text FROM jobs WHERE id = %s", job_id) == [("dead",)]
    # The fixture's client sends the read token with GETs; without it reads are refused too
    # (test_api_access.py has the whole matrix).
    assert api.get("/v1/jobs").status_code == 200
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200
    assert api.get(f"/v1/jobs/{job_id}", headers={"Authorization": ""}).status_code == 401


def test_without_a_token_configured_mutations_are_open(open_api: httpx.Client) -> None:
    r = open_api.post("/v1/jobs", json={"task": "noop"})
    assert r.status_code == 201, r.text


def test_each_filter_returns_exactly_its_jobs(api: httpx.Client, sql: Sql) -> None:
    s = seed(sql)
    for name, params, expected in filter_cases(s):
        query = dict(params)
        if query.get("state") == "unfinished":
            query.pop("state")
            query["unfinished"] = "true"
        for k in ("created_before", "created_after", "finished_before", "finished_after"):
            if k in query:
                query[k] += "Z"
        r = api.get("/v1/jobs", params=query)
        assert r.status_code == 200, (name, r.text)
        got = {j["id"] for j in r.json()["jobs"]}
        assert got == expected, f"filter {name} {query}: got {got}, expected {expected}"
    stuck = api.get("/v1/jobs", params={"stuck": "true"}).json()["jobs"]
    assert [j["stuck"] for j in stuck] == [True]
    both = api.get("/v1/jobs", params=[("state", "dead"), ("state", "cancelled")]).json()
    assert {j["id"] for j in both["jobs"]} == s.of("dead", "cancelled")


def test_bad_filters_are_422_naming_the_parameter(api: httpx.Client) -> None:
    for params, field in (({"state": "done"}, "state"), ({"limit": "0"}, "limit"),
                          ({"created_after": "2024-01-01T00:00:00"}, "created_after"),
                          ({"cursor": str(2**63)}, "cursor"), ({"min_attempts": "-1"},
                                                               "min_attempts")):
        r = api.get("/v1/jobs", params=params)
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["field"].startswith(field)


def test_cursor_pagination_visits_every_job_once(api: httpx.Client, sql: Sql) -> None:
    sql("INSERT INTO jobs (task) SELECT 'noop' FROM generate_series(1, 23)")
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "5", **({"cursor": str(cursor)} if cursor else {})}
        page = api.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == sorted(seen, reverse=True) and len(seen) == len(set(seen)) == 23


def test_detail_shows_every_failed_attempt_from_a_real_worker(
        api: httpx.Client, spawn_worker: Callable[..., object]) -> None:
    job_id = api.post("/v1/jobs", json={"task": "poison"}, headers=AUTH).json()["id"]
    spawn_worker("tests.tasks:app", "--poll-interval", "0.1")
    wait_until(lambda: api.get(f"/v1/jobs/{job_id}").json()["state"] == "dead", timeout=60,
               message="the poison job to die")
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert [e["attempt"] for e in job["errors"]] == [1, 2, 3, 4]
    assert all(f"always fails (attempt {e['attempt']})" in e["error"] for e in job["errors"])
    assert all(e["worker"].startswith("test-worker") for e in job["errors"])
    page = api.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    table = page.text[page.text.index('id="errors-table"'):]
    assert table.count('<tr><td class="num">') == 4


def test_retry_and_cancel(api: httpx.Client, sql: Sql) -> None:
    s = seed(sql)
    r = api.post(f"/v1/jobs/{s['dead']}/retry", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "queued" and r.json()["max_attempts"] == 5  # one more attempt
    r = api.post(f"/v1/jobs/{s['queued']}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    # A running job: the request is stored (its worker stops it); asking again changes nothing.
    r = api.post(f"/v1/jobs/{s['running']}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "running", r.text
    asked = r.json()["cancel_requested_at"]
    assert asked is not None and r.json()["cancel_reason"] == "the HTTP API"
    again = api.post(f"/v1/jobs/{s['running']}/cancel", headers=AUTH)
    assert again.status_code == 200 and again.json()["cancel_requested_at"] == asked
    # The words `skiplock cancel` and `skiplock retry` print (tests/integration/test_cli_jobs.py).
    done = s["succeeded"]
    r = api.post(f"/v1/jobs/{done}/cancel", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (
        409, f"job {done} is succeeded; only queued or running jobs can be cancelled")
    r = api.post(f"/v1/jobs/{done}/retry", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (
        409, f"job {done} is succeeded; only dead or cancelled jobs can be retried")
    for action in ("retry", "cancel"):
        r = api.post(f"/v1/jobs/999999/{action}", headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (
            404, "job 999999 does not exist (it may have been pruned)")
    assert api.get("/v1/jobs/999999").status_code == 404
    assert sql("SELECT state::text, cancel_reason FROM jobs WHERE id = %s", s["running"]) == [
        ("running", "the HTTP API")]


def test_queues_overview(api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    sql("INSERT INTO jobs (queue, task, state, attempts, finished_at)"
        " SELECT 'beta', 'add', 'succeeded', 1, now() - interval '2 minutes'"
        " FROM generate_series(1, 12)")
    body = api.get("/v1/queues", params={"window_minutes": "15"}).json()
    q = {x["queue"]: x for x in body["queues"]}
    a, b = q["alpha"], q["beta"]
    assert (a["runnable"], a["scheduled"], a["in_flight"], a["stuck"], a["high_retry"]) == (
        2, 1, 1, 0, 1)
    assert (b["stuck"], b["dead"], b["dead_last_hour"], b["backlog"]) == (1, 1, 1, 1)
    assert b["succeeded_in_window"] == 12 and b["dead_in_window"] == 1
    assert sum(p["succeeded"] for p in b["throughput"]) == 12
    assert len(b["throughput"]) == 15 and body["bucket_seconds"] == 60
    assert 59 < a["oldest_runnable_age_seconds"] < 600  # run_at a minute ago
    # The sampler (every 0.1 s here) builds the backlog history the chart draws.
    wait_until(lambda: len(api.get("/v1/queues").json()["queues"][0]["backlog_history"]) >= 3,
               message="backlog samples")
    assert api.get("/v1/queues", params={"window_minutes": "0"}).status_code == 422


def test_metrics_export_the_shared_queue_stats(api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    api.get("/v1/jobs")
    text = api.get("/metrics").text
    for line in ('skiplock_queue_stats_up 1.0', 'skiplock_queue_stuck{queue="beta"} 1.0',
                 'skiplock_queue_dead{queue="beta"} 1.0',
                 'skiplock_queue_high_retry{queue="alpha"} 1.0',
                 'skiplock_queue_in_flight{queue="alpha"} 1.0',
                 'skiplock_queue_backlog{queue="alpha"} 2.0',
                 'skiplock_api_requests_total{method="GET",route="/v1/jobs",status="200"} 1.0'):
        assert line in text, line
    assert "skiplock_queue_oldest_runnable_age_seconds{queue=\"alpha\"}" in text


def test_ui_rejects_a_bad_filter_with_a_message(api: httpx.Client) -> None:
    r = api.get("/ui/jobs", params={"min_attempts": "lots"})
    assert r.status_code == 400
    assert "min_attempts: &#39;lots&#39; is not a whole number" in r.text
    r = api.get("/ui/jobs", params={"task": "<script>alert(1)</script>"})
    assert r.status_code == 200 and "<script>alert" not in r.text
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_openapi_document_lists_the_endpoints(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/retry",
            "/v1/jobs/{job_id}/cancel", "/v1/queues", "/healthz", "/readyz"} <= set(doc["paths"])
    assert json.dumps(doc["components"]["securitySchemes"]).count("bearer") == 1
    assert api.get("/docs").status_code == 404  # it would load scripts from a CDN


def test_cli_stats_metrics_and_api_report_the_same_numbers(api: httpx.Client, sql: Sql,
                                                           database_url: str) -> None:
    # One shared query (skiplock.inspection.queue_stats) behind all three views.
    seed(sql)
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": database_url,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    out = subprocess.run([sys.executable, "-m", "skiplock", "stats", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cli = {q["queue"]: q for q in json.loads(out)}
    api_queues = {q["queue"]: q for q in api.get("/v1/queues").json()["queues"]}
    metrics = api.get("/metrics").text
    fields = ("backlog", "runnable", "scheduled", "in_flight", "stuck", "high_retry", "dead")
    assert set(cli) == set(api_queues) == {"alpha", "beta", "default"}
    for name, q in cli.items():
        for f in fields:
            assert api_queues[name][f] == q[f], (name, f)
            assert f'skiplock_queue_{f}{{queue="{name}"}} {float(q[f])}' in metrics, (name, f)


def test_workers_shows_who_holds_live_and_expired_leases(api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    workers = api.get("/v1/workers").json()["workers"]
    assert [(w["worker"], w["pod"], w["queue"], w["live"], w["expired"]) for w in workers] == [
        ("pod-c:3:z", "pod-c", "beta", 0, 1),   # expired leases first: the failure to look at
        ("pod-c:3:z", "pod-c", "alpha", 1, 0)]
    assert 55 < workers[0]["silent_for_seconds"] < 600  # its lease ran out a minute ago
    assert workers[1]["silent_for_seconds"] is None


def dead_jobs(sql: Sql, queue: str, error: str, n: int) -> set[int]:
    rows = sql("INSERT INTO jobs (queue, task, state, attempts, max_attempts, finished_at,"
               " last_error) SELECT %s, 'poison', 'dead', 4, 4, now(), %s"
               " FROM generate_series(1, %s) RETURNING id", queue, error, n)
    return {int(r[0]) for r in rows}  # type: ignore[call-overload]


def test_retry_dead_matching_retries_exactly_the_matching_jobs(api: httpx.Client,
                                                              sql: Sql) -> None:
    target = dead_jobs(sql, "beta", "KeyError: 'customer' after the deploy", 5)
    other_error = dead_jobs(sql, "beta", "TimeoutError", 2)
    other_queue = dead_jobs(sql, "alpha", "KeyError: 'customer' after the deploy", 2)
    body = {"queue": "beta", "error": "KeyError"}
    assert api.post("/v1/jobs/retry-dead", json=body).status_code == 401
    first = api.post("/v1/jobs/retry-dead", json={**body, "limit": 3}, headers=AUTH).json()
    rest = api.post("/v1/jobs/retry-dead", json=body, headers=AUTH).json()
    assert (first["retried"], rest["retried"]) == (3, 2)
    assert set(first["ids"]) | set(rest["ids"]) == target
    queued = {int(r[0]) for r in sql("SELECT id FROM jobs WHERE state = 'queued'")}  # type: ignore[call-overload]
    assert queued == target
    still_dead = {int(r[0]) for r in sql("SELECT id FROM jobs WHERE state = 'dead'")}  # type: ignore[call-overload]
    assert still_dead == other_error | other_queue
    assert sql("SELECT DISTINCT max_attempts FROM jobs WHERE state = 'queued'") == [(5,)]
    r = api.post("/v1/jobs/retry-dead", json={"queue": "beta", "limit": 0}, headers=AUTH)
    assert r.status_code == 422 and r.json()["fields"][0]["field"] == "limit"


def _takes_many(schema: dict[str, object]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(isinstance(o, dict) and o.get("type") == "array" for o in options)


def test_every_single_valued_query_parameter_given_twice_is_422_naming_it(
        api: httpx.Client) -> None:
    # FastAPI keeps the last of a repeated parameter without a word; every route of the
    # served document must refuse that instead, and let its list parameters repeat.
    document = api.get("/openapi.json").json()
    single: list[tuple[str, str, str]] = []
    many: list[tuple[str, str, str]] = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            for p in op.get("parameters", []):
                if p["in"] == "query":
                    (many if _takes_many(p["schema"]) else single).append(
                        (method, path, p["name"]))
    # the document's own words: a change that drops these parameters fails here first
    assert {("get", "/v1/queues", "after"), ("get", "/v1/queues", "limit"),
            ("get", "/v1/jobs", "queue"), ("get", "/v1/jobs/count", "task")} <= set(single)
    assert {("get", "/v1/queues", "queue"), ("get", "/v1/jobs", "state")} <= set(many)
    for method, path, name in single:
        url = path.replace("{job_id}", "1").replace("{queue}", "q")
        r = api.request(method, url, params=[(name, "1"), (name, "2")], headers=AUTH)
        assert r.status_code == 422, (method, path, name, r.text)
        assert {"field": name, "message": "given more than once; send it once"} in r.json(
            )["fields"], (method, path, r.text)
    for method, path, name in many:
        url = path.replace("{job_id}", "1").replace("{queue}", "q")
        r = api.request(method, url, params=[(name, "queued"), (name, "dead")], headers=AUTH)
        assert r.status_code == 200, (method, path, name, r.text)
    both = api.get("/v1/queues", params=[("queue", "a"), ("queue", "b")])
    assert both.status_code == 200 and [q["queue"] for q in both.json()["queues"]] == ["a", "b"]


def test_the_fuzzers_request_with_a_repeated_after_is_refused(api: httpx.Client) -> None:
    # schemathesis found this one in the CI of 3a142fe: twelve `after`s, the first empty, were
    # answered 200 with the page after the last of them (three of them here).
    r = api.get("/v1/queues", params=[("after", ""), ("after", "é"), ("after", "-2.3e+306"),
                                      ("queue", "詯"), ("window_minutes", "137"),
                                      ("limit", "600")])
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid request: after: given more than once; send it once"
    # and an unauthenticated one still learns only that it needs a token
    r = httpx.get(api.base_url.join("/v1/queues"), params=[("after", "a"), ("after", "b")])
    assert r.status_code == 401, r.text
