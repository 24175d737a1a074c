"""Duplicate execution (at-least-once): a worker stalls past its lease, another worker re-runs
the job, both handlers run at the same time. The fence rejects the stale worker's completion and
the result is written exactly once (results.job_id unique + INSERT ... ON CONFLICT)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from skiplock import Client
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until


def test_stalled_worker_loses_lease_and_its_completion_is_rejected(
        database_url, audited, spawn_worker, marker: Path, tmp_path: Path) -> None:
    sql = audited
    gate = str(tmp_path / "gate-{attempt}")
    a = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", name="stale")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker), "hold": gate})
    wait_until(lambda: len(read_marker(marker)) == 1, 30, "worker A to start attempt 1")
    b = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", name="fresh")
    wait_workers_ready(sql, 2)

    # Freeze A (a GC pause, a stalled VM): no heartbeats, so its lease expires early, mid-job.
    os.kill(a.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(read_marker(marker)) == 2, 30, "worker B to re-run the job")
    finally:
        os.kill(a.pid, signal.SIGCONT)
    runs = read_marker(marker)
    assert [(r[1], r[2].split(":")[0]) for r in runs] == [(1, "stale"), (2, "fresh")]
    assert state_of(sql, job) == ("running", 2)
    # Both handlers are running the same job now. A finishes first: its write must change nothing.
    Path(gate.format(attempt=1)).touch()
    wait_until(lambda: "outcome discarded" in a.output(), 30, "A's completion to be rejected")
    assert "lease lost" in a.output() or "outcome discarded" in a.output()
    assert state_of(sql, job) == ("running", 2), "the stale completion changed the job"
    assert sql("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]

    Path(gate.format(attempt=2)).touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "B to complete the job")
    result = sql("SELECT result FROM results WHERE job_id = %s", job)
    assert result == [({"attempt": 2, "worker": runs[1][2]},)]
    # Succeeded once, by the current owner: one running->succeeded transition, from attempt 2.
    done = [t for t in audit(sql, job) if t[1] == "succeeded"]
    assert [(t[0], t[2]) for t in done] == [("running", 2)]
    # The second line of defence: one result per job, enforced by the database.
    assert sql("""SELECT count(*) FROM pg_index i JOIN pg_attribute a
                  ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                  WHERE i.indrelid = 'results'::regclass AND i.indisunique
                    AND i.indnatts = 1 AND a.attname = 'job_id'""") == [(1,)]
    assert_invariants(sql, [job], expected_states={job: "succeeded"})
    a.terminate()
    b.terminate()


def test_results_upsert_keeps_the_first_result(database_url, sql) -> None:
    """Even if two writers got past the fence, the second INSERT of a result is a no-op."""
    with Client(database_url) as c:
        job = c.enqueue("noop", validate=False)
    insert = ("INSERT INTO results (job_id, result) VALUES (%s, %s::jsonb) "
              "ON CONFLICT (job_id) DO NOTHING")
    sql(insert, job, '{"writer": 1}')
    sql(insert, job, '{"writer": 2}')
    assert sql("SELECT result FROM results WHERE job_id = %s", job) == [({"writer": 1},)]
