"""Poison pill: a task that always raises ends dead after max_attempts, run_at (the backoff,
by database time) grows between attempts, and it is never retried again."""

from __future__ import annotations

from skiplock import Client
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until


def test_poison_pill_goes_dead_with_growing_backoff(database_url, audited, spawn_worker) -> None:
    sql = audited
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, name="poison")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("poison")  # max_attempts=4 from the catalogue; backoff 0.2 s doubling
        wait_until(lambda: state_of(sql, job)[0] == "dead", 60, "the poison job to go dead")
        row = c.get_job(job)
    assert row is not None
    assert row["attempts"] == 4 and row["max_attempts"] == 4
    assert row["last_error"].startswith("RuntimeError: always fails (attempt 4)")
    assert [e["attempt"] for e in row["errors"]] == [1, 2, 3, 4]

    trail = audit(sql, job)
    claims = [t for t in trail if t[1] == "running"]
    retries = [t for t in trail if t[0] == "running" and t[1] == "queued"]
    assert [t[2] for t in claims] == [1, 2, 3, 4]
    assert len(retries) == 3
    # run_at of each retry minus the database time of its failure: the backoff delays.
    delays = [(t[3] - t[6]).total_seconds() for t in retries]
    for got, want in zip(delays, (0.2, 0.4, 0.8), strict=True):
        assert abs(got - want) < 0.05, delays
    assert delays[0] < delays[1] < delays[2]
    # Each retry waited for its run_at: claimed no earlier than the run_at it was given.
    for retry, claim in zip(retries, claims[1:], strict=True):
        assert claim[6] >= retry[3], (retry, claim)

    # Never retried again: the worker keeps claiming (a later job runs) but not the dead one.
    with Client(database_url, validate=False) as c:
        later = c.enqueue("noop")
    wait_until(lambda: state_of(sql, later)[0] == "succeeded", 30, "a later job to run")
    assert state_of(sql, job) == ("dead", 4)
    assert len(audit(sql, job)) == len(trail)
    assert_invariants(sql, [job, later], expected_states={job: "dead", later: "succeeded"})
    w.terminate()
