"""Delete the operator pod: the new one resumes without flapping the Deployment."""

from __future__ import annotations

import contextlib
import threading

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import enqueue, step, wait_for

pytestmark = pytest.mark.timeout(600)


def test_operator_restart_does_not_flap(env: Env) -> None:
    queue = env.unique("e2e-oprestart")
    name = env.jobqueue(queue, min_replicas=2, max_replicas=3, jobs_per_replica=1000,
                        concurrency=2, poll=2)
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 2, 240, "2 ready workers")
    enqueue(env.db, queue, "slow", {"seconds": 0.5}, 60)
    generation = env.deployment(deployment)["metadata"]["generation"]
    seen: set[int] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            # a sample lost to an API hiccup changes nothing
            with contextlib.suppress(Exception):
                seen.add(env.desired_replicas(deployment))
            stop.wait(0.5)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    with step("delete the operator pod and wait for its replacement"):
        before = set(env.operator_pods())
        old = env.operator_pod()
        env.kubectl("-n", env.namespace, "delete", "pod", old)
        new = wait_for(lambda: next((p for p in env.operator_pods()
                                     if p not in before and env.pod_ready(p)), None), 240,
                       "a new ready operator pod")
        # the replacement watches at once, leader or not: it must be ready to take over (with
        # namespaced Roles kopf once spent ~55 s retrying a forbidden namespace list first)
        started = f"{env.namespace}/{name}: poll loop started"
        wait_for(lambda: started in env.kubectl("-n", env.namespace, "logs", new, check=False),
                 30, f"{new} polling {name}")
        # it has resumed: the status is refreshed after the restart
        first = env.jobqueue_status(name).get("lastPollTime")
        wait_for(lambda: env.jobqueue_status(name).get("lastPollTime") != first, 60,
                 "a poll by the new operator")
    stop.set()
    sampler.join(5)
    assert seen == {2}, f"replicas flapped during the operator restart: {sorted(seen)}"
    assert env.deployment(deployment)["metadata"]["generation"] == generation
    wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 60, 300, "60 succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=60)
