"""Deadlines: ``@app.task(timeout=...)`` and ``enqueue(timeout=...)``. A lease is not a deadline
(a hung handler renews its lease for ever); past the deadline the handler is told to stop, the
attempt fails as "timed out after N s" and the task's retry policy applies. A sync handler that
ignores it keeps its thread, and its slot, until it returns: counted, and when every slot is
held so, /livez fails so that the pod is restarted.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from skiplock import Client
from tests.control_tasks import events
from tests.integration.failures.conftest import LEASE, wait_workers_ready
from tests.support.chaos import audit, state_of
from tests.support.invariants import assert_invariants
from tests.support.pgserver import free_port
from tests.support.probes import livez
from tests.support.waits import wait_until

Sql = Any
APP = "tests.control_tasks:app"
GRACE = 1.0
ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "5",
        "--cancel-grace", str(GRACE))


def _history(sql: Sql, job: int) -> list[str]:
    ((errors,),) = sql("SELECT errors FROM jobs WHERE id = %s", job)
    return [str(e["error"]) for e in errors]




@pytest.mark.parametrize("task", ["sync_slow", "async_slow"])
def test_an_attempt_past_its_deadline_times_out_and_is_retried(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path, task: str) -> None:
    spawn_worker(APP, *ARGS, "--concurrency", "2")
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        job = c.enqueue(task, {"marker": str(marker)})
        wait_until(lambda: state_of(audited, job)[0] == "dead", 30,
                   "both attempts to time out")
    history = _history(audited, job)
    # max_attempts=2: two attempts, each ended by its 1 s deadline (not its 30 s of work).
    assert len(history) == 2, history
    assert all(h.startswith("timed out after 1s; ") for h in history), history
    starts = [at for e, j, _, at in events(marker) if e == "start" and j == job]
    stops = [at for e, j, _, at in events(marker) if e == "saw-stop" and j == job]
    assert len(starts) == 2 and len(stops) == 2, events(marker)
    for start, stop in zip(starts, stops, strict=True):
        # the deadline counts from before the pool thread starts: a busy machine makes it late
        assert 0.5 <= stop - start < 2.5, (start, stop)
    assert not [e for e in events(marker) if e[0] == "end"]  # no attempt ran to its end
    assert [t[1] for t in audit(audited, job)] == ["queued", "running", "queued", "running",
                                                   "dead"]
    assert_invariants(audited, [job], expected_states={job: "dead"})


def test_enqueue_timeout_overrides_the_tasks(database_url: str, audited: Sql,
                                              spawn_worker: Any, marker: Path) -> None:
    spawn_worker(APP, *ARGS, "--concurrency", "2")
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        # The task's deadline is 1 s; this job's own is 5 s and its work 1.5 s: it succeeds.
        ok = c.enqueue("sync_slow", {"marker": str(marker), "seconds": 1.5}, timeout=5)
        # And a shorter one than the task's.
        short = c.enqueue("async_slow", {"marker": str(marker)}, timeout=0.3)
        wait_until(lambda: state_of(audited, ok)[0] == "succeeded"
                   and state_of(audited, short)[0] == "dead", 30, "both jobs to finish")
    assert audited("SELECT timeout_seconds FROM jobs WHERE id = %s", ok) == [(5.0,)]
    assert all(h.startswith("timed out after 0.3s") for h in _history(audited, short))
    assert_invariants(audited)


def test_a_sync_handler_that_ignores_its_deadline_keeps_its_slot_until_it_returns(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path) -> None:
    port = free_port()
    w = spawn_worker(APP, *ARGS, "--concurrency", "1",
                     env={"SKIPLOCK_METRICS_PORT": str(port)})
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        # Ignores the stop signal and sleeps 6 s past its 1 s deadline.
        job = c.enqueue("sync_slow", {"marker": str(marker), "cooperative": False,
                                      "seconds": 6}, max_attempts=1)
        wait_until(lambda: state_of(audited, job)[0] == "dead", 1 + GRACE + 5,
                   "the attempt to time out after the deadline and the grace")
        assert "did not stop within 1s and was abandoned" in _history(audited, job)[-1]
        # Its thread still runs: the only slot is taken, so a new job waits, and the worker
        # says so on /livez (every slot abandoned: only a restart frees them).
        nxt = c.enqueue("quick", {"marker": str(marker), "seconds": 0})
        _, body = wait_until(lambda: (s := livez(port))[0] == 503 and s, 5,
                                  "/livez to report the abandoned slot")
        assert "all 1 slots hold handlers that did not stop" in " ".join(body["problems"])
        assert state_of(audited, nxt)[0] == "queued"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert "skiplock_abandoned_handlers 1.0" in r.read().decode()
        # When the thread returns (6 s of work), the slot is back and the job runs.
        wait_until(lambda: state_of(audited, nxt)[0] == "succeeded", 20, "the next job")
    # healthy again at the monitor's next look (it refreshes every second)
    wait_until(lambda: livez(port)[0] == 200, 5, "/livez to be healthy again")
    assert state_of(audited, job)[0] == "dead"  # the late "finished" was discarded
    assert audited("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
    assert "abandoned handler returned" in w.output()
    # The run past its deadline was not "in flight" once it timed out: nothing stuck.
    assert audited("SELECT count(*) FROM jobs WHERE state = 'running'") == [(0,)]
    assert_invariants(audited)


def test_a_deadline_is_checked_at_enqueue(database_url: str) -> None:
    from skiplock import InvalidArguments
    with Client(database_url, validate=False) as c:
        for bad in (0, -1, float("nan"), float("inf"), 10 ** 9, True, "5"):
            with pytest.raises(InvalidArguments, match="timeout must be"):
                c.enqueue("sync_slow", {}, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be > 0"):
        import skiplock
        skiplock.App().task(timeout=0)(lambda ctx: None)
