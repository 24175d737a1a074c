"""Two operator replicas: one leads (the Lease says which), the other stands by. Deleting the
leader's pod hands the Lease over; the new leader scales within 20 s, and only the leader ever
scales."""

from __future__ import annotations

import time

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import enqueue, log, step, wait_for

pytestmark = pytest.mark.timeout(600)

# what the operator logs when it changes a worker Deployment's replicas (controller.py)
SCALE_LOG = "scaled "


def leader(env: Env) -> str | None:
    """The operator pod holding the leader Lease (None while nobody holds it)."""
    names = set(env.operator_pods())
    for lease in env.kubectl.json("-n", env.namespace, "get", "leases")["items"]:
        holder = lease.get("spec", {}).get("holderIdentity")
        if holder in names:
            return str(holder)
    return None


def scale_lines(env: Env, pod: str, since: str) -> list[str]:
    out = env.kubectl("-n", env.namespace, "logs", pod, f"--since-time={since}", check=False)
    return [line for line in out.splitlines() if SCALE_LOG in line]


def test_the_standby_takes_over_when_the_leader_pod_goes(env: Env) -> None:
    wait_for(lambda: len([p for p in env.operator_pods() if env.pod_ready(p)]) == 2, 240,
             "two ready operator replicas")
    first = wait_for(lambda: leader(env), 60, "a leader")
    standby = next(p for p in env.operator_pods() if p != first)
    queue = env.unique("e2e-ha")
    name = env.jobqueue(queue, min_replicas=1, max_replicas=3, jobs_per_replica=10,
                        concurrency=2, poll=2, stabilization=60)
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 1, 240, "1 ready worker")
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    with step(f"delete the leader's pod {first}; the standby {standby} takes over"):
        deleted = time.monotonic()
        env.kubectl("-n", env.namespace, "delete", "pod", first, "--wait=false")
        enqueue(env.db, queue, "slow", {"seconds": 1}, 60)
        # the standby, or the Deployment's replacement pod if it wins the released Lease
        # first (CI saw the replacement take it 2 s after the delete): either is a handover
        new_leader = wait_for(lambda: (held := leader(env)) not in (None, first) and held, 60,
                              f"another pod than {first} holds the Lease")
        took_lease = time.monotonic() - deleted
        wait_for(lambda: env.desired_replicas(deployment) > 1, 60, "scaled up by the new leader")
        scaled = time.monotonic() - deleted
        log(f"handover: Lease taken {took_lease:.1f}s, scaled {scaled:.1f}s after the delete")
        assert scaled < 20, f"{new_leader} scaled {scaled:.1f}s after the leader's pod was deleted"

    wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 60, 300, "60 succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=60)
    # only the leader scales: every scale line since the delete is the new leader's
    for pod in env.operator_pods():
        lines = scale_lines(env, pod, since)
        if pod != new_leader:
            assert lines == [], f"{pod} is not the leader but scaled: {lines}"
    assert scale_lines(env, new_leader, since), "the new leader logged no scaling"
