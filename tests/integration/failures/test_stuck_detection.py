"""Stuck jobs / silent failures: each stuck condition is created for real (a SIGKILLed worker
leaves a running job with an expired lease; a struggling job sits at a high retry count; a
poison job goes dead), and every detection path reports exactly those jobs: skiplock.inspection,
`skiplock stats --json` / `skiplock jobs --json`, the workers' Prometheus metrics, the queue
gauges the API exports, the API's job filters and the dashboard's jobs filter (/ui/jobs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from skiplock import Client, inspection
from skiplock.db import Database
from tests.conftest import ROOT
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.support.chaos import read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.pgserver import free_port
from tests.support.waits import wait_until


def _cli(database_url: str, *args: str) -> object:
    out = subprocess.run([sys.executable, "-m", "skiplock", "--database-url", database_url, *args],
                         capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metric(port: int, name: str, **labels: str) -> float:
    return _metrics(port).get((name, tuple(sorted(labels.items()))), 0.0)


def _check_api_and_dashboard(database_url: str, stats: dict, *, stuck: int, dead: int,
                             struggling: int) -> None:
    from skiplock.api.config import ApiSettings
    from skiplock.settings import Settings
    from tests.integration.api.server import client, serve

    with serve(Settings(database_url=database_url), ApiSettings()) as base, client(base) as api:
        scraped = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(api.get("/metrics").text)
                   for s in f.samples}
        assert scraped[("skiplock_queue_stats_up", ())] == 1
        for queue in ("default", "side"):
            for gauge in ("stuck", "high_retry", "dead", "dead_last_hour", "in_flight", "backlog"):
                assert scraped[(f"skiplock_queue_{gauge}", (("queue", queue),))] == \
                    stats[queue][gauge], (queue, gauge)

        def ids(path: str) -> list[int]:
            resp = api.get(path)
            assert resp.status_code == 200, resp.text
            return [j["id"] for j in resp.json()["jobs"]]

        assert ids("/v1/jobs?stuck=true") == [stuck]
        assert ids("/v1/jobs?state=dead") == [dead]
        assert ids("/v1/jobs?unfinished=true&min_attempts=3") == [struggling]

        def rows(query: str) -> list[int]:
            resp = api.get(f"/ui/jobs?{query}")
            assert resp.status_code == 200, resp.text
            return [int(x) for x in re.findall(r'data-job-id="(\d+)"', resp.text)]

        assert rows("stuck=1") == [stuck]
        assert rows("state=dead") == [dead]
        assert rows("state=unfinished&min_attempts=3") == [struggling]


def test_detection_reports_exactly_the_stuck_jobs(database_url, audited, spawn_worker, marker,
                                                  tmp_path: Path) -> None:
    sql = audited
    gate = tmp_path / "gate"
    port = free_port()
    main = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--queue", "default",
                        env={"SKIPLOCK_METRICS_PORT": str(port)}, name="main")
    doomed = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--queue", "side", name="doomed")
    wait_workers_ready(sql, 2)
    with Client(database_url) as c:
        dead = c.enqueue("poison")
        struggling = c.enqueue("slow_retry")
        healthy = c.enqueue("tracked", {"marker": str(marker), "hold": str(gate)})
        stuck = c.enqueue("tracked", {"marker": str(marker), "hold": str(gate)}, queue="side")
        fine = c.enqueue("add", {"a": 1, "b": 2})
    wait_until(lambda: len(read_marker(marker)) == 2, 30, "both held jobs to be running")
    doomed.kill()  # nobody else serves "side": its job stays running past its lease
    wait_until(lambda: state_of(sql, dead)[0] == "dead"
               and state_of(sql, struggling) == ("queued", 3)
               and state_of(sql, fine)[0] == "succeeded"
               and sql("SELECT locked_until < now() FROM jobs WHERE id = %s", stuck)[0][0],
               30, "the dead, high-retry and stuck conditions")

    # 1. The queries (skiplock.inspection and the list filters).
    with Database(database_url) as db:
        stats = {s.queue: s.as_dict() for s in inspection.queue_stats(db)}
        assert stats["default"] == {
            "queue": "default", "runnable": 0, "scheduled": 1, "in_flight": 1, "stuck": 0,
            "dead": 1, "dead_last_hour": 1, "high_retry": 1, "backlog": 0,
            "oldest_runnable_age": None, "waiting_for_worker": 0, "waiting_on_limit": 0,
            "limit_capacity": None, "paused": False, "paused_at": None, "paused_by": None,
        }, stats["default"]
        assert stats["side"] == {
            "queue": "side", "runnable": 0, "scheduled": 0, "in_flight": 0, "stuck": 1,
            "dead": 0, "dead_last_hour": 0, "high_retry": 0, "backlog": 1,
            "oldest_runnable_age": None, "waiting_for_worker": 0, "waiting_on_limit": 0,
            "limit_capacity": None, "paused": False, "paused_at": None, "paused_by": None,
        }, stats["side"]
        assert [r["id"] for r in db.list_jobs(stuck=True)] == [stuck]
        assert [r["id"] for r in db.list_jobs(state="queued", min_attempts=3)] == [struggling]
        assert [r["id"] for r in db.list_jobs(state="dead")] == [dead]
        assert db.get_job(dead)["last_error"].startswith("RuntimeError: always fails")
        assert inspection.busy_pods(db, ["default", "side"]) == {"main": 1}

    # 2. The command line.
    cli_stats = {s["queue"]: s for s in _cli(database_url, "stats", "--json")}
    assert cli_stats["default"] == stats["default"] and cli_stats["side"] == stats["side"]
    assert [j["id"] for j in _cli(database_url, "jobs", "--stuck", "--json")] == [stuck]
    assert [j["id"] for j in _cli(database_url, "jobs", "--state", "dead", "--json")] == [dead]
    assert [j["id"] for j in _cli(database_url, "jobs", "--state", "queued", "--min-attempts",
                                  "3", "--json")] == [struggling]

    # 3. The worker's Prometheus metrics: the dead job and the retries, labelled by task.
    assert _metric(port, "skiplock_jobs_dead_total", queue="default", task="poison") == 1
    assert _metric(port, "skiplock_jobs_retried_total", queue="default", task="poison") == 3
    assert _metric(port, "skiplock_jobs_retried_total", queue="default", task="slow_retry") == 3
    assert _metric(port, "skiplock_jobs_succeeded_total", queue="default", task="add") == 1
    assert _metric(port, "skiplock_leases_rescued_total") == 0

    # 4. The queue gauges (the API's /metrics), the API's job filters and the dashboard's.
    _check_api_and_dashboard(database_url, stats, stuck=stuck, dead=dead, struggling=struggling)

    # A worker for "side" comes back: it rescues the stuck job (and counts it), the stuck count
    # drops to zero, and the job finishes.
    rescuer_port = free_port()
    spawn_worker("tests.tasks:app", *WORKER_ARGS, "--queue", "side",
                 env={"SKIPLOCK_METRICS_PORT": str(rescuer_port)}, name="rescuer")
    wait_until(lambda: len(read_marker(marker)) == 3, 30, "the stuck job to be re-claimed")
    assert _metric(rescuer_port, "skiplock_leases_rescued_total") == 1
    with Database(database_url) as db:
        side = {s.queue: s for s in inspection.queue_stats(db)}["side"]
        assert (side.stuck, side.in_flight) == (0, 1)
    gate.touch()
    with Client(database_url) as c:
        assert c.cancel(struggling)  # an operator gives up on it (it waits 80 s for attempt 4)
    wait_until(lambda: state_of(sql, stuck)[0] == "succeeded"
               and state_of(sql, healthy)[0] == "succeeded", 30, "the held jobs to finish")
    assert_invariants(sql, [dead, struggling, healthy, stuck, fine],
                      expected_states={dead: "dead", struggling: "cancelled", healthy: "succeeded",
                                       stuck: "succeeded", fine: "succeeded"})
    main.terminate()
