"""A JobQueue at zero replicas and a JobSchedule on its queue: the operator starts a worker
scheduleLeadSeconds before the firing (not earlier), the worker is ready when it comes, and
the firing is enqueued once and runs on time."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterator

import pytest
from tests.support.waits import first_times

from e2e.conftest import Env
from e2e.support import log, wait_for

pytestmark = pytest.mark.timeout(420)
LEAD = 30.0
# how far ahead the first firing is placed: past the lead, so the scale-up is the schedule's
AHEAD = (45.0, 60.0)


def interval_firing_in(now: float, low: float, high: float) -> tuple[int, float]:
    """An everySeconds whose next epoch-aligned firing after ``now`` is between ``low`` and
    ``high`` seconds away, and that firing (Unix time)."""
    for every in range(int(high) + 1, 3600):
        fire = math.ceil(now / every) * every
        if low <= fire - now <= high:
            return every, float(fire)
    raise AssertionError("no interval found")  # cannot happen: every = high+1.. covers it


@pytest.fixture
def schedules(env: Env) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        env.kubectl("-n", env.namespace, "delete", "jobschedule", name, "--ignore-not-found",
                    check=False)


def test_a_worker_is_ready_before_the_firing(env: Env, schedules: list[str]) -> None:
    queue = env.unique("e2e-sched")
    name = env.jobqueue(queue, min_replicas=0, max_replicas=2, concurrency=2, poll=2,
                        scaling={"scheduleLeadSeconds": LEAD})
    deployment = f"{name}-worker"
    wait_for(lambda: env.deployment(deployment)["spec"].get("replicas", 0) == 0, 120,
             "the worker Deployment at 0 replicas")

    every, fire = interval_firing_in(time.time(), *AHEAD)
    schedule = f"{queue}-every"
    env.kubectl.apply(json.dumps({
        "apiVersion": "skiplock.dev/v1alpha1", "kind": "JobSchedule",
        "metadata": {"name": schedule, "namespace": env.namespace},
        "spec": {"jobQueueRef": name, "task": "fast", "queue": queue, "everySeconds": every,
                 "args": {"n": 7}},
    }))
    schedules.append(schedule)
    status = wait_for(lambda: (s := env.kubectl.json(
        "-n", env.namespace, "get", "jobschedule", schedule).get("status", {})).get(
            "nextFireTime") and s, 60, "the JobSchedule's status with its next firing")
    assert abs(_unix(status["nextFireTime"]) - fire) < 1, (status, fire)

    wall0, mono0 = time.time(), time.monotonic()
    took = first_times({
        "scaled": lambda: env.desired_replicas(deployment) >= 1,
        "ready": lambda: env.ready_replicas(deployment) >= 1,
        "enqueued": lambda: env.db.query("SELECT count(*) FROM jobs WHERE queue = %s",
                                         queue)[0][0] >= 1,
        "succeeded": lambda: env.db.counts(queue).get("succeeded", 0) >= 1,
    }, AHEAD[1] + 90, since=mono0)
    at = {k: wall0 + v for k, v in took.items()}  # Unix times (this machine's clock)
    log(f"schedule lead: firing at {time.strftime('%H:%M:%S', time.gmtime(fire))}; scaled "
        f"{fire - at['scaled']:.1f}s before it, worker ready {fire - at['ready']:.1f}s before "
        f"it (lead {LEAD:g}s); succeeded {at['succeeded'] - fire:.1f}s after it")
    # the schedule, not the (empty) queue, scaled it: not before the lead time
    assert at["scaled"] >= fire - LEAD - 5, f"scaled {fire - at['scaled']:.1f}s ahead"
    assert at["ready"] < fire, f"the worker was ready {at['ready'] - fire:.1f}s after the firing"

    rows = env.db.query(
        "SELECT task, args, extract(epoch FROM run_at)::float8, "
        "extract(epoch FROM started_at - run_at)::float8, state::text FROM jobs "
        "WHERE queue = %s", queue)
    assert len(rows) == 1, f"one firing, one job: {rows}"
    task, args, run_at, waited, state = rows[0]
    assert (task, args, state) == ("fast", {"n": 7}, "succeeded")
    assert abs(run_at - fire) < 1, f"the job's run_at {run_at} is not the firing {fire}"
    log(f"the firing's job started {waited:.2f}s after its fire time (database clock)")


def _unix(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
