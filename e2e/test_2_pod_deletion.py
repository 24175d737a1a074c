"""Delete worker pods mid-job, repeatedly and at random: every job finishes, each result once,
and jobs of a killed worker come back within the lease."""

from __future__ import annotations

import random
import time

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import enqueue, log, step, wait_for

pytestmark = pytest.mark.timeout(900)
LEASE = 6
JOBS = 300


def busy_worker(env: Env, queue: str, rng: random.Random, gone: set[str]) -> str | None:
    """A live worker running jobs right now (its id, from the leases).

    Worker ids are unique per process start, so a killed worker's still-unexpired leases are
    told apart from the restarted container in the same pod.
    """
    rows = env.db.query("SELECT DISTINCT locked_by FROM jobs WHERE queue=%s AND "
                        "state='running' AND locked_until > now()", queue)
    ids = sorted(str(r[0]) for r in rows if r[0] not in gone)
    if not ids:
        return None
    worker_id = rng.choice(ids)
    gone.add(worker_id)
    return worker_id


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
            worker_id = wait_for(lambda: busy_worker(env, queue, rng, gone), 120, "a busy worker")
            pod = worker_id.split(":")[0]
            if i % 2 == 0:
                (db_now,), = env.db.query("SELECT now()")
                env.sigkill_pod(pod)  # a crash: no SIGTERM, no drain, the lease must expire
                # What the dead process still held: those jobs can only come back by lease expiry.
                ids = [r[0] for r in env.db.query(
                    "SELECT id FROM jobs WHERE locked_by=%s AND state='running'", worker_id)]
                killed.append((pod, ids, db_now))
                log(f"SIGKILLed {worker_id} while it ran jobs {ids}")
            else:
                env.kubectl("-n", env.namespace, "delete", "pod", pod, "--wait=false")
                log(f"deleted {pod} (SIGTERM: drains within its grace period)")
            time.sleep(rng.uniform(2, 4))
    with step(f"all {JOBS} jobs finish"):
        wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == JOBS, 600,
                 f"{JOBS} succeeded")
    assert_invariants(env.db.query, queue=queue, expected_jobs=JOBS)
    assert sum(len(ids) for _, ids, _ in killed) > 0, "no SIGKILL hit a running job"
    for pod, ids, at in killed:
        # When the rescuer re-queued each job (its errors entry), and when it started again.
        rows = env.db.query(
            "SELECT id, attempts,"
            " extract(epoch FROM (SELECT min((e->>'at')::timestamptz)"
            "                     FROM jsonb_array_elements(errors) e"
            "                     WHERE e->>'error' LIKE 'lease expired%%'"
            "                       AND (e->>'at')::timestamptz >= %s) - %s),"
            " extract(epoch FROM started_at - %s)"
            " FROM jobs WHERE id = ANY(%s)",
            at, at, at, ids)
        for job_id, attempts, rescued_after, restarted_after in rows:
            assert attempts >= 2, f"job {job_id} of SIGKILLed {pod} was not re-run"
            assert rescued_after is not None, f"job {job_id} of {pod} has no lease-expiry entry"
            # The promise: the lease runs out at most LEASE after the kill (it was renewed no
            # later than the kill), the rescuer looks every second; 5 s more for a loaded node.
            assert float(rescued_after) <= LEASE + 1 + 5, (
                f"job {job_id} re-queued {float(rescued_after):.1f}s after the kill")
            # Re-queued at the head of the queue, it starts when a slot frees. Capacity is what
            # varies here (the other pods may be restarting from this test's kills; CI once saw
            # 21 s from the kill), so this bound is loose: the job must not wait behind the queue.
            assert float(restarted_after) - float(rescued_after) <= 30, (
                f"job {job_id} restarted {float(restarted_after) - float(rescued_after):.1f}s "
                f"after it was re-queued")
        if rows:
            log(f"{pod}: {len(rows)} job(s) re-run; re-queued at most "
                f"{max(float(r[2]) for r in rows):.1f}s and restarted at most "
                f"{max(float(r[3]) for r in rows):.1f}s after the SIGKILL (lease {LEASE}s)")
