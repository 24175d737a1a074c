"""Worker crash during execution and right after a claim: SIGKILL of a real worker process.

Mitigation: the lease (locked_until) expires, a live worker's rescuer requeues the job (or marks
it dead on its last attempt) and it is claimed again; "running" always implies a lease, so no job
is stuck forever.
"""

from __future__ import annotations

from pathlib import Path

from skiplock import Client
from tests.integration.failures.conftest import LEASE, WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, executions, read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until


def test_sigkill_mid_job_is_reclaimed_after_lease_expiry(database_url, audited, spawn_worker,
                                                         marker: Path, tmp_path: Path) -> None:
    sql = audited
    hold = tmp_path / "release"
    a = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", name="crash-a")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker), "hold": str(hold)})
    wait_until(lambda: read_marker(marker), 30, "worker A to start the job")
    b = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", name="crash-b")
    wait_workers_ready(sql, 2)
    # A is alive and heartbeating: its lease is renewed past the original expiry.
    first_until = sql("SELECT locked_until FROM jobs WHERE id = %s", job)[0][0]
    wait_until(lambda: sql("SELECT locked_until > %s FROM jobs WHERE id = %s",
                         first_until, job)[0][0],
               LEASE * 3, "worker A to renew its lease")
    a.kill()
    lease_at_kill = sql("SELECT locked_until FROM jobs WHERE id = %s", job)[0][0]
    assert state_of(sql, job) == ("running", 1)

    wait_until(lambda: len(read_marker(marker)) == 2, 30, "worker B to re-run the job")
    hold.touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the job to succeed")

    trail = audit(sql, job)
    requeued = [t for t in trail if t[0] == "running" and t[1] == "queued"]
    assert len(requeued) == 1, trail
    # Re-claimed only after the lease the killed worker held had expired, by database time.
    assert requeued[0][6] >= lease_at_kill, (requeued[0][6], lease_at_kill)
    runs = read_marker(marker)
    assert [(r[1], r[2].split(":")[0]) for r in runs] == [(1, "crash-a"), (2, "crash-b")]
    row = c_get(database_url, job)
    assert row["result"] == {"attempt": 2, "worker": runs[1][2]}
    assert "lease expired" in row["errors"][0]["error"]
    assert_invariants(sql, [job], expected_states={job: "succeeded"}, executions=executions(marker))
    b.terminate()


def c_get(database_url: str, job: int) -> dict:
    with Client(database_url) as c:
        row = c.get_job(job)
    assert row is not None
    return row


def test_crash_right_after_claim_leaves_nothing_stuck(database_url, audited, spawn_worker,
                                                      marker: Path) -> None:
    """The handler's first act is to SIGKILL its own process: the claim committed, no outcome
    was ever written. With attempts left the job is re-run; on its last attempt it goes dead
    with the lease-expiry error; in neither case is it left running."""
    sql = audited
    with Client(database_url) as c:
        retried = c.enqueue("crash_on_first_attempt", {"marker": str(marker)})
        last = c.enqueue("crash_on_first_attempt", {"marker": str(marker)}, max_attempts=1)
    workers = [spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1",
                            name=f"crash-{i}") for i in range(3)]
    wait_until(lambda: sum(w.proc.poll() is not None for w in workers) >= 2, 60,
               "two workers to crash on the two first attempts")
    survivor = spawn_worker("tests.tasks:app", *WORKER_ARGS, name="survivor")
    wait_until(lambda: state_of(sql, retried)[0] == "succeeded"
               and state_of(sql, last)[0] == "dead",
               30, "the retried job to succeed and the last-attempt job to go dead")
    dead = c_get(database_url, last)
    assert dead["attempts"] == 1 and dead["last_error"].startswith("lease expired"), dead
    ok = c_get(database_url, retried)
    assert ok["attempts"] == 2 and ok["result"] == {"attempt": 2}, ok
    for w in workers:
        if w.proc.poll() is not None:
            assert w.proc.returncode == -9, w.output()
    assert_invariants(sql, [retried, last],
                      expected_states={retried: "succeeded", last: "dead"},
                      executions=executions(marker))
    survivor.terminate()


def test_sigkill_during_a_batch_loses_nothing(database_url, audited, spawn_worker,
                                              marker: Path) -> None:
    """Three workers on 40 short jobs; two are SIGKILLed mid-run and replaced."""
    sql = audited
    with Client(database_url) as c:
        ids = [c.enqueue("tracked", {"marker": str(marker), "seconds": 0.15}) for _ in range(40)]
    workers = [spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "3",
                            name=f"batch-{i}") for i in range(3)]
    wait_until(lambda: len(read_marker(marker)) >= 8, 60, "work to be under way")
    workers[0].kill()
    wait_until(lambda: len(read_marker(marker)) >= 16, 60, "more work done")
    workers[1].kill()
    spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "3", name="batch-new")
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] == 40,
               90, "all 40 jobs to succeed")
    counts = assert_invariants(sql, ids, executions=executions(marker))
    assert counts == {"succeeded": 40}


def test_sigkill_between_claim_commit_and_its_answer(database_url, audited, spawn_worker, proxy,
                                                     marker: Path) -> None:
    """The claim committed in Postgres and the worker is SIGKILLed before the answer reaches it
    (held back 3 s by Toxiproxy): the job is running under a dead worker's lease, with no
    handler anywhere. It comes back after the lease and runs exactly once."""
    sql = audited
    victim = spawn_worker("tests.tasks:app", *WORKER_ARGS,
                          env={"SKIPLOCK_DATABASE_URL": proxy.url(database_url)}, name="victim")
    wait_workers_ready(sql, 1)
    proxy.add_toxic("latency", stream="downstream", latency=3000)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker)})
    wait_until(lambda: state_of(sql, job) == ("running", 1), 30, "the claim to commit")
    victim.kill()
    assert read_marker(marker) == []
    lease = sql("SELECT locked_until FROM jobs WHERE id = %s", job)[0][0]
    spawn_worker("tests.tasks:app", *WORKER_ARGS, name="rescuer")
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the job to be re-run")
    trail = audit(sql, job)
    assert [(t[1], t[2]) for t in trail] == [("queued", 0), ("running", 1), ("queued", 1),
                                             ("running", 2), ("succeeded", 2)], trail
    assert trail[2][6] >= lease
    assert [(r[1], r[2].split(":")[0]) for r in read_marker(marker)] == [(2, "rescuer")]
    assert_invariants(sql, [job], expected_states={job: "succeeded"}, executions=executions(marker))
