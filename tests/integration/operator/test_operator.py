"""The operator against a real kube-apiserver + etcd and a real Postgres.

No kubelet runs, so no worker executes a job: tests move jobs through their states with SQL
and assert on what the operator writes (Deployment spec.replicas, status, events, pod marks).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import generate_latest

from skiplock_operator.resources import GROUP, PLURAL, VERSION
from tests.integration.operator.conftest import Cluster
from tests.integration.operator.envtest import EnvTest, OperatorThread
from tests.support.pgserver import PgServer
from tests.support.waits import holds, wait_until

pytestmark = pytest.mark.slow
Sql = Callable[..., list[tuple[object, ...]]]
PASSWORD = "pw-Secret-9f3"


def url_with_password(database_url: str) -> str:
    # The test server trusts local connections, so the password is never checked, but it is
    # in the URL: the tests can then prove it leaks into no status, event or message.
    return database_url.replace("postgres@", f"postgres:{PASSWORD}@")


def spec(**scaling: Any) -> dict[str, Any]:
    return {
        "queues": ["default"],
        "database": {"urlSecretRef": {"name": "db"}},
        "worker": {"image": "skiplock/worker:test", "concurrency": 5,
                   "shutdownGracePeriodSeconds": 20},
        "scaling": {"pollIntervalSeconds": 1, "jobsPerReplica": 50, "maxReplicas": 20,
                    "scaleUp": {"pods": 4, "percent": 100, "periodSeconds": 1},
                    "scaleDownStabilizationSeconds": 4, **scaling},
    }


def enqueue(sql: Sql, n: int, queue: str = "default") -> None:
    sql("INSERT INTO jobs (queue, task) SELECT %s, 'noop' FROM generate_series(1, %s)", queue, n)


def no_secret_in(cluster: Cluster, name: str) -> None:
    text = json.dumps(cluster.jobqueue(name)) + json.dumps(
        [e.message for e in cluster.events()])
    assert PASSWORD not in text


def test_creates_owned_deployment_with_status(cluster: Cluster, operator: OperatorThread,
                                              database_url: str, envtest: EnvTest) -> None:
    cluster.secret("db", url_with_password(database_url))
    jq = cluster.create_jobqueue("emails", **spec(minReplicas=1))
    dep = wait_until(lambda: cluster.deployment("emails-worker"), 30,
                     message="Deployment emails-worker")
    owner = dep.metadata.owner_references[0]  # type: ignore[attr-defined]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == (
        "JobQueue", "emails", jq["metadata"]["uid"], True)
    assert dep.metadata.labels["app.kubernetes.io/managed-by"] == "skiplock-operator"  # type: ignore[attr-defined]
    assert dep.spec.replicas == 1  # type: ignore[attr-defined]
    env = {e.name: e for e in dep.spec.template.spec.containers[0].env}  # type: ignore[attr-defined]
    assert env["SKIPLOCK_DATABASE_URL"].value_from.secret_key_ref.name == "db"
    assert env["SKIPLOCK_DATABASE_URL"].value is None

    def ready() -> Any:
        c = cluster.condition("emails", "Ready")
        return c if c and c["status"] == "True" else None

    wait_until(ready, 30, message="Ready=True", interval=0.2)
    status = cluster.status("emails")
    assert status["observedGeneration"] == cluster.jobqueue("emails")["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {"Ready", "DatabaseReachable", "Scaling",
                                                         "Active", "Fallback", "Paused"}
    assert status["paused"] is False
    assert status["backlog"] == 0 and status["inFlight"] == 0 and status["desiredReplicas"] == 1
    # printer columns: what `kubectl get jq` shows
    table = json.loads(envtest.get_raw(
        f"/apis/skiplock.dev/v1alpha1/namespaces/{cluster.ns}/jobqueues",
        accept="application/json;as=Table;v=v1;g=meta.k8s.io"))
    columns = [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0]
    assert columns == ["Name", "Queues", "Backlog", "In-Flight", "Desired", "Replicas",
                       "Available", "Ready", "Paused", "Age"]
    # no controller-manager: the Deployment reports no pods, and status says so
    cells = dict(zip([c["name"] for c in table["columnDefinitions"]], table["rows"][0]["cells"],
                     strict=True))
    assert [cells[c] for c in columns[1:-1]] == ["default", 0, 0, 1, 0, 0, "True", "False"]
    assert cells["On-Limit"] == 0  # a wide column (-o wide): jobs a limit holds back
    no_secret_in(cluster, "emails")

    # liveness endpoint (kopf's, with our probe) and Prometheus metrics
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz",
                                timeout=5) as resp:
        assert resp.status == 200
        answer = json.loads(resp.read())["jobqueues"]
        assert answer["count"] >= 1 and answer["leader"] is True
    metrics = generate_latest().decode()
    assert f'skiplock_operator_desired_replicas{{jobqueue="emails",namespace="{cluster.ns}"}} 1.0' \
        in metrics
    assert f'skiplock_operator_database_up{{jobqueue="emails",namespace="{cluster.ns}"}} 1.0' \
        in metrics


def test_scales_on_backlog_then_down_idle_first(cluster: Cluster, operator: OperatorThread,
                                                database_url: str, sql: Sql) -> None:
    cluster.secret("db", url_with_password(database_url))
    cluster.create_jobqueue("bulk", **spec())
    wait_until(lambda: cluster.replicas("bulk-worker") == 0 and cluster.status("bulk").get(
        "backlog") == 0, 30, message="Deployment at 0 replicas, status read", interval=0.2)

    enqueue(sql, 500)
    # ceil(500 / 50) = 10, reached through the rate limit (+4, then +100 %)
    wait_until(lambda: cluster.replicas("bulk-worker") == 10, 30,
               message="10 replicas for 500 jobs", interval=0.2)
    ups = [e.message for e in cluster.events("ScaledUp")]
    assert ups[0].startswith("0 -> 4:") and "backlog=500" in ups[0], ups
    assert "inFlight=0" in ups[0] and "jobsPerReplica=50" in ups[0]
    assert cluster.status("bulk")["backlog"] == 500

    # Three "worker pods" (no kubelet: they stay Pending); only w-b runs jobs.
    labels = {"app.kubernetes.io/name": "skiplock-worker", "app.kubernetes.io/instance": "bulk"}
    for pod in ("w-a", "w-b", "w-c"):
        cluster.pod(pod, labels)
    sql("""UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w-b:7:abc123',
                          locked_until = now() + interval '1 hour', started_at = now()
           WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 20)""")
    sql("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE state = 'queued'")
    drained = time.monotonic()
    # in-flight jobs still count: 20 running -> 1 replica, but only after the 4 s window
    holds(lambda: cluster.replicas("bulk-worker") == 10, 2.5,
          "10 replicas within the stabilization window")
    wait_until(lambda: cluster.replicas("bulk-worker") == 1, 30,
               message="scale down to 1 replica", interval=0.2)
    assert time.monotonic() - drained >= 3.0
    assert cluster.pod_annotations("w-b")["controller.kubernetes.io/pod-deletion-cost"] == "20"
    for idle in ("w-a", "w-c"):
        assert cluster.pod_annotations(idle)["controller.kubernetes.io/pod-deletion-cost"] == "0"
    downs = [e.message for e in cluster.events("ScaledDown")]
    assert downs and downs[0].startswith("10 -> 1:") and "inFlight=20" in downs[0], downs
    status = cluster.status("bulk")
    assert (status["inFlight"], status["backlog"]) == (20, 0)
    assert status["lastScaleTime"]

    # a stuck job (expired lease) is backlog: its worker is gone, someone must pick it up
    sql("UPDATE jobs SET locked_until = now() - interval '1 minute' WHERE state = 'running'")
    wait_until(lambda: cluster.status("bulk").get("stuck") == 20, 15,
               message="20 stuck jobs in status", interval=0.2)
    assert cluster.status("bulk")["backlog"] == 20

    sql("UPDATE jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
        "locked_until = NULL WHERE state = 'running'")
    wait_until(lambda: cluster.replicas("bulk-worker") == 0, 30,
               message="scale to zero once nothing is left", interval=0.2)


def test_database_outage_holds_replicas_and_recovers(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql,
        pg: PgServer) -> None:
    cluster.secret("db", url_with_password(database_url))
    cluster.create_jobqueue("flaky", **spec(scaleDownStabilizationSeconds=1))
    enqueue(sql, 150)
    wait_until(lambda: cluster.replicas("flaky-worker") == 3, 30,
               message="3 replicas for 150 jobs", interval=0.2)
    pg.stop()
    try:
        def unreachable() -> Any:
            c = cluster.condition("flaky", "DatabaseReachable")
            return c if c and c["status"] == "False" else None

        cond = wait_until(unreachable, 40, message="DatabaseReachable=False", interval=0.2)
        assert cond["reason"] == "DatabaseUnavailable", cond  # type: ignore[index]
        assert "unreachable" in cond["message"], cond  # type: ignore[index]
        assert cluster.condition("flaky", "Ready")["status"] == "False"  # type: ignore[index]
        warnings = [e for e in cluster.events("DatabaseUnavailable") if e.type == "Warning"]
        assert warnings, "no Warning event for the outage"
        # held, never dropped (the window is 1 s: a missing number must not look like zero)
        holds(lambda: cluster.replicas("flaky-worker") == 3, 3, "3 replicas during the outage")
        no_secret_in(cluster, "flaky")
    finally:
        pg.start()

    def reachable() -> Any:
        c = cluster.condition("flaky", "DatabaseReachable")
        return c if c and c["status"] == "True" else None

    wait_until(reachable, 40, message="DatabaseReachable=True after restart", interval=0.2)
    wait_until(lambda: (cluster.condition("flaky", "Ready") or {}).get("status") == "True", 20,
               message="Ready=True after restart", interval=0.2)
    assert cluster.replicas("flaky-worker") == 3


def test_deleted_deployment_is_recreated_at_its_size(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql) -> None:
    cluster.secret("db", database_url)
    cluster.create_jobqueue("phoenix", **spec())
    enqueue(sql, 200)
    wait_until(lambda: cluster.replicas("phoenix-worker") == 4, 30,
               message="4 replicas for 200 jobs", interval=0.2)
    old_uid = cluster.deployment("phoenix-worker").metadata.uid  # type: ignore[union-attr]
    cluster.apps.delete_namespaced_deployment("phoenix-worker", cluster.ns)

    def recreated() -> Any:
        dep = cluster.deployment("phoenix-worker")
        return dep if dep is not None and dep.metadata.uid != old_uid else None

    dep = wait_until(recreated, 30, message="a new Deployment", interval=0.2)
    assert dep.spec.replicas == 4  # type: ignore[attr-defined]
    assert [e for e in cluster.events("DeploymentCreated")][-1:]


def test_spec_changes_are_applied_without_touching_replicas(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql) -> None:
    cluster.secret("db", database_url)
    cluster.create_jobqueue("evolve", **spec())
    enqueue(sql, 100)
    wait_until(lambda: cluster.replicas("evolve-worker") == 2, 30,
               message="2 replicas for 100 jobs", interval=0.2)
    cluster.patch_jobqueue("evolve", {"spec": {"worker": {"image": "skiplock/worker:v2",
                                                          "concurrency": 7}}})

    def image() -> Any:
        dep = cluster.deployment("evolve-worker")
        return dep.spec.template.spec.containers[0].image if dep else None  # type: ignore[union-attr]

    wait_until(lambda: image() == "skiplock/worker:v2", 20, message="new image", interval=0.2)
    dep = cluster.deployment("evolve-worker")
    assert dep.spec.replicas == 2  # type: ignore[union-attr]
    assert "7" in dep.spec.template.spec.containers[0].args  # type: ignore[union-attr]
    wait_until(lambda: cluster.status("evolve").get("observedGeneration") == 2, 20,
               message="observedGeneration 2", interval=0.2)


def test_operator_restart_does_not_flap(
        cluster: Cluster, start_operator: Callable[[], OperatorThread], database_url: str,
        sql: Sql) -> None:
    cluster.secret("db", database_url)
    first = start_operator()
    cluster.create_jobqueue("steady", **spec(scaleDownStabilizationSeconds=20))
    enqueue(sql, 250)
    wait_until(lambda: cluster.replicas("steady-worker") == 5, 30,
               message="5 replicas for 250 jobs", interval=0.2)
    first.stop()
    # While it was down the queue drained: a restarted operator that forgot everything would
    # scale to zero at once; this one must wait a full window from its start.
    sql("UPDATE jobs SET state = 'succeeded', finished_at = now()")
    version = cluster.deployment("steady-worker").metadata.resource_version  # type: ignore[union-attr]
    downs = len(cluster.events("ScaledDown"))
    polled = cluster.status("steady")["lastPollTime"]
    start_operator()
    wait_until(lambda: cluster.status("steady").get("lastPollTime") != polled, 20,
               message="a poll by the restarted operator", interval=0.2)
    wait_until(lambda: cluster.status("steady").get("backlog") == 0, 20,
               message="restarted operator reads backlog 0", interval=0.2)
    holds(lambda: cluster.deployment("steady-worker").metadata.resource_version == version,  # type: ignore[union-attr]
          4, "the Deployment untouched after the restart")
    assert len(cluster.events("ScaledDown")) == downs
    scaling = cluster.condition("steady", "Scaling")
    assert scaling is not None and scaling["reason"] == "Stabilizing", scaling


def test_invalid_spec_rejected_with_clear_message(cluster: Cluster,
                                                  operator: OperatorThread) -> None:
    with pytest.raises(ApiException) as info:
        cluster.create_jobqueue("bad", **spec(minReplicas=5, maxReplicas=2))
    assert info.value.status == 422
    assert "minReplicas must be less than or equal to maxReplicas" in str(info.value.body)


def test_missing_secret_is_a_condition_then_recovers(
        cluster: Cluster, operator: OperatorThread, database_url: str) -> None:
    cluster.create_jobqueue("nosecret", **spec())

    def db_condition() -> Any:
        c = cluster.condition("nosecret", "DatabaseReachable")
        return c if c and c["status"] == "False" else None

    cond = wait_until(db_condition, 30, message="DatabaseReachable=False", interval=0.2)
    assert cond["reason"] == "SecretNotFound", cond  # type: ignore[index]
    assert f"Secret {cluster.ns}/db" in cond["message"], cond  # type: ignore[index]
    assert cluster.condition("nosecret", "Ready")["status"] == "False"  # type: ignore[index]
    cluster.secret("db", database_url)
    wait_until(lambda: (cluster.condition("nosecret", "Ready") or {}).get("status") == "True",
               30, message="Ready=True once the Secret exists", interval=0.2)


def test_paused_holds_replicas(cluster: Cluster, operator: OperatorThread, database_url: str,
                               sql: Sql) -> None:
    cluster.secret("db", database_url)
    cluster.create_jobqueue("frozen", **spec())
    enqueue(sql, 100)
    wait_until(lambda: cluster.replicas("frozen-worker") == 2, 30,
               message="2 replicas for 100 jobs", interval=0.2)
    cluster.patch_jobqueue("frozen", {"spec": {"scaling": {"paused": True}}})
    wait_until(lambda: (cluster.condition("frozen", "Scaling") or {}).get("reason") == "Paused",
               20, message="Scaling reason Paused", interval=0.2)
    enqueue(sql, 400)
    wait_until(lambda: cluster.status("frozen").get("backlog") == 500, 20,
               message="backlog 500 read while paused", interval=0.2)
    holds(lambda: cluster.replicas("frozen-worker") == 2, 3, "2 replicas while paused")
    cluster.patch_jobqueue("frozen", {"spec": {"scaling": {"paused": False}}})
    wait_until(lambda: cluster.replicas("frozen-worker") == 10, 30,
               message="10 replicas once resumed", interval=0.2)


def test_queues_paused_in_the_database(cluster: Cluster, operator: OperatorThread,
                                      database_url: str, sql: Sql, envtest: EnvTest) -> None:
    """skiplock queue pause on every queue of a JobQueue: status and `kubectl get jq` say
    Paused, nothing scales up for the waiting jobs, the pods of running jobs stay; resume
    clears it and scaling picks up the backlog again."""
    from skiplock import Client

    cluster.secret("db", database_url)
    body = spec(minReplicas=0)
    body["queues"] = ["default", "reports"]
    cluster.create_jobqueue("hushed", **body)
    enqueue(sql, 100)
    # 20 of them run (they go on running through the pause), 80 wait
    sql("""UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w:1:a',
                          locked_until = now() + interval '1 hour', started_at = now()
           WHERE id IN (SELECT id FROM jobs ORDER BY id LIMIT 20)""")
    wait_until(lambda: cluster.replicas("hushed-worker") == 2, 30,
               message="2 replicas for 100 jobs", interval=0.2)

    def condition() -> dict[str, Any]:
        return cluster.condition("hushed", "Paused") or {}

    with Client(database_url) as client:
        client.pause_queue("default", "one of two", by="test")
        wait_until(lambda: condition().get("reason") == "SomeQueuesPaused", 20,
                   message="QueuesPaused=False SomeQueuesPaused", interval=0.2)
        assert condition()["status"] == "False" and "1 of 2 queue(s) paused" in \
            condition()["message"]
        assert cluster.status("hushed")["paused"] is False

        client.pause_queue("reports", by="test")
        wait_until(lambda: condition().get("status") == "True", 20,
                   message="QueuesPaused=True", interval=0.2)
        c = condition()
        assert c["reason"] == "AllQueuesPaused", c
        assert "default since" in c["message"] and "by test: one of two" in c["message"], c
        status = cluster.status("hushed")
        assert (status["paused"], status["pausedQueues"]) == (True, "default,reports")
        table = json.loads(envtest.get_raw(
            f"/apis/skiplock.dev/v1alpha1/namespaces/{cluster.ns}/jobqueues",
            accept="application/json;as=Table;v=v1;g=meta.k8s.io"))
        names = [col["name"] for col in table["columnDefinitions"]]
        assert table["rows"][0]["cells"][names.index("Paused")] == "True"
        assert [e.message for e in cluster.events("QueuesPaused")], "no QueuesPaused event"

        # 400 more wait: nothing scales up for them.
        enqueue(sql, 400)
        wait_until(lambda: cluster.status("hushed").get("backlog") == 480, 20,
                   message="backlog 480 read while paused", interval=0.2)
        assert (cluster.condition("hushed", "Scaling") or {}).get("reason") in (
            "QueuesPaused", "ScaledDown")
        holds(lambda: (cluster.replicas("hushed-worker") or 0) <= 2, 2,
              "no scale-up while every queue is paused")
        # Past the 4 s window (already while only "default" was paused, whose waiting jobs
        # count for nothing either): down to what the running jobs need, ceil(20 / 50) = 1.
        wait_until(lambda: cluster.replicas("hushed-worker") == 1, 30,
                   message="1 replica for the running jobs", interval=0.2)
        downs = [e.message for e in cluster.events("ScaledDown")]
        assert len(downs) == 1 and downs[0].startswith("2 -> 1: backlog=0 inFlight=20"), downs
        scaling = wait_until(lambda: (c := cluster.condition("hushed", "Scaling")) and
                             c["reason"] == "QueuesPaused" and c, 20,
                             message="Scaling reason QueuesPaused", interval=0.2)
        assert scaling["message"].startswith("every queue is paused: waiting jobs not counted")

        # One queue open again, but it has no jobs: the paused one's still ask for nothing.
        assert client.resume_queue("reports")
        wait_until(lambda: condition().get("reason") == "SomeQueuesPaused", 20,
                   message="one queue resumed", interval=0.2)
        assert cluster.status("hushed")["paused"] is False
        assert [e.message for e in cluster.events("QueuesResumed")], "no QueuesResumed event"
        holds(lambda: cluster.replicas("hushed-worker") == 1, 2,
              "no scale-up for the jobs of the queue still paused")
        assert client.resume_queue("default")
    wait_until(lambda: condition().get("reason") == "NoQueuePaused", 20,
               message="QueuesPaused=False NoQueuePaused", interval=0.2)
    # ceil((480 + 20) / 50) = 10, through the rate limit
    wait_until(lambda: cluster.replicas("hushed-worker") == 10, 30,
               message="10 replicas once resumed", interval=0.2)
    assert cluster.status("hushed")["paused"] is False


def test_fallback_after_failed_reads(cluster: Cluster, operator: OperatorThread) -> None:
    from tests.support.pgserver import free_port

    # Nothing listens there: every read fails at once with "connection refused".
    cluster.secret("db", f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/none")
    cluster.create_jobqueue("blind", **spec(fallback={"failureThreshold": 2, "replicas": 3}))
    wait_until(lambda: cluster.replicas("blind-worker") == 3, 30,
               message="fallback replicas after 2 failed reads", interval=0.2)
    ups = [e.message for e in cluster.events("ScaledUp")]
    assert any("fallback after" in m for m in ups), ups
    assert (cluster.condition("blind", "DatabaseReachable") or {}).get("status") == "False"
    no_secret_in(cluster, "blind")


def test_no_connection_leak(cluster: Cluster, operator: OperatorThread, database_url: str,
                            pg: PgServer) -> None:
    """KEDA's Postgres scaler leaked connections (kedacore/keda #6554, #4011): ours stay at
    the pool size plus one LISTEN connection and are all closed when the JobQueue goes away."""
    import psycopg

    dbname = database_url.rsplit("/", 1)[1]

    def operator_connections() -> int:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                               "application_name LIKE 'skiplock-operator%%'", [dbname]).fetchone()
        return int(row[0]) if row else -1

    cluster.secret("db", database_url)
    cluster.create_jobqueue("tidy", **spec())
    wait_until(lambda: operator_connections() >= 1, 30, message="the operator's connection",
               interval=0.2)
    polled = cluster.status("tidy").get("lastPollTime")
    wait_until(lambda: cluster.status("tidy").get("lastPollTime") != polled, 10,
               message="more polls", interval=0.2)
    # the stats pool (at most 2) and the LISTEN connection
    holds(lambda: operator_connections() <= 3, 2, "at most 3 operator connections")
    cluster.custom.delete_namespaced_custom_object("skiplock.dev", "v1alpha1", cluster.ns,
                                                   "jobqueues", "tidy")
    wait_until(lambda: operator_connections() == 0, 30,
               message="no operator connection after the JobQueue is deleted", interval=0.2)


def test_rejected_pod_template_is_a_condition(cluster: Cluster, operator: OperatorThread,
                                              database_url: str, sql: Sql) -> None:
    """podTemplate is free-form (the CRD cannot check it): the API server's verdict on the
    Deployment becomes the condition; a later fix recovers; scaling goes on meanwhile."""
    cluster.secret("db", database_url)
    bad = {"metadata": {"labels": {"not a valid label!": "x"}}}
    body = spec()
    body["worker"]["podTemplate"] = bad
    cluster.create_jobqueue("picky", **body)

    def rejected() -> Any:
        c = cluster.condition("picky", "Ready")
        return c if c and c["reason"] == "DeploymentRejected" else None

    cond = wait_until(rejected, 30, message="Ready=False DeploymentRejected", interval=0.2)
    assert cond["status"] == "False" and "not a valid label!" in cond["message"], cond  # type: ignore[index]
    assert cluster.deployment("picky-worker") is None
    assert [e for e in cluster.events("DeploymentRejected") if e.type == "Warning"]

    cluster.patch_jobqueue("picky", {"spec": {"worker": {"podTemplate": None}}})
    wait_until(lambda: cluster.deployment("picky-worker") is not None, 30,
               message="Deployment once the template is fixed", interval=0.2)
    enqueue(sql, 100)
    wait_until(lambda: cluster.replicas("picky-worker") == 2, 30, message="2 replicas",
               interval=0.2)
    # a bad update is refused too, but the running Deployment keeps being scaled
    cluster.patch_jobqueue("picky", {"spec": {"worker": {"podTemplate": {
        "spec": {"containers": [{"name": "worker", "ports": [{"containerPort": 70000}]}]}}}}})
    wait_until(rejected, 30, message="Ready=False DeploymentRejected on update", interval=0.2)
    enqueue(sql, 100)
    wait_until(lambda: cluster.replicas("picky-worker") == 4, 30,
               message="still scaled while the update is refused", interval=0.2)


def test_new_jobs_wake_the_poll_for_fast_scale_from_zero(
        cluster: Cluster, operator: OperatorThread, database_url: str, sql: Sql) -> None:
    """With a 60 s poll interval, one inserted job still brings a worker within seconds: the
    insert trigger's NOTIFY wakes the operator (KEDA users wait a whole polling interval)."""
    cluster.secret("db", database_url)
    cluster.create_jobqueue("eager", **spec(pollIntervalSeconds=60))
    wait_until(lambda: cluster.status("eager").get("backlog") == 0, 30,
               message="first poll", interval=0.2)
    polled = cluster.status("eager")["lastPollTime"]
    # the listener connects after the first successful poll; wait for it to be there
    dbname = database_url.rsplit("/", 1)[1]
    wait_until(lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                           "application_name = 'skiplock-operator-listen'", dbname)[0][0] == 1,
               20, message="the LISTEN connection", interval=0.2)
    sql("INSERT INTO jobs (queue, task) VALUES ('other-queue', 'noop')")
    holds(lambda: cluster.replicas("eager-worker") == 0, 1.5,
          "no scale for another queue's job")
    started = time.monotonic()
    enqueue(sql, 1)
    wait_until(lambda: cluster.replicas("eager-worker") == 1, 15,
               message="1 replica within seconds of the insert", interval=0.1)
    assert time.monotonic() - started < 10
    # the status is written just after the scale call: wait for it rather than race it
    wait_until(lambda: cluster.status("eager")["lastPollTime"] != polled, 10,
               message="the woken poll's status", interval=0.1)


