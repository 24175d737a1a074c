"""The operator and limits (and schedules) against a real kube-apiserver and Postgres: a
limited queue with a big backlog is not scaled past what its limits let run, and a JobQueue
at zero replicas gets a worker ahead of a schedule's firing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.integration.operator.conftest import Cluster
from tests.integration.operator.envtest import OperatorThread
from tests.integration.operator.test_operator import spec
from tests.support.waits import holds, wait_until

pytestmark = pytest.mark.slow
Sql = Callable[..., list[tuple[object, ...]]]


def test_a_limited_queue_with_a_big_backlog_is_not_scaled_past_the_cap(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql) -> None:
    # a task limited to 5 at once, as a worker registers it, and 10,000 of its jobs
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) VALUES "
        "('capped', '{}', 3, 'default', %s)", json.dumps({"concurrency_limit": 5}))
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'default', 'capped', '' FROM generate_series(1, 10000)")
    # 2 of them run (live leases): 3 more could start
    sql("""UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w:1:a',
                          locked_until = now() + interval '1 hour', started_at = now()
           WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 2)""")
    cluster.secret("db", database_url)
    # workers of concurrency 2: ceil(5 / 2) = 3 replicas (jobsPerReplica 1 would ask for 5);
    # counting the backlog (as KEDA would) asks for maxReplicas (20)
    capped = spec(jobsPerReplica=1)
    capped["worker"]["concurrency"] = 2
    cluster.create_jobqueue("capped", **capped)
    wait_until(lambda: cluster.replicas("capped-worker") == 3, 30,
               message="3 replicas: what a limit of 5 keeps busy", interval=0.2)
    holds(lambda: cluster.replicas("capped-worker") == 3, 3, "never past the cap")
    scaling = wait_until(lambda: (c := cluster.condition("capped", "Scaling")) and
                         c["reason"] == "Limited" and c, 15, "a Limited Scaling condition")
    # held back: the counts stop at the operator's count cap (a bound, as for the backlog)
    held = re.search(r"waitingOnLimit=(\d+)", scaling["message"])
    assert held and int(held[1]) >= 990, scaling
    assert "limitCapacity=5" in scaling["message"] and "limitCap=3" in scaling["message"]
    events = [e.message for e in cluster.events("Limited")]
    assert events and "limitCap=3" in events[0], events
    # the status keeps backlog = what can start now
    assert cluster.status("capped")["backlog"] == 3

    # the limit goes: the same backlog now asks for maxReplicas
    sql("UPDATE tasks SET limits = NULL")
    sql("UPDATE jobs SET concurrency_key = NULL")
    wait_until(lambda: cluster.replicas("capped-worker") == 20, 30,
               message="maxReplicas once nothing limits the backlog", interval=0.2)


def test_a_worker_comes_up_ahead_of_a_schedule(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql) -> None:
    cluster.secret("db", database_url)
    cluster.create_jobqueue("cron", **spec(scheduleLeadSeconds=60))
    wait_until(lambda: cluster.replicas("cron-worker") == 0
               and cluster.status("cron").get("backlog") == 0, 30,
               message="0 replicas with nothing to do", interval=0.2)
    # a paused schedule asks for nothing; one out of the lead time neither
    sql("INSERT INTO schedules (name, task, queue, every_seconds, source, next_fire_at, paused) "
        "VALUES ('later', 'noop', 'default', 3600, 'app', now() + interval '10 minutes', false),"
        " ('off', 'noop', 'default', 60, 'app', now() + interval '5 seconds', true)")
    holds(lambda: cluster.replicas("cron-worker") == 0, 3, "no replica for those")
    sql("UPDATE schedules SET next_fire_at = now() + interval '45 seconds' WHERE name = 'later'")
    wait_until(lambda: cluster.replicas("cron-worker") == 1, 30,
               message="a replica 45 s before the firing", interval=0.2)
    ups = [e.message for e in cluster.events("ScaledUp")]
    assert any("scheduleDueIn=" in m for m in ups), ups
