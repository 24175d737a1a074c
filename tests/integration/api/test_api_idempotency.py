"""Idempotency-Key under misuse (Stripe's rule), against a real uvicorn server and PostgreSQL:
the same key with the same request replays the first answer, with any other request it is a
409 naming the job and what differs; keys outlive the pruning of their jobs."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from skiplock import Client, IdempotencyConflict
from tests.conftest import ROOT
from tests.integration.api.conftest import AUTH

Sql = Callable[..., list[tuple[object, ...]]]
EMAIL = {"task": "add", "args": {"a": 1, "b": 2}}  # the send_email
CHARGE = {"task": "noop", "args": {}}  # the charge_card


def keyed(key: str | bytes) -> dict[str, Any]:
    return {**AUTH, "Idempotency-Key": key}


def jobs(sql: Sql) -> list[tuple[object, ...]]:
    return sql("SELECT id, task, queue FROM jobs ORDER BY id")


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", "--database-url", database_url,
                           *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def finish_all(sql: Sql) -> None:
    """Every job succeeded an hour ago, so that `prune --older-than 0` deletes it."""
    sql("UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '1 hour'")


def test_same_key_same_request_replays_the_first_job(api: httpx.Client, sql: Sql) -> None:
    first = api.post("/v1/jobs", json=EMAIL, headers=keyed("order-1234"))
    assert first.status_code == 201, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    # The same request in another spelling: argument order, the task's defaults spelled out
    # (add's queue is 'default' and max_attempts 5), the key in the body as well.
    for body in (EMAIL, {"task": "add", "args": {"b": 2, "a": 1}},
                 {**EMAIL, "queue": "default", "max_attempts": 5, "priority": 0},
                 {**EMAIL, "unique_key": "order-1234"}):
        again = api.post("/v1/jobs", json=body, headers=keyed("order-1234"))
        assert again.status_code == 200, (body, again.text)
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
    assert jobs(sql) == [(first.json()["id"], "add", "default")]
    # A request without a key says nothing about replays.
    assert "Idempotent-Replayed" not in api.post("/v1/jobs", json=EMAIL, headers=AUTH).headers


@pytest.mark.parametrize(("change", "why"), [
    # every difference is named (noop's own max_attempts is 3)
    (CHARGE, "task was 'add', now 'noop'; args differ; max_attempts was 5, now 3"),
    ({**EMAIL, "queue": "payments"}, "queue was 'default', now 'payments'"),
    ({"task": "add", "args": {"a": 1, "b": 3}}, "args differ"),
    ({"task": "add", "args": {"a": 2, "b": 1}}, "args differ"),  # the same values, swapped
    ({**EMAIL, "priority": 1}, "priority was 0, now 1"),
    ({**EMAIL, "max_attempts": 2}, "max_attempts was 5, now 2"),
    ({**EMAIL, "delay": 60}, "delay was None, now 60.0"),
    ({**EMAIL, "timeout": 30}, "timeout was None, now 30.0"),
])
def test_same_key_other_request_is_409_with_the_job_and_why(
        api: httpx.Client, sql: Sql, change: dict[str, Any], why: str) -> None:
    first = api.post("/v1/jobs", json=EMAIL, headers=keyed("order-1234"))
    assert first.status_code == 201, first.text
    clash = api.post("/v1/jobs", json=change, headers=keyed("order-1234"))
    assert clash.status_code == 409, clash.text
    body = clash.json()
    job_id = first.json()["id"]
    assert body["job_id"] == job_id and body["job_ids"] == [job_id]
    assert body["reason"] == why
    assert f"(job {job_id}): {why}. Nothing was stored" in body["error"]
    assert "use a new key" in body["error"]
    assert jobs(sql) == [(job_id, "add", "default")]  # the charge was not stored silently...
    # ...and the first request still replays.
    assert api.post("/v1/jobs", json=EMAIL, headers=keyed("order-1234")).status_code == 200


def test_batch_key_and_single_key_never_match(api: httpx.Client, sql: Sql) -> None:
    single = api.post("/v1/jobs", json=EMAIL, headers=keyed("k"))
    assert single.status_code == 201, single.text
    as_batch = api.post("/v1/jobs/batch", json={"jobs": [EMAIL]}, headers=keyed("k"))
    assert as_batch.status_code == 409, as_batch.text
    assert as_batch.json()["reason"] == ("the key was first used for a single job, this "
                                         "request is a batch")
    assert as_batch.json()["job_id"] == single.json()["id"]

    batch = api.post("/v1/jobs/batch", json={"jobs": [EMAIL, CHARGE]}, headers=keyed("b"))
    assert batch.status_code == 201, batch.text
    ids = [j["id"] for j in batch.json()["jobs"]]
    # The old batch form gave job i the key "b:i": a single job with "b:0" is another key now.
    other = api.post("/v1/jobs", json=EMAIL, headers=keyed("b:0"))
    assert other.status_code == 201 and other.json()["id"] not in ids
    as_single = api.post("/v1/jobs", json=EMAIL, headers=keyed("b"))
    assert as_single.status_code == 409, as_single.text
    assert as_single.json()["job_ids"] == ids
    assert as_single.json()["reason"] == ("the key was first used for a batch, this request "
                                          "is a single job")
    for changed, why in (([CHARGE, EMAIL], "jobs differ"),
                         ([EMAIL], "number of jobs was 2, now 1; jobs differ")):
        r = api.post("/v1/jobs/batch", json={"jobs": changed}, headers=keyed("b"))
        assert r.status_code == 409 and r.json()["reason"] == why, r.text
    replay = api.post("/v1/jobs/batch", json={"jobs": [EMAIL, CHARGE]}, headers=keyed("b"))
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["jobs"] == [{"id": i, "created": False} for i in ids]
    assert len(jobs(sql)) == 4  # single k, the batch's two, b:0


def test_a_job_key_inside_a_batch_follows_the_rule(api: httpx.Client, sql: Sql) -> None:
    first = api.post("/v1/jobs", json=EMAIL, headers=keyed("inner"))
    same = api.post("/v1/jobs/batch", headers=AUTH,
                    json={"jobs": [{**EMAIL, "unique_key": "inner"}, CHARGE]})
    assert same.status_code == 201, same.text
    assert same.json()["jobs"][0] == {"id": first.json()["id"], "created": False}
    clash = api.post("/v1/jobs/batch", headers=AUTH,
                     json={"jobs": [CHARGE, {**CHARGE, "unique_key": "inner"}]})
    assert clash.status_code == 409 and clash.json()["job_id"] == first.json()["id"]
    assert len(jobs(sql)) == 2  # the 409 batch stored nothing, not even its first job


def test_key_outlives_prune_until_its_retention_passes(
        api: httpx.Client, sql: Sql, database_url: str) -> None:
    first = api.post("/v1/jobs", json=EMAIL, headers=keyed("order-1234")).json()["id"]
    batch = api.post("/v1/jobs/batch", json={"jobs": [EMAIL, CHARGE]}, headers=keyed("b"))
    batch_ids = [j["id"] for j in batch.json()["jobs"]]
    finish_all(sql)
    done = cli(database_url, "prune", "--older-than", "0")
    assert done.returncode == 0, done.stderr
    assert "pruned 3 finished job(s)" in done.stdout
    # keys younger than the default 24 h stay, though their jobs are gone
    assert "pruned 0 idempotency key(s)" in done.stdout
    assert jobs(sql) == []

    replay = api.post("/v1/jobs", json=EMAIL, headers=keyed("order-1234"))
    assert replay.status_code == 410, replay.text
    assert replay.json()["job_id"] == first and replay.headers["Idempotent-Replayed"] == "true"
    assert "was pruned, or was deleted), so the request was not run again" in replay.text
    clash = api.post("/v1/jobs", json=CHARGE, headers=keyed("order-1234"))
    assert clash.status_code == 409 and clash.json()["job_id"] == first, clash.text
    again = api.post("/v1/jobs/batch", json={"jobs": [EMAIL, CHARGE]}, headers=keyed("b"))
    assert again.status_code == 200 and [j["id"] for j in again.json()["jobs"]] == batch_ids
    assert jobs(sql) == []  # no replay made a duplicate

    # A key whose job still exists is kept whatever its age.
    kept = api.post("/v1/jobs", json=EMAIL, headers=keyed("live")).json()["id"]
    bad = cli(database_url, "prune", "--older-than", "0", "--keys-older-than", "-1")
    assert bad.returncode == 2 and "--keys-older-than must be" in bad.stderr
    gone = cli(database_url, "prune", "--older-than", "0", "--keys-older-than", "0")
    assert "pruned 2 idempotency key(s) older than 0s" in gone.stdout, gone.stdout
    assert sql("SELECT key FROM idempotency_keys") == [("live",)]
    assert api.post("/v1/jobs", json=EMAIL, headers=keyed("live")).json()["id"] == kept
    # Past its retention and with its job gone, the key is free: a new job.
    fresh = api.post("/v1/jobs", json=CHARGE, headers=keyed("order-1234"))
    assert fresh.status_code == 201 and fresh.json()["id"] not in (first, kept), fresh.text


@pytest.mark.parametrize("same_request", [True, False])
def test_concurrent_requests_with_one_key_store_one_job(
        api: httpx.Client, sql: Sql, same_request: bool) -> None:
    n = 12
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def post(i: int) -> None:
        body = EMAIL if same_request else {"task": "add", "args": {"a": i, "b": 0}}
        with httpx.Client(base_url=str(api.base_url), timeout=30) as c:
            barrier.wait()
            r = c.post("/v1/jobs", json=body, headers=keyed("race"))
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in answers)
    assert len(codes) == n
    (job_id,) = [r.json()["id"] for r in answers if r.status_code == 201]
    assert codes == sorted([201] + [200 if same_request else 409] * (n - 1)), codes
    for r in answers:
        if r.status_code != 201:
            assert (r.json()["id"] if same_request else r.json()["job_id"]) == job_id
    assert [row[0] for row in jobs(sql)] == [job_id]


@pytest.mark.parametrize(("key", "field"), [
    ("x" * 201, "Idempotency-Key"),
    ("", "Idempotency-Key"),
    ("has space", "Idempotency-Key"),
    ("tab\tkey", "Idempotency-Key"),
    ("caf\u00e9".encode(), "Idempotency-Key"),  # UTF-8 bytes: not printable ASCII
    ("\u00ff".encode("latin-1"), "Idempotency-Key"),
])
def test_hostile_header_keys_are_422_and_store_nothing(
        api: httpx.Client, sql: Sql, key: str | bytes, field: str) -> None:
    r = api.post("/v1/jobs", json=EMAIL, headers=keyed(key))
    assert r.status_code == 422, r.text
    assert r.json()["fields"][0]["field"] == field
    assert jobs(sql) == [] and sql("SELECT count(*) FROM idempotency_keys") == [(0,)]


def test_unicode_and_boundary_keys_in_the_body(api: httpx.Client, sql: Sql) -> None:
    for key in ("\u8ba2\u5355-1234 \U0001f4b3", "k" * 255, "'; DROP TABLE jobs; --",
                "x" * 200, "order-1234:0"):
        first = api.post("/v1/jobs", json={**EMAIL, "unique_key": key}, headers=AUTH)
        assert first.status_code == 201, (key, first.text)
        again = api.post("/v1/jobs", json={**EMAIL, "unique_key": key}, headers=AUTH)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        clash = api.post("/v1/jobs", json={**CHARGE, "unique_key": key}, headers=AUTH)
        assert clash.status_code == 409 and repr(key) in clash.json()["error"], clash.text
    for key, why in (("k" * 256, "at most 255"), ("nul\u0000", "NUL")):
        r = api.post("/v1/jobs", json={**EMAIL, "unique_key": key}, headers=AUTH)
        assert r.status_code == 422 and why in r.text, r.text
    differ = api.post("/v1/jobs", json={**EMAIL, "unique_key": "a"}, headers=keyed("b"))
    assert differ.status_code == 422 and differ.json()["fields"][0]["field"] == "unique_key"
    assert len(jobs(sql)) == 5


def test_client_unique_key_and_the_header_are_one_namespace(
        api: httpx.Client, sql: Sql, database_url: str) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("add", {"a": 1, "b": 2}, unique_key="shared")
        replay = api.post("/v1/jobs", json=EMAIL, headers=keyed("shared"))
        assert replay.status_code == 200 and replay.json()["id"] == job_id, replay.text
        api.post("/v1/jobs", json=CHARGE, headers=keyed("from-http"))
        with pytest.raises(IdempotencyConflict, match="task was 'noop', now 'add'"):
            c.enqueue("add", {"a": 1, "b": 2}, unique_key="from-http")
    assert len(jobs(sql)) == 2
