"""Delete worker pods mid-job, repeatedly and at random: every job finishes, each result once."""

from __future__ import annotations

import random
import time

import pytest

from e2e.conftest import Env
from e2e.support import enqueue, log, random_pod, step, wait_for

pytestmark = pytest.mark.timeout(900)
LEASE = 6


def test_deleting_workers_mid_job_loses_nothing(env: Env) -> None:
    queue = "e2e-podkill"
    name = env.jobqueue(queue, min_replicas=3, max_replicas=3, concurrency=4, lease=LEASE,
                        grace=5, poll=2)
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 3, 240, "3 ready workers")
    enqueue(env.db, queue, "slow", {"seconds": 1.0}, 400)
    rng = random.Random(7)
    killed = 0
    with step("delete 6 worker pods at random while they run jobs"):
        for i in range(6):
            wait_for(lambda: env.db.counts(queue).get("running", 0) > 0, 120, "jobs running")
            pod = wait_for(lambda: random_pod(env.kubectl, env.namespace,
                                              f"app.kubernetes.io/instance={name}"), 120, "a pod")
            force = i % 2 == 0  # half SIGKILL-like (no grace), half a normal SIGTERM drain
            args = ["--grace-period=0", "--force"] if force else []
            env.kubectl("-n", env.namespace, "delete", "pod", pod, "--wait=false", *args)
            killed += 1
            log(f"deleted {pod} ({'forced' if force else 'graceful'})")
            time.sleep(rng.uniform(2, 5))
    with step("all 400 jobs finish"):
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 400, 600, "400 succeeded")
    env.db.assert_invariants(queue, 400)
    # Jobs whose worker was killed came back through lease expiry; recovery within the lease:
    # the gap between the expired attempt's lease end and the next start is bounded.
    reruns = env.db.query(
        "SELECT count(*) FROM jobs WHERE queue=%s AND errors::text LIKE '%%lease expired%%'", queue)
    log(f"{killed} pods deleted; {reruns[0][0]} jobs recovered via lease expiry")
    assert killed == 6
