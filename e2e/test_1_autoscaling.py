"""Autoscaling: a backlog scales workers from min to max; drained, back to min after the window."""

from __future__ import annotations

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import Env
from e2e.support import Timeline, enqueue, log, step, wait_for

pytestmark = pytest.mark.timeout(900)


def test_scales_up_on_backlog_and_back_down_after_the_window(env: Env) -> None:
    queue = env.unique("e2e-autoscale")
    name = env.jobqueue(queue, min_replicas=1, max_replicas=4, jobs_per_replica=20,
                        concurrency=5, stabilization=20, poll=2)
    deployment = f"{name}-worker"
    with step("min replicas ready"):
        wait_for(lambda: env.ready_replicas(deployment) == 1, 240, "1 ready worker")
    with Timeline(env.kubectl, env.db, env.namespace, deployment, queue) as timeline:
        with step("enqueue 2000 jobs of 0.3 s"):
            enqueue(env.db, queue, "slow", {"seconds": 0.3}, 2000)
        with step("scale to max"):
            wait_for(lambda: env.desired_replicas(deployment) == 4, 120, "4 desired replicas")
            wait_for(lambda: env.ready_replicas(deployment) == 4, 300, "4 ready workers")
        with step("drain"):
            wait_for(lambda: env.db.counts(queue).get("succeeded", 0) == 2000, 600,
                     "2000 jobs succeeded")
        with step("scale back to min after the stabilization window"):
            wait_for(lambda: env.desired_replicas(deployment) == 1, 180, "1 desired replica")
    png = timeline.save("autoscaling", "JobQueue e2e-autoscale: 2000 jobs, 1..4 workers")
    log(f"timeline plot: {png}")
    peak = max(r["replicas"] for r in timeline.rows)
    assert peak == 4, f"never reached max replicas: {timeline.rows}"
    # Scale-down waited for the stabilization window (20 s), counted from when the work first
    # fell to what fewer replicas can hold (the recommendation drops there, before the queue is
    # fully idle). That moment lies after the last sample that still needed the peak, so the
    # first sample with fewer replicas is about 20 s after that sample. The operator reads the
    # backlog on its own 2 s poll, not at our sampling instants: its last reading that needed the
    # peak can precede our last such sample by up to one poll (CI saw 18.7 s), so the bound is
    # the window less one poll and half a second of sampling skew.
    peaked = next(i for i, r in enumerate(timeline.rows) if r["replicas"] == peak)
    rows = timeline.rows[peaked:]
    needed_peak = max(r["t"] for r in rows
                      if r["backlog"] + r["in_flight"] > (peak - 1) * 20)
    lowered = next(r["t"] for r in rows if r["replicas"] < peak)
    assert lowered - needed_peak >= 20 - 2 - 0.5, (
        f"scaled down {lowered - needed_peak:.1f}s after the last sample that needed {peak} "
        f"replicas (window 20s): {timeline.rows}")
    assert_invariants(env.db.query, queue=queue, expected_jobs=2000)
    status = env.jobqueue_status(name)
    assert status.get("backlog") == 0 and status.get("stuck") == 0, status
