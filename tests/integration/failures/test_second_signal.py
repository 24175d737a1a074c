"""A second SIGTERM/SIGINT during the shutdown grace: the operator (or kubelet, or a user at a
terminal pressing Ctrl-C twice) wants the worker gone now.

Mitigation: the first signal stops claiming and lets the running job go on (the grace); the
second releases every still-running job, fenced (attempt not counted, queued, unlocked), so
another worker takes it at once instead of waiting for the lease, and the process exits 0 in
seconds. A sync handler's thread cannot be killed: its late outcome is discarded.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from skiplock import Client
from tests.integration.failures.conftest import LEASE, wait_workers_ready
from tests.support.chaos import audit, read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "30",
        "--concurrency", "2")
# Both signals are handled alike; SIGTERM then SIGINT is kubelet's TERM followed by a Ctrl-C.
PAIRS = [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT),
         (signal.SIGTERM, signal.SIGINT)]


def _second_signal_releases(database_url, sql, spawn_worker, marker: Path, tmp_path: Path,
                            app: str, task: str, first: signal.Signals,
                            second: signal.Signals) -> float:
    hold = tmp_path / "hold"  # does not exist until the second worker should finish the job
    a = spawn_worker(app, *ARGS, name="first")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue(task, {"marker": str(marker), "hold": str(hold)})
    wait_until(lambda: read_marker(marker), 30, "the first worker to start the job")
    assert state_of(sql, job) == ("running", 1)

    a.proc.send_signal(first)
    wait_until(lambda: "stopping: no new claims" in a.output(), 15, "the first signal's log line")
    # The grace: the job keeps running and its lease keeps being renewed.
    until = sql("SELECT locked_until FROM jobs WHERE id = %s", job)[0][0]
    wait_until(lambda: sql("SELECT locked_until > %s FROM jobs WHERE id = %s", until, job)[0][0],
               LEASE * 3, "the lease to be renewed during the grace")
    assert a.proc.poll() is None, a.output()[-2000:]
    row = sql("SELECT state::text, attempts, locked_by FROM jobs WHERE id = %s", job)[0]
    assert row[:2] == ("running", 1) and str(row[2]).startswith("first:"), row
    assert "waiting up to 30s for 1 running job" in a.output()

    sent = time.monotonic()
    a.proc.send_signal(second)
    code = a.proc.wait(timeout=20)
    exit_seconds = time.monotonic() - sent
    log = a.output()
    print(f"\n[second signal] {first.name}+{second.name} {task}: exited {code} "
          f"{exit_seconds:.2f}s after the second signal")
    assert code == 0, log[-3000:]
    assert exit_seconds < 5, f"exit took {exit_seconds:.1f}s after the second signal"
    assert "second signal: releasing every unfinished job now" in log, log[-3000:]
    assert "released 1 unfinished job" in log, log[-3000:]
    assert sql("SELECT state::text, attempts, locked_by, locked_until FROM jobs WHERE id = %s",
               job) == [("queued", 0, None, None)]
    # The release is the fenced hand-back: running -> queued, the attempt given back.
    assert [(t[0], t[1], t[2]) for t in audit(sql, job)] == [
        (None, "queued", 0), ("queued", "running", 1), ("running", "queued", 0)]

    b = spawn_worker(app, *ARGS, name="second")
    hold.touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the second worker to run it")
    runs = read_marker(marker)
    assert [(r[1], r[2].split(":")[0]) for r in runs] == [(1, "first"), (1, "second")], runs
    ((result,),) = sql("SELECT result FROM results WHERE job_id = %s", job)
    assert result == {"attempt": 1, "worker": runs[1][2]}
    # The released run started the handler without counting an attempt: only the runs after
    # the release are held against the job's attempts.
    assert_invariants(sql, [job], expected_states={job: "succeeded"},
                      executions={job: sum(1 for r in runs[1:] if r[0] == job)})
    assert b.terminate() == 0
    return exit_seconds


@pytest.mark.parametrize(("first", "second"), PAIRS,
                         ids=[f"{f.name}+{s.name}" for f, s in PAIRS])
def test_second_signal_releases_a_running_sync_job(database_url, audited, spawn_worker, marker,
                                                   tmp_path, first, second) -> None:
    """tracked runs in a handler thread, waiting for a file that never appears."""
    _second_signal_releases(database_url, audited, spawn_worker, marker, tmp_path,
                            "tests.tasks:app", "tracked", first, second)


def test_second_signal_releases_a_running_async_job(database_url, audited, spawn_worker, marker,
                                                    tmp_path) -> None:
    """An async handler on the event loop: cancelled after its release."""
    _second_signal_releases(database_url, audited, spawn_worker, marker, tmp_path,
                            "tests.signal_tasks:app", "async_tracked", signal.SIGTERM,
                            signal.SIGTERM)