def test_foreign_deployment_is_never_taken_over(cluster: Cluster, operator: OperatorThread,
                                                database_url: str, sql: Sql) -> None:
    cluster.apps.create_namespaced_deployment(cluster.ns, {
        "metadata": {"name": "clash-worker"},
        "spec": {"replicas": 7, "selector": {"matchLabels": {"app": "mine"}},
                 "template": {"metadata": {"labels": {"app": "mine"}},
                              "spec": {"containers": [{"name": "c", "image": "mine:1"}]}}}})
    version = cluster.deployment("clash-worker").metadata.resource_version  # type: ignore[union-attr]
    cluster.secret("db", database_url)
    cluster.create_jobqueue("clash", **spec())
    enqueue(sql, 50)

    def conflict() -> Any:
        c = cluster.condition("clash", "Ready")
        return c if c and c["reason"] == "DeploymentConflict" else None

    cond = wait_until(conflict, 30, message="Ready=False DeploymentConflict", interval=0.2)
    assert "clash-worker exists and is not owned" in cond["message"], cond  # type: ignore[index]
    holds(lambda: cluster.deployment("clash-worker").metadata.resource_version == version,  # type: ignore[union-attr]
          2, "the foreign Deployment untouched")
    cluster.apps.delete_namespaced_deployment("clash-worker", cluster.ns)
    wait_until(lambda: cluster.replicas("clash-worker") == 1, 30,
               message="our own Deployment once the foreign one is gone", interval=0.2)


