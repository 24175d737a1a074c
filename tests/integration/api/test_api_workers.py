"""The worker registry and the jobs waiting for a worker, as /v1/workers, /v1/queues, /v1/jobs,
`skiplock stats`, the metrics and the dashboard show them: seeded with SQL, exact answers."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from skiplock.sql import queries
from tests.conftest import ROOT
from tests.integration.api.seed import HOSTILE, seed, seed_registry

Sql = Callable[..., list[tuple[object, ...]]]
# (registered, alive, healthy, stalled, problem, running, pending, oldest pending, queues,
#  tasks, concurrency, lease, live, expired), in the order the API gives them: stalled or
# holding expired leases first, then alive, then by id.
EXPECTED: dict[str, tuple[Any, ...]] = {
    "pod-b:2:y": (True, True, True, True, None, 2, 3, 20.0, ["alpha", "beta"], ["add"], 8, 30.0,
                  0, 0),
    # holds leases but has no registry row (an older version, or its row was pruned)
    "pod-c:3:z": (False, True, None, False, None, None, None, None, ["alpha", "beta"], [], None,
                  None, 1, 1),
    "pod-d:4:w": (True, True, False, True, HOSTILE, 0, 5, 3.0, ["beta"], ["poison"], 2, 60.0,
                  0, 0),
    "pod-e:5:v": (True, False, True, False, None, 1, 0, None, ["gamma"], [], 1, 30.0, 0, 1),
    "pod-a:1:x": (True, True, True, False, None, 1, 0, None, ["alpha"], ["add", "sleep"], 4,
                  30.0, 2, 0),
}
WAITING = {"alpha": 1, "beta": 0, "default": 0, "gamma": 3}


def test_workers_merges_the_registry_with_the_leases(api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    seed_registry(sql)
    body = api.get("/v1/workers").json()
    got = {p["worker"]: p for p in body["processes"]}
    assert list(got) == list(EXPECTED)
    for worker, p in got.items():
        assert (p["registered"], p["alive"], p["healthy"], p["stalled"], p["problem"],
                p["running"], p["pending_outcomes"], p["oldest_pending_seconds"], p["queues"],
                p["tasks"], p["concurrency"], p["lease_seconds"], p["live"],
                p["expired"]) == EXPECTED[worker], worker
        assert p["pod"] == worker.split(":")[0]
    # silent_for: since the last heartbeat when registered (seeded 1..600 s ago)
    assert 2 <= got["pod-a:1:x"]["silent_for_seconds"] < 60
    assert 600 <= got["pod-e:5:v"]["silent_for_seconds"] < 700
    assert got["pod-a:1:x"]["last_seen"] and got["pod-a:1:x"]["started_at"]
    # not registered, and a live lease: no silence to report, nothing it could have reported
    assert got["pod-c:3:z"]["silent_for_seconds"] is None
    assert got["pod-c:3:z"]["last_seen"] is None and got["pod-c:3:z"]["started_at"] is None
    # the lease holders, per worker and queue, as before: expired first
    assert [(w["worker"], w["queue"], w["live"], w["expired"]) for w in body["workers"]] == [
        ("pod-c:3:z", "beta", 0, 1), ("pod-e:5:v", "gamma", 0, 1),
        ("pod-a:1:x", "alpha", 1, 0), ("pod-a:1:x", "gamma", 1, 0),
        ("pod-c:3:z", "alpha", 1, 0)]


def test_workers_without_any_registry_row(api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    body = api.get("/v1/workers").json()
    assert [(p["worker"], p["registered"], p["alive"], p["live"], p["expired"])
            for p in body["processes"]] == [("pod-c:3:z", False, True, 1, 1)]
    sql("UPDATE jobs SET locked_until = now() - interval '2 minutes' WHERE state = 'running'")
    (only,) = api.get("/v1/workers").json()["processes"]
    assert (only["alive"], only["live"], only["expired"]) == (False, 0, 2)
    assert 115 < only["silent_for_seconds"] < 600  # since its newest lease ran out
    sql("DELETE FROM jobs")
    assert api.get("/v1/workers").json() == {"workers": [], "processes": []}


def test_waiting_for_worker_in_queues_jobs_cli_and_metrics(api: httpx.Client, sql: Sql,
                                                           database_url: str) -> None:
    seed(sql)
    reg = seed_registry(sql)
    queues = {q["queue"]: q for q in api.get("/v1/queues").json()["queues"]}
    assert {name: q["waiting_for_worker"] for name, q in queues.items()} == WAITING
    # the waiting jobs are queued jobs: counted in runnable/scheduled as before
    g = queues["gamma"]
    assert (g["runnable"], g["scheduled"], g["in_flight"], g["stuck"], g["dead"]) == (2, 1, 1, 1, 1)

    def ids(**params: str) -> set[int]:
        r = api.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["jobs"]}

    every = reg.unrunnable["alpha"] | reg.unrunnable["gamma"]
    assert ids(waiting_for_worker="true") == every
    assert ids(waiting_for_worker="true", queue="gamma") == reg.unrunnable["gamma"]
    assert ids(waiting_for_worker="true", state="running") == set()
    # false is no filter; unrunnable_since on a job that is not queued never counts
    assert ids(waiting_for_worker="false", queue="gamma") >= reg.unrunnable["gamma"] | reg.others
    assert api.get("/v1/jobs", params={"waiting_for_worker": "maybe"}).status_code == 422

    env = {**os.environ, "SKIPLOCK_DATABASE_URL": database_url,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    out = subprocess.run([sys.executable, "-m", "skiplock", "stats", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cli = {q["queue"]: q for q in json.loads(out)}
    assert {name: q["waiting_for_worker"] for name, q in cli.items()} == WAITING
    table = subprocess.run([sys.executable, "-m", "skiplock", "stats"], env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    header, *rows = table.splitlines()
    column = header.split().index("waiting_for_worker")
    assert {r.split()[0]: int(r.split()[column]) for r in rows} == WAITING

    metrics = api.get("/metrics").text
    for name, n in WAITING.items():
        assert f'skiplock_queue_waiting_for_worker{{queue="{name}"}} {float(n)}' in metrics, name


def test_waiting_for_worker_count_reads_only_the_partial_index(database_url: str,
                                                               sql: Sql) -> None:
    """The operator polls queue_stats: the new count must not scan the queued jobs."""
    sql("INSERT INTO jobs (queue, task) SELECT 'q1', 'add' FROM generate_series(1, 20000)")
    sql("INSERT INTO jobs (queue, task, unrunnable_since) SELECT 'q1', 'ghost', now()"
        " FROM generate_series(1, 5)")
    sql("VACUUM ANALYZE jobs")
    query = queries()["queue_stats"]
    with psycopg.connect(database_url, autocommit=True,
                         options="-c search_path=skiplock,public") as conn:
        params = {"queues": ["q1"], "cap": 1000, "high_attempts": 3}
        explained = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()
        row = conn.execute(query, params).fetchone()
    assert explained is not None and row is not None
    (plan,) = explained
    assert row[0] == "q1"

    def nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
        return [node, *(n for child in node.get("Plans", []) for n in nodes(child))]

    scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == "jobs"]
    # a scan that has to test unrunnable_since itself reads rows the partial index would skip
    assert not [n for n in scans if "unrunnable_since" in n.get("Filter", "")], scans
    uses = [n for n in scans if n.get("Index Name") == "jobs_unrunnable_idx"]
    assert [n["Node Type"] for n in uses] in (["Index Only Scan"], ["Index Scan"]), [
        (n["Node Type"], n.get("Index Name")) for n in scans]


def test_dashboard_warns_about_stalled_workers_and_escapes_their_problem(
        api: httpx.Client, sql: Sql) -> None:
    seed(sql)
    reg = seed_registry(sql)
    r = api.get("/ui/")
    assert r.status_code == 200
    page = r.text
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "<script>alert" not in page and "<img src=x" not in page
    assert ("&lt;script&gt;alert(1)&lt;/script&gt; &#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
            in page)
    rows = dict(re.findall(r'<tr data-worker="([^"]+)" class="([^"]*)">', page))
    assert rows == {"pod-b:2:y": "stalled", "pod-c:3:z": "", "pod-d:4:w": "stalled",
                    "pod-e:5:v": "", "pod-a:1:x": ""}
    warnings = re.findall(r'<tr data-worker="([^"]+)" class="stalled">.*?role="alert"[^>]*>'
                          r"([^<]*)</div>", page, re.S)
    assert [(w, html.unescape(text).strip()) for w, text in warnings] == [
        ("pod-b:2:y", "\u26a0 outcomes not written for 20s (over half its 30s lease)"),
        ("pod-d:4:w", "\u26a0 unhealthy: its outcomes may not be written")]
    assert page.count('role="alert"') == 2
    # the queues table links the waiting count to exactly those jobs
    assert 'href="/ui/jobs?queue=gamma&amp;waiting_for_worker=1">3</a>' in page
    listed = api.get("/ui/jobs", params={"waiting_for_worker": "1", "queue": "gamma"}).text
    assert {int(i) for i in re.findall(r'data-job-id="(\d+)"', listed)} == reg.unrunnable["gamma"]
