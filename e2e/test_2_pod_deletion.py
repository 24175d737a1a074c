"""Delete worker pods mid-job, repeatedly and at random: every job finishes, each result once,
and jobs of a killed worker come back within the lease."""

from __future__ import annotations

import random
import time

import pytest

from e2e.conftest import Env
from e2e.support import enqueue, log, step, wait_for

pytestmark = pytest.mark.timeout(900)
LEASE = 6
JOBS = 300


def busy_pod(env: Env, queue: str, rng: random.Random, gone: set[str]
             ) -> tuple[str, list[int]] | None:
    """A live worker running jobs right now: its pod and those jobs (from their leases).

    Worker ids are unique per process start, so a killed worker's still-unexpired leases are
    told apart from the restarted container in the same pod.
    """
    rows = env.db.query("SELECT locked_by, array_agg(id) FROM jobs WHERE queue=%s AND "
                        "state='running' AND locked_until > now() GROUP BY 1", queue)
    rows = [r for r in rows if r[0] not in gone]
    if not rows:
        return None
    worker_id, ids = rng.choice(rows)
    gone.add(worker_id)
    return str(worker_id).split(":")[0], list(ids)


def test_deleting_workers_mid_job_loses_nothing(env: Env) -> None:
    queue = env.unique("e2e-podkill")
    name = env.jobqueue(queue, min_replicas=3, max_replicas=3, concurrency=4, lease=LEASE,
                        grace=5, poll=2)
    deployment = f"{name}-worker"
    wait_for(lambda: env.ready_replicas(deployment) == 3, 240, "3 ready workers")
    enqueue(env.db, queue, "slow", {"seconds": 1.5}, JOBS)
    rng = random.Random(7)
    killed: list[tuple[str, list[int], object]] = []
    gone: set[str] = set()
    with step("6 times: a busy worker pod is SIGKILLed or deleted at random"):
        for i in range(6):
            pod, ids = wait_for(lambda: busy_pod(env, queue, rng, gone), 120, "a busy worker")
            (db_now,), = env.db.query("SELECT now()")
            if i % 2 == 0:
                env.sigkill_pod(pod)  # a crash: no SIGTERM, no drain, the lease must expire
                killed.append((pod, ids, db_now))
                log(f"SIGKILLed {pod} while it ran jobs {ids}")
            else:
                env.kubectl("-n", env.namespace, "delete", "pod", pod, "--wait=false")
                log(f"deleted {pod} (SIGTERM: drains within its grace period)")
            time.sleep(rng.uniform(2, 4))
    with step(f"all {JOBS} jobs finish"):
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == JOBS, 600,
                 f"{JOBS} succeeded")
    env.db.assert_invariants(queue, JOBS)
    for pod, ids, at in killed:
        rows = env.db.query(
            "SELECT id, attempts, extract(epoch FROM started_at - %s) FROM jobs WHERE id = ANY(%s)",
            at, ids)
        for job_id, attempts, restarted_after in rows:
            assert attempts >= 2, f"job {job_id} of SIGKILLed {pod} was not re-run"
            # re-claimed within the lease plus one rescue/poll round and pod start-up slack
            assert float(restarted_after) <= LEASE + 15, (
                f"job {job_id} restarted {float(restarted_after):.1f}s after the kill")
        log(f"{pod}: {len(rows)} job(s) re-run, the last "
            f"{max(float(r[2]) for r in rows):.1f}s after the SIGKILL (lease {LEASE}s)")
