"""Restart the Postgres StatefulSet mid-run: workers reconnect, the operator holds replicas and
reports the outage, and no job is lost (the volume keeps the data)."""

from __future__ import annotations

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import enqueue, log, step, wait_for

pytestmark = pytest.mark.timeout(1200)


def test_postgres_restarts_lose_nothing(env: Env) -> None:
    queue = env.unique("e2e-dbrestart")
    name = env.jobqueue(queue, min_replicas=2, max_replicas=2, concurrency=4, lease=10, poll=2)
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 2, 240, "2 ready workers")
    enqueue(env.db, queue, "slow", {"seconds": 0.2}, 900)

    with step("rollout restart of the Postgres StatefulSet"):
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) >= 50, 180, "progress")
        env.kubectl("-n", env.namespace, "rollout", "restart", f"statefulset/{env.postgres}")
        env.kubectl("-n", env.namespace, "rollout", "status", f"statefulset/{env.postgres}",
                    "--timeout=300s", timeout=320)
        env.forward.restart()
        before = env.db.counts(queue).get("succeeded", 0)
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) > before + 50, 240,
                 "progress after the restart")

    with step("plain delete of the Postgres pod"):
        env.kubectl("-n", env.namespace, "delete", "pod", f"{env.postgres}-0", "--wait=false")
        env.forward.restart()
        before = env.db.counts(queue).get("succeeded", 0)
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) > before + 50, 300,
                 "progress after the pod delete")

    with step("an outage long enough to see: scale Postgres to 0"):
        replicas_before = env.desired_replicas(deployment)
        env.kubectl("-n", env.namespace, "scale", f"statefulset/{env.postgres}", "--replicas=0")
        cond = wait_for(lambda: env.condition(name, "DatabaseReachable", "False"), 120,
                        "DatabaseReachable=False")
        log(f"condition during the outage: {cond}")
        assert cond.get("reason") and cond.get("message")
        assert env.desired_replicas(deployment) == replicas_before, "replicas not held"
        warnings = env.kubectl("-n", env.namespace, "get", "events", "--field-selector",
                               f"involvedObject.name={name},type=Warning", "-o", "name")
        assert warnings.strip(), "no Warning event for the outage"
        env.kubectl("-n", env.namespace, "scale", f"statefulset/{env.postgres}", "--replicas=1")
        env.kubectl("-n", env.namespace, "rollout", "status", f"statefulset/{env.postgres}",
                    "--timeout=300s", timeout=320)
        env.forward.restart()
        wait_for(lambda: env.condition(name, "DatabaseReachable", "True"), 120,
                 "DatabaseReachable=True again")
        assert env.desired_replicas(deployment) == replicas_before

    with step("everything finishes"):
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 900, 600, "900 succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=900)
