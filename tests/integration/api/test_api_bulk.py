"""Bulk actions over a jobs filter (cancel, retry, delete) through the API, in bounded batches
with a cursor, against a real PostgreSQL: 10,000 matching jobs, jobs changing state between
batches, a real worker running the jobs being cancelled, and hostile filters."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from skiplock import Client
from skiplock.db import Database
from tests.integration.api.conftest import AUTH
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]
N = 10_000
LIMIT = 700  # not a divisor of N: the last batch is a partial one


def enqueue(database_url: str, queue: str, n: int, task: str = "noop") -> None:
    with Client(database_url, validate=False) as c:
        assert c.enqueue_many({"task": task, "queue": queue} for _ in range(n)) == n


def ids(sql: Sql, query: str, *params: object) -> set[int]:
    return {int(r[0]) for r in sql(query, *params)}


def snapshot(sql: Sql, where: str = "true") -> str:
    """Every column of the jobs matching ``where`` and every result row, as one value."""
    (row,) = sql(f"SELECT md5(coalesce(string_agg(j::text, '|' ORDER BY j.id), '')) ||"
                 f" (SELECT count(*) FROM results)::text FROM jobs AS j WHERE {where}")
    return str(row[0])


def run_bulk(api: httpx.Client, action: str, filter_: dict[str, Any], limit: int = LIMIT,
             between: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Every batch's answer, following the cursor until ``more`` is false; checks that each
    batch stays within ``limit`` and that the cursor only moves down. ``between(i, cursor)``
    runs after batch i (jobs changing state while a bulk action is under way)."""
    answers: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        body: dict[str, Any] = {"action": action, "filter": filter_, "limit": limit}
        if cursor is not None:
            body["cursor"] = cursor
        r = api.post("/v1/jobs/bulk", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        answer = r.json()
        answers.append(answer)
        assert answer["action"] == action
        assert answer["done"] + answer["skipped"] <= limit, answer
        if cursor is not None:
            assert answer["cursor"] < cursor, (cursor, answer)
        cursor = answer["cursor"]
        if not answer["more"]:
            return answers
        assert len(answers) < 10 * N // limit, "the cursor does not converge"
        if between is not None:
            between(len(answers), cursor)


def total(answers: list[dict[str, Any]], key: str) -> int:
    return sum(int(a[key]) for a in answers)


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection listening on the jobs channel, where retried jobs wake the workers."""
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute("LISTEN skiplock_jobs")
    yield conn
    conn.close()


def test_cancel_retry_delete_10000_jobs_in_bounded_batches(
        api: httpx.Client, database_url: str, db: Database, sql: Sql,
        listener: psycopg.Connection[Any]) -> None:
    enqueue(database_url, "bulk", N)
    enqueue(database_url, "other", 100)
    running = ids(sql, "UPDATE jobs SET state = 'running', attempts = 1, started_at = now(),"
                       " locked_by = 'pod-x:1:w', locked_until = now() + interval '1 hour'"
                       " WHERE id IN (SELECT id FROM jobs WHERE queue = 'bulk' ORDER BY id"
                       " LIMIT 40) RETURNING id")
    other = snapshot(sql, "queue = 'other'")

    # The count the confirmation shows; capped like the queue stats.
    assert api.get("/v1/jobs/count", params={"queue": "bulk"}).json() == {
        "count": N, "capped": False}
    assert api.get("/v1/jobs/count", params={"queue": "bulk", "state": "running"}).json() == {
        "count": 40, "capped": False}
    assert db.count_matching(cap=100, queue="bulk") == (100, True)

    # Cancel: queued ones at once, running ones get a cancel request their worker acts on.
    answers = run_bulk(api, "cancel", {"queue": "bulk"})
    assert len(answers) == math.ceil(N / LIMIT)
    assert (total(answers, "done"), total(answers, "skipped")) == (N, 0)
    assert sql("SELECT state::text, count(*), count(cancel_requested_at) FROM jobs"
               " WHERE queue = 'bulk' GROUP BY 1 ORDER BY 1") == [
        ("cancelled", N - 40, N - 40), ("running", 40, 40)]
    assert ids(sql, "SELECT id FROM jobs WHERE queue = 'bulk' AND state = 'running'") == running
    assert sql("SELECT DISTINCT cancel_reason FROM jobs WHERE queue = 'bulk'") == [
        ("a bulk cancel through the HTTP API",)]
    assert snapshot(sql, "queue = 'other'") == other
    # Again: nothing left to do, and every job says so as skipped.
    again = run_bulk(api, "cancel", {"queue": "bulk"})
    assert (total(again, "done"), total(again, "skipped")) == (0, N)

    # Retry the cancelled ones: queued again, the cancel request cleared, one NOTIFY per batch.
    list(listener.notifies(timeout=0.5))  # drop anything sent before
    answers = run_bulk(api, "retry", {"queue": "bulk", "state": ["cancelled"]})
    assert (total(answers, "done"), total(answers, "skipped")) == (N - 40, 0)
    assert sql("SELECT state::text, count(*), count(cancel_requested_at), count(finished_at)"
               " FROM jobs WHERE queue = 'bulk' GROUP BY 1 ORDER BY 1") == [
        ("queued", N - 40, 0, 0), ("running", 40, 40, 0)]
    notes = [n.payload for n in listener.notifies(timeout=2, stop_after=len(answers))]
    assert notes == ["bulk"] * len(answers)
    assert snapshot(sql, "queue = 'other'") == other

    # Delete: never a running job; results go with their jobs.
    finished = ids(sql, "UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id IN"
                        " (SELECT id FROM jobs WHERE queue = 'bulk' AND state = 'queued'"
                        " ORDER BY id LIMIT 10) RETURNING id")
    for job_id in finished:
        sql("INSERT INTO results (job_id, result) VALUES (%s, '{\"ok\": true}')", job_id)
    answers = run_bulk(api, "delete", {"queue": "bulk"})
    assert (total(answers, "done"), total(answers, "skipped")) == (N - 40, 40)
    assert ids(sql, "SELECT id FROM jobs WHERE queue = 'bulk'") == running
    assert sql("SELECT count(*) FROM results") == [(0,)]
    assert snapshot(sql, "queue = 'other'") == other
    assert api.get("/v1/jobs/count", params={"queue": "bulk"}).json()["count"] == 40


def test_the_cursor_holds_while_jobs_change_state(api: httpx.Client, sql: Sql) -> None:
    def dead(n: int) -> set[int]:
        return ids(sql, "INSERT INTO jobs (queue, task, state, attempts, max_attempts,"
                        " finished_at, last_error) SELECT 'q', 'poison', 'dead', 4, 4, now(),"
                        " 'boom' FROM generate_series(1, %s) RETURNING id", n)

    start = dead(3000)
    changed: dict[str, set[int]] = {}

    def meanwhile(batch: int, cursor: int) -> None:
        if batch != 1:
            return
        # Not reached yet, and no longer matching: must be left alone, and not even counted.
        changed["succeeded"] = ids(
            sql, "UPDATE jobs SET state = 'succeeded' WHERE id IN (SELECT id FROM jobs"
                 " WHERE state = 'dead' AND id < %s ORDER BY id LIMIT 100) RETURNING id",
            cursor)
        # Retried already, and dead again: the cursor has passed them, so no second retry.
        changed["dead again"] = ids(
            sql, "UPDATE jobs SET state = 'dead', finished_at = now() WHERE id IN (SELECT id"
                 " FROM jobs"
                 " WHERE state = 'queued' ORDER BY id LIMIT 50) RETURNING id")
        # Enqueued after the action started: above the cursor, never reached.
        changed["new"] = dead(200)

    answers = run_bulk(api, "retry", {"queue": "q", "state": ["dead"]}, limit=500,
                       between=meanwhile)
    assert (total(answers, "done"), total(answers, "skipped")) == (3000 - 100, 0)
    assert ids(sql, "SELECT id FROM jobs WHERE state = 'queued'") == (
        start - changed["succeeded"] - changed["dead again"])
    assert ids(sql, "SELECT id FROM jobs WHERE state = 'dead'") == (
        changed["dead again"] | changed["new"])
    assert ids(sql, "SELECT id FROM jobs WHERE state = 'succeeded'") == changed["succeeded"]
    # One more attempt for each retried job that had none left, as a single retry gives.
    assert sql("SELECT DISTINCT max_attempts FROM jobs WHERE state = 'queued'") == [(5,)]


def test_a_locked_job_is_skipped_not_waited_for(api: httpx.Client, database_url: str,
                                                sql: Sql) -> None:
    enqueue(database_url, "q", 10)
    busy = min(ids(sql, "SELECT id FROM jobs"))
    with psycopg.connect(database_url, options="-c search_path=skiplock,public") as holder:
        holder.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (busy,))
        answer = api.post("/v1/jobs/bulk", json={"action": "cancel", "filter": {"queue": "q"}},
                          headers=AUTH, timeout=10).json()
        holder.rollback()
    assert (answer["done"], answer["skipped"], answer["more"]) == (9, 1, False)
    assert ids(sql, "SELECT id FROM jobs WHERE state = 'queued'") == {busy}


def test_bulk_cancel_stops_jobs_a_real_worker_runs(
        api: httpx.Client, database_url: str, sql: Sql,
        spawn_worker: Callable[..., Any]) -> None:
    with Client(database_url, validate=False) as c:
        c.enqueue_many({"task": "async_sleep", "args": {"seconds": 120}} for _ in range(3))
    enqueue(database_url, "default", 5, task="add")  # not matched (another task)
    spawn_worker("tests.tasks:app", "--concurrency", "3")
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'running'") == [(3,)],
               message="the worker to run the three sleeps")
    answers = run_bulk(api, "cancel", {"task": "async_sleep", "state": ["running"]})
    assert total(answers, "done") == 3
    wait_until(lambda: sql("SELECT state::text, count(*) FROM jobs WHERE task = 'async_sleep'"
                           " GROUP BY 1") == [("cancelled", 3)],
               message="the worker to stop the cancelled jobs")
    assert sql("SELECT count(*) FROM results AS r JOIN jobs AS j ON j.id = r.job_id"
               " WHERE j.task = 'async_sleep'") == [(0,)]


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"action": "delete", "filter": {}}, "body", '"all": true'),
    ({"action": "delete"}, "body", '"all": true'),
    # defaults spelt out are still no filter
    ({"action": "cancel", "filter": {"state": [], "stuck": False, "queue": None}}, "body",
     "matches every job"),
    ({"action": "delete", "filter": {"queue": "a"}, "all": True}, "body", "empty filter"),
    ({"action": "delete", "filter": {"queue": "a"}, "limit": 1001}, "limit", "1000"),
    ({"action": "delete", "filter": {"queue": "a"}, "limit": 0}, "limit", "1"),
    ({"action": "delete", "filter": {"queue": "a"}, "cursor": 0}, "cursor", "1"),
    ({"action": "purge", "filter": {"queue": "a"}}, "action", "cancel"),
    ({"filter": {"queue": "a"}}, "action", "required"),
    # a misspelt filter must not widen the filter to every job
    ({"action": "delete", "filter": {"stat": "dead"}}, "filter.stat", "unknown field"),
    ({"action": "delete", "filter": {"state": ["gone"]}}, "filter.state[0]", "queued"),
    ({"action": "delete", "filter": {"created_after": "yesterday"}}, "filter.created_after",
     "datetime"),
    ({"action": "delete", "filter": {"created_after": "2030-01-01T00:00:00"}},
     "filter.created_after", "timezone"),
    ({"action": "delete", "filter": {"min_attempts": -1}}, "filter.min_attempts", "0"),
    ({"action": "delete", "filter": {"queue": ""}}, "filter.queue", "at least 1"),
    # JSON has booleans and numbers: no guessing from strings, numbers or floats
    ({"action": "delete", "all": "yes"}, "all", "boolean"),
    ({"action": "delete", "all": 1}, "all", "boolean"),
    ({"action": "delete", "filter": {"stuck": "false"}}, "filter.stuck", "true or false"),
    ({"action": "delete", "filter": {"min_attempts": False}}, "filter.min_attempts",
     "whole number"),
    ({"action": "delete", "filter": {"queue": "a"}, "limit": 5.5}, "limit", "integer"),
])
def test_a_bad_bulk_request_is_422_and_changes_nothing(
        api: httpx.Client, database_url: str, sql: Sql, body: dict[str, Any], field: str,
        words: str) -> None:
    enqueue(database_url, "a", 5)
    before = snapshot(sql)
    r = api.post("/v1/jobs/bulk", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert field in {f["field"] for f in problem["fields"]}, problem
    assert words in problem["error"], problem
    assert snapshot(sql) == before


def test_bulk_needs_the_token_and_all_true_means_every_job(
        api: httpx.Client, database_url: str, sql: Sql) -> None:
    enqueue(database_url, "a", 5)
    enqueue(database_url, "b", 5)
    sql("UPDATE jobs SET state = 'running', locked_by = 'w', locked_until = now()"
        " + interval '1 hour' WHERE id = (SELECT min(id) FROM jobs)")
    before = snapshot(sql)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = api.post("/v1/jobs/bulk", json={"action": "delete", "all": True}, headers=headers)
        assert r.status_code == 401, r.text
    assert snapshot(sql) == before
    assert api.get("/v1/jobs/count").json() == {"count": 10, "capped": False}
    answer = api.post("/v1/jobs/bulk", json={"action": "delete", "all": True},
                      headers=AUTH).json()
    assert (answer["done"], answer["skipped"], answer["more"]) == (9, 1, False)
    assert sql("SELECT state::text FROM jobs") == [("running",)]


def test_a_filter_that_can_match_nothing_does_nothing(api: httpx.Client, database_url: str,
                                                      sql: Sql) -> None:
    enqueue(database_url, "a", 5)
    before = snapshot(sql)
    q = {"unfinished": "true", "state": "dead"}
    assert api.get("/v1/jobs/count", params=q).json() == {"count": 0, "capped": False}
    answer = api.post("/v1/jobs/bulk", json={
        "action": "delete", "filter": {"unfinished": True, "state": ["dead"]}},
        headers=AUTH).json()
    assert (answer["done"], answer["skipped"], answer["more"]) == (0, 0, False)
    assert snapshot(sql) == before


def test_the_count_takes_every_filter_of_the_jobs_list(api: httpx.Client, sql: Sql) -> None:
    from tests.integration.api.seed import filter_cases, seed

    s = seed(sql)
    for name, params, expected in filter_cases(s):
        params = {k: (f"{v}Z" if k.endswith(("_after", "_before")) else v)
                  for k, v in params.items()}
        if params.get("state") == "unfinished":
            params = {**params, "unfinished": "true"}
            del params["state"]
        count = api.get("/v1/jobs/count", params=params)
        assert count.status_code == 200, (name, count.text)
        assert count.json()["count"] == len(expected), (name, params)
        listed = api.get("/v1/jobs", params={**params, "limit": 500}).json()["jobs"]
        assert {j["id"] for j in listed} == expected, (name, params)


# Strings a careless or hostile client could put in a filter: they are parameters, so they
# match as the very characters they are (no LIKE wildcard, no SQL), or are refused with a 422
# when PostgreSQL could not hold them.
HOSTILE = ["%", "_", "%%", "%(queue)s", "%s", "'", "''; DELETE FROM jobs; --", '"', "\\",
           "ünïcødé ✓ 🚀", "\u202e\u0301", " ", "{{job_filter}}", "NULL", "a" * 128]
REFUSED = ["\x00", "nul\x00inside", "a" * 257]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_filter_string_matches_only_itself(api: httpx.Client, sql: Sql,
                                                     text: str) -> None:
    # One job per field holding the text exactly, one holding it inside a longer text.
    sql("INSERT INTO jobs (queue, task, state, finished_at, last_error) VALUES"
        " (%s, 'noop', 'dead', now(), 'x'), ('q', %s, 'dead', now(), 'x'),"
        " ('q', 'noop', 'dead', now(), %s), ('q', 'noop', 'dead', now(), %s),"
        " ('other', 'noop', 'dead', now(), 'plain')", text, text, text, f"<{text}>")
    for field, expected in (("queue", 1), ("task", 1), ("error", 2)):
        r = api.get("/v1/jobs/count", params={field: text})
        assert r.status_code == 200, r.text
        assert r.json()["count"] == expected, (field, text)
    answer = api.post("/v1/jobs/bulk", json={"action": "delete", "filter": {"error": text}},
                      headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] == 2
    assert sql("SELECT count(*) FROM jobs") == [(3,)]


@pytest.mark.parametrize("text", REFUSED)
def test_a_filter_string_postgres_cannot_hold_is_422(api: httpx.Client, database_url: str,
                                                      sql: Sql, text: str) -> None:
    enqueue(database_url, "a", 3)
    before = snapshot(sql)
    for field in ("queue", "task", "error"):
        r = api.get("/v1/jobs/count", params={field: text})
        assert r.status_code == 422 and r.json()["fields"][0]["field"] == field, r.text
        r = api.post("/v1/jobs/bulk", json={"action": "delete", "filter": {field: text}},
                     headers=AUTH)
        assert r.status_code == 422, r.text
        assert r.json()["fields"][0]["field"] == f"filter.{field}", r.text
    # A lone surrogate cannot reach the database either (JSON allows it, PostgreSQL does not).
    raw = b'{"action": "delete", "filter": {"queue": "\\ud800"}}'
    r = api.post("/v1/jobs/bulk", content=raw,
                 headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert snapshot(sql) == before


@settings(max_examples=75, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["queue", "task", "error"]), text=st.text(max_size=300))
def test_fuzzed_filter_strings_never_fail_and_never_overreach(
        api: httpx.Client, sql: Sql, field: str, text: str) -> None:
    # the seeded jobs' own values (and, for the error, any part of it) rightly match
    assume(text not in ("seeded", "noop") and not (field == "error" and text in "boom"))
    if not sql("SELECT 1 FROM jobs LIMIT 1"):
        sql("INSERT INTO jobs (queue, task, state, finished_at, last_error)"
            " SELECT 'seeded', 'noop', 'dead', now(), 'boom' FROM generate_series(1, 5)")
    before = snapshot(sql)
    count = api.get("/v1/jobs/count", params={field: text})
    bulk = api.post("/v1/jobs/bulk", json={"action": "delete", "filter": {field: text}},
                    headers=AUTH)
    assert count.status_code in (200, 422), count.text
    assert bulk.status_code in (200, 422), bulk.text
    if count.status_code == 200:
        assert count.json()["count"] == 0, (field, text)
    if bulk.status_code == 200:
        assert bulk.json()["done"] == 0
    else:
        assert bulk.json()["fields"][0]["field"].startswith("filter"), bulk.text
    assert snapshot(sql) == before


def test_retry_dead_still_works_beside_bulk_retry(api: httpx.Client, sql: Sql) -> None:
    sql("INSERT INTO jobs (queue, task, state, attempts, max_attempts, finished_at, last_error)"
        " SELECT 'beta', 'poison', 'dead', 4, 4, now(), 'KeyError' FROM generate_series(1, 3)")
    r = api.post("/v1/jobs/retry-dead", json={"queue": "beta"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["retried"] == 3, r.text
    assert sql("SELECT DISTINCT state::text FROM jobs") == [("queued",)]
