"""Clock skew: real worker processes whose wall clock is an hour ahead or an hour behind (the
monotonic clock untouched, as on a machine with a wrongly set clock; time-machine shifts it from
a sitecustomize). Scheduling (run_at), backoff and leases behave exactly as with a correct
clock, because every comparison uses the database's now()."""

from __future__ import annotations

from pathlib import Path

import pytest

from skiplock import Client
from tests.conftest import ROOT
from tests.integration.failures.conftest import LEASE, WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

HOUR = 3600
SKEW_DIR = ROOT / "tests" / "support" / "clockskew"
# How late a worker may act after the database says it may (poll interval 0.2 s, a busy machine).
# An hour-behind clock would be 3600 s late, an hour-ahead one early (negative): both fail.
SLACK = 5.0


def skewed(offset: float) -> dict[str, str]:
    return {"PYTHONPATH": f"{SKEW_DIR}:{ROOT}:{ROOT / 'worker'}",
            "SKIPLOCK_TEST_CLOCK_OFFSET": str(offset)}


def _secs(delta) -> float:
    return float(delta.total_seconds())


@pytest.mark.parametrize("offset", [HOUR, -HOUR], ids=["ahead", "behind"])
def test_schedule_backoff_and_leases_ignore_the_worker_clock(
        database_url, audited, spawn_worker, marker: Path, offset: int) -> None:
    sql = audited
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, env=skewed(offset), name="skewed")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        clock = c.enqueue("wall_clock")
        delayed = c.enqueue("tracked", {"marker": str(marker)}, delay=2.0)
        flaky = c.enqueue("flaky", {"fail_times": 2})
        long = c.enqueue("tracked", {"marker": str(marker), "seconds": LEASE * 2})
        ids = [clock, delayed, flaky, long]
        wait_until(lambda: all(state_of(sql, i)[0] == "succeeded" for i in ids), 60,
                   "every job to succeed")
        seen = c.get_job(clock)
    assert seen is not None
    # The fault is real: the worker process believes it is an hour off.
    skew = seen["result"]["time"] - seen["finished_at"].timestamp()
    assert abs(skew - offset) < 60, f"worker clock is {skew:+.0f}s off, expected {offset:+d}s"

    # Scheduling: not before run_at (an hour-ahead clock would run it at once), and promptly
    # after it (an hour-behind clock would wait an hour).
    trail = audit(sql, delayed)
    run_at = trail[0][3]
    claimed_at = next(t[6] for t in trail if t[1] == "running")
    assert 0 <= _secs(claimed_at - run_at) < SLACK, (run_at, claimed_at)
    assert _secs(run_at - trail[0][6]) == pytest.approx(2.0, abs=0.05)

    # Backoff: run_at = database now + 0.2 s, then + 0.4 s; each retry claimed on time.
    trail = audit(sql, flaky)
    retries = [t for t in trail if t[0] == "running" and t[1] == "queued"]
    claims = [t for t in trail if t[1] == "running"]
    assert [t[2] for t in claims] == [1, 2, 3]
    for retry, want in zip(retries, (0.2, 0.4), strict=True):
        assert _secs(retry[3] - retry[6]) == pytest.approx(want, abs=0.05)
    for retry, claim in zip(retries, claims[1:], strict=True):
        assert 0 <= _secs(claim[6] - retry[3]) < SLACK, (retry, claim)

    # Leases: granted for lease_seconds of database time, renewed while the handler runs (a job
    # twice as long as the lease finishes on its first attempt, never rescued).
    trail = audit(sql, long)
    claim = next(t for t in trail if t[1] == "running")
    assert _secs(claim[5] - claim[6]) == pytest.approx(LEASE, abs=0.1)
    assert [t[1] for t in trail] == ["queued", "running", "succeeded"]
    assert state_of(sql, long) == ("succeeded", 1)
    assert_invariants(sql, ids, expected_states={i: "succeeded" for i in ids})
    w.terminate()


@pytest.mark.parametrize(("victim", "rescuer"), [(HOUR, -HOUR), (-HOUR, HOUR)],
                         ids=["ahead-rescued-by-behind", "behind-rescued-by-ahead"])
def test_lease_expiry_is_judged_by_database_time(database_url, audited, spawn_worker,
                                                 marker: Path, tmp_path: Path, victim: int,
                                                 rescuer: int) -> None:
    """A worker with a skewed clock is SIGKILLed mid-job; another, skewed the other way,
    rescues the job only after the lease expired by database time, and not much later."""
    sql = audited
    gate = tmp_path / "gate"
    a = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", env=skewed(victim),
                     name="victim")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker), "hold": str(gate)})
    wait_until(lambda: read_marker(marker), 30, "the victim to start the job")
    b = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", env=skewed(rescuer),
                     name="rescuer")
    wait_workers_ready(sql, 2)
    a.kill()
    lease_at_kill = sql("SELECT locked_until FROM jobs WHERE id = %s", job)[0][0]
    gate.touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the rescuer to finish the job")
    trail = audit(sql, job)
    requeue = next(t for t in trail if t[0] == "running" and t[1] == "queued")
    late = _secs(requeue[6] - lease_at_kill)
    assert 0 <= late < SLACK, f"rescued {late:+.2f}s after the lease expired"
    assert [r[2].split(":")[0] for r in read_marker(marker)] == ["victim", "rescuer"]
    assert_invariants(sql, [job], expected_states={job: "succeeded"})
    b.terminate()
