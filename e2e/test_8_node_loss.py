"""A node is lost mid-run: the kind node container running the operator leader and busy
workers is frozen (`docker pause`: its kubelet, containers and network all stop answering, as
a powered-off machine does). Its jobs run again elsewhere within the lease, the standby
operator takes over when the leader Lease expires, the workers are re-created on the other
node, and every job ends exactly once."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from tests.support.invariants import assert_invariants
from tests.support.waits import first_times

from e2e.conftest import Env
from e2e.support import enqueue, log, step, wait_for
from e2e.test_6_operator_ha import leader

pytestmark = pytest.mark.timeout(900)
LEASE = 6
JOBS = 160
# the worker pods leave a lost node after this (Kubernetes' default is 300 s)
EVICT_AFTER = 10


def worker_pods_on(env: Env, deployment: str, node: str) -> list[str]:
    pods = env.kubectl.json("-n", env.namespace, "get", "pods", "-l",
                            f"app.kubernetes.io/instance={deployment.removesuffix('-worker')}")
    return [p["metadata"]["name"] for p in pods["items"]
            if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp")]


@pytest.fixture
def paused() -> Iterator[list[str]]:
    nodes: list[str] = []
    yield nodes
    for node in nodes:  # give the node back, whatever the test saw
        subprocess.run(["docker", "unpause", node], check=False, timeout=60)


def test_losing_the_leaders_node_mid_run(env: Env, paused: list[str]) -> None:
    queue = env.unique("e2e-nodeloss")
    tolerate = [{"key": key, "operator": "Exists", "effect": "NoExecute",
                 "tolerationSeconds": EVICT_AFTER}
                for key in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    spread = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
               "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": queue}}}]
    name = env.jobqueue(queue, min_replicas=4, max_replicas=4, concurrency=2, lease=LEASE,
                        grace=5, poll=2,
                        pod_spec={"tolerations": tolerate, "topologySpreadConstraints": spread})
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 4, 300, "4 ready workers")
    holder = wait_for(lambda: leader(env), 60, "an operator leader")
    node = env.node_of(holder)
    standby = [p for p in env.operator_pods() if p != holder]
    assert standby and env.node_of(standby[0]) != node, (
        "both operator replicas run on one node: the chart's anti-affinity did not spread them")
    victims = wait_for(lambda: worker_pods_on(env, deployment, node), 60,
                       f"a worker on the leader's node {node}")
    enqueue(env.db, queue, "slow", {"seconds": 1.0}, JOBS)
    # busy workers on that node: leases held by its pods (worker ids start with the pod name)
    wait_for(lambda: env.db.query(
        "SELECT count(*) FROM jobs WHERE queue = %s AND state = 'running' AND "
        "locked_by LIKE ANY(%s)", queue,
        [f"{v}%" for v in victims])[0][0] > 0, 60, "jobs running on the doomed node")

    with step(f"pause node {node} (operator leader {holder}, workers {victims})"):
        lost = env.db.query("SELECT id FROM jobs WHERE queue = %s AND state = 'running' AND "
                            "locked_by LIKE ANY(%s)", queue, [f"{v}%" for v in victims])
        subprocess.run(["docker", "pause", node], check=True, timeout=60)
        paused.append(node)
        t0 = time.monotonic()
    ids = [r[0] for r in lost]
    # the three recoveries run side by side: polled in one loop, each timed on its own
    took = first_times({
        "lease": lambda: (h := leader(env)) is not None and h != holder,
        "rerun": lambda: env.db.query(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND (state <> 'running' OR "
            "locked_by NOT LIKE ALL(%s))", ids, [f"{v}%" for v in victims])[0][0] == len(ids),
        "workers": lambda: env.ready_replicas(deployment) == 4
        and not worker_pods_on(env, deployment, node),
    }, 300, since=t0)
    log(f"node loss: Lease to {leader(env)} after {took['lease']:.1f}s, the lost node's "
        f"{len(ids)} jobs re-run after {took['rerun']:.1f}s (lease {LEASE}s), 4 workers again "
        f"after {took['workers']:.1f}s (eviction after {EVICT_AFTER}s NotReady)")
    wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == JOBS, 300,
             f"{JOBS} succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=JOBS)