def test_no_finalizer_so_a_jobqueue_never_hangs_without_the_operator(
    cluster: Cluster, start_operator: Callable[[], OperatorThread], database_url: str
) -> None:
    """`kubectl delete -f deploy/` and `helm uninstall` can remove the operator before its
    JobQueues: with a finalizer on them they would hang in Terminating for ever. The operator
    puts none, and removes the one earlier versions put."""
    cluster.secret("db", database_url)
    op = start_operator()
    cluster.create_jobqueue("nofin", **spec(minReplicas=1))
    old = {"metadata": {"finalizers": ["skiplock.dev/operator", "example.com/someone-else"]}}
    cluster.create_jobqueue("oldfin", **spec(minReplicas=1))
    cluster.patch_jobqueue("oldfin", old)
    wait_until(lambda: cluster.deployment("nofin-worker"), 30, message="nofin's Deployment")
    wait_until(lambda: cluster.jobqueue("oldfin")["metadata"].get("finalizers")
               == ["example.com/someone-else"], 30,
               message="the old finalizer removed, the foreign one kept", interval=0.2)
    assert not cluster.jobqueue("nofin")["metadata"].get("finalizers")
    op.stop()
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "nofin")
    wait_until(lambda: _gone(cluster, "nofin"), 10, message="nofin deleted with no operator")
    cluster.patch_jobqueue("oldfin", {"metadata": {"finalizers": None}})


def _gone(cluster: Cluster, name: str) -> bool:
    try:
        cluster.jobqueue(name)
    except ApiException as exc:
        return exc.status == 404
    return False
