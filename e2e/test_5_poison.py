"""Poison-pill jobs in the cluster go dead after max_attempts and are not retried forever."""

from __future__ import annotations

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import enqueue, step, wait_for

pytestmark = pytest.mark.timeout(600)


def test_poison_pills_go_dead(env: Env) -> None:
    queue = env.unique("e2e-poison")
    name = env.jobqueue(queue, min_replicas=1, max_replicas=1, concurrency=4, poll=2)
    wait_for(lambda: env.ready_replicas(f"{name}-worker") == 1, 240, "a ready worker")
    enqueue(env.db, queue, "poison", {"reason": "e2e"}, 10, max_attempts=3)
    enqueue(env.db, queue, "fast", {"n": 3}, 10)
    with step("poison pills dead"):
        wait_for(lambda: env.db.counts(queue).get("dead", 0) == 10, 300, "10 dead")
    attempts = env.db.query("SELECT DISTINCT attempts FROM jobs WHERE queue=%s AND task='poison'",
                            queue)
    assert attempts == [(3,)], attempts
    errors = env.db.query("SELECT DISTINCT jsonb_array_length(errors) FROM jobs WHERE queue=%s "
                          "AND task='poison'", queue)
    assert errors == [(3,)], errors
    wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 10, 120, "10 succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=20)
    wait_for(lambda: env.jobqueue_status(name).get("dead") == 10, 60, "status.dead == 10")
