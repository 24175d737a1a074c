"""JobSchedules against a real kube-apiserver and a real Postgres: the operator (as its deploy/
ServiceAccount, so the RBAC is tested too) writes each into its JobQueue's database with its
first fire time, reports it in the status, removes the row of a deleted one (also one deleted
while the operator was down), and says what is wrong with a bad one without leaking the
database URL. The CRD's own rules reject what they can at admission."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from skiplock.cron import Cadence
from skiplock_operator.resources import GROUP, VERSION
from tests.conftest import ROOT
from tests.integration.operator.conftest import Cluster
from tests.integration.operator.envtest import OperatorThread, load_yaml_docs
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow
Sql = Callable[..., list[tuple[Any, ...]]]
PLURAL = "jobschedules"
PASSWORD = "pw-Sched-7c1"


@pytest.fixture(scope="module")
def jobschedule_crd(admin: client.ApiClient) -> Iterator[None]:
    """The JobSchedule CRD: the second document of deploy/00-crd.yaml (the conftest installs
    the first, the JobQueue's)."""
    ext = client.ApiextensionsV1Api(admin)
    crd = next(d for d in load_yaml_docs(ROOT / "deploy" / "00-crd.yaml")
               if d["spec"]["names"]["kind"] == "JobSchedule")
    try:
        ext.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    wait_until(lambda: any(
        c.type == "Established" and c.status == "True"
        for c in (ext.read_custom_resource_definition(crd["metadata"]["name"]).status
                  .conditions or [])), 30, "JobSchedule CRD established")
    yield


def jobqueue_spec() -> dict[str, Any]:
    return {"queues": ["reports", "default"], "database": {"urlSecretRef": {"name": "db"}},
            "worker": {"image": "skiplock/worker:test"},
            "scaling": {"pollIntervalSeconds": 1, "scheduleLeadSeconds": 120}}


def create(cluster: Cluster, name: str, **spec: Any) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "JobSchedule",
            "metadata": {"name": name, "namespace": cluster.ns}, "spec": spec}
    return cluster.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, cluster.ns, PLURAL, body)


def get(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, cluster.ns, PLURAL, name)


def ready(cluster: Cluster, name: str) -> dict[str, Any] | None:
    for c in (get(cluster, name).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return dict(c)
    return None


def row(sql: Sql, name: str) -> tuple[Any, ...] | None:
    rows = sql("SELECT task, queue, cron, every_seconds, timezone, args, source, next_fire_at, "
               "missed, backfill_limit, paused FROM schedules WHERE name = %s", name)
    return rows[0] if rows else None


def test_jobschedules_are_written_reported_and_removed(
        cluster: Cluster, jobschedule_crd: None, start_operator: Callable[[], OperatorThread],
        database_url: str, sql: Sql) -> None:
    cluster.secret("db", database_url.replace("postgres@", f"postgres:{PASSWORD}@"))
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "jobqueues", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "JobQueue",
        "metadata": {"name": "reports", "namespace": cluster.ns}, "spec": jobqueue_spec()})
    operator = start_operator()
    create(cluster, "nightly", jobQueueRef="reports", task="report", queue="reports",
           cron="30 2 * * *", timezone="Europe/Berlin", args={"kind": "daily"},
           missed="backfill", backfill=3)
    create(cluster, "often", jobQueueRef="reports", task="tick", everySeconds=30)
    name = f"{cluster.ns}/nightly"
    wait_until(lambda: (ready(cluster, "nightly") or {}).get("status") == "True", 30,
               "nightly Ready", interval=0.2)
    task, queue, cron, every, tz, args, source, next_fire_at, missed, backfill, paused = (
        row(sql, name) or ())
    assert (task, queue, cron, every, tz, args, source, missed, backfill, paused) == (
        "report", "reports", "30 2 * * *", None, "Europe/Berlin", {"kind": "daily"},
        f"crd:{cluster.ns}/nightly", "backfill", 3, False)
    # the first fire time: the next 02:30 in Berlin after the database's now()
    now = sql("SELECT now()")[0][0]
    expected = Cadence(cron="30 2 * * *", timezone="Europe/Berlin").next_after(now)
    assert next_fire_at == expected
    assert next_fire_at.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "02:30"
    status = get(cluster, "nightly")["status"]
    assert status["schedule"] == name and status["queue"] == "reports"
    assert dt.datetime.fromisoformat(status["nextFireTime"]) == expected
    assert status["observedGeneration"] == get(cluster, "nightly")["metadata"]["generation"]
    wait_until(lambda: row(sql, f"{cluster.ns}/often") is not None, 30, "often written")
    assert row(sql, f"{cluster.ns}/often")[1] == "reports"  # type: ignore[index]  # the JobQueue's first

    # a new cadence moves the fire time; the same cadence rewritten keeps it
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "nightly",
                                                  {"spec": {"cron": "0 4 * * *"}})
    later = Cadence(cron="0 4 * * *", timezone="Europe/Berlin").next_after(now)
    wait_until(lambda: (row(sql, name) or ())[7] == later, 30, "the new fire time")
    sql("UPDATE schedules SET next_fire_at = next_fire_at + interval '1 day' WHERE name = %s",
        name)
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "nightly",
                                                  {"spec": {"args": {"kind": "v2"}}})
    wait_until(lambda: (row(sql, name) or ())[5] == {"kind": "v2"}, 30, "the new args")
    assert (row(sql, name) or ())[7] == later + dt.timedelta(days=1)

    # bad ones: what is wrong, in the status; nothing in the database
    create(cluster, "mars", jobQueueRef="reports", task="t", cron="0 * * * *",
           timezone="Mars/Olympus_Mons")
    create(cluster, "orphan", jobQueueRef="nope", task="t", everySeconds=60)
    create(cluster, "elsewhere", jobQueueRef="reports", task="t", everySeconds=60,
           queue="billing")
    sql("INSERT INTO schedules (name, task, queue, every_seconds, source) "
        "VALUES (%s, 't', 'reports', 60, 'app')", f"{cluster.ns}/taken")
    create(cluster, "taken", jobQueueRef="reports", task="t", everySeconds=60)
    for cr, reason, words in (("mars", "InvalidSpec", "not a known IANA time zone"),
                              ("orphan", "JobQueueNotFound", "does not exist"),
                              ("elsewhere", "InvalidSpec", "is not one of"),
                              ("taken", "NameTaken", "belongs to app")):
        c = wait_until(lambda cr=cr: (ready(cluster, cr) or {}).get("reason") and ready(
            cluster, cr), 30, f"{cr} status")
        assert (c["status"], c["reason"]) == ("False", reason), (cr, c)
        assert words in c["message"], (cr, c)
    assert row(sql, f"{cluster.ns}/mars") is None and row(sql, f"{cluster.ns}/orphan") is None
    assert row(sql, f"{cluster.ns}/taken")[6] == "app"  # type: ignore[index]
    everything = json.dumps(cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, PLURAL)) + json.dumps([e.message for e in cluster.events()])
    assert PASSWORD not in everything

    # deleted: its row goes
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "often")
    wait_until(lambda: row(sql, f"{cluster.ns}/often") is None, 30, "often removed")
    # deleted while the operator is down (no finalizer held it): removed after the restart
    operator.stop()
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "nightly")
    time.sleep(0.5)
    assert row(sql, name) is not None
    start_operator()
    wait_until(lambda: row(sql, name) is None, 30, "nightly removed after the restart")
    # the app schedule of that name was never the operator's to remove
    assert row(sql, f"{cluster.ns}/taken") is not None


@pytest.mark.parametrize(("spec", "words"), [
    ({"cron": "0 * * * *", "everySeconds": 5}, "exactly one of cron and everySeconds"),
    ({}, "exactly one of cron and everySeconds"),
    ({"everySeconds": 5, "missed": "backfill"}, "backfill needs backfill of 1 or more"),
    ({"everySeconds": 0}, "everySeconds"),
    ({"everySeconds": 5, "missed": "sometimes"}, "missed"),
    ({"everySeconds": 5, "queue": "bad queue"}, "queue"),
])
def test_the_crd_rejects_bad_specs(cluster: Cluster, jobschedule_crd: None,
                                   spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ApiException) as info:
        create(cluster, "bad", jobQueueRef="q", task="t", **spec)
    assert info.value.status == 422 and words in str(info.value.body), info.value.body


def test_one_bad_database_or_row_is_that_jobschedules_problem_only(
        cluster: Cluster, jobschedule_crd: None, start_operator: Callable[[], OperatorThread],
        database_url: str, sql: Sql) -> None:
    """A review's findings, against the real thing: a JobQueue whose URL is malformed, a row
    the database refuses, args that do not fit the registered task and an over-long name each
    fail their own JobSchedule only; a second JobQueue on the same database with another
    connect timeout is the same database (it must not sweep the first one's rows)."""
    cluster.secret("db", database_url.replace("postgres@", f"postgres:{PASSWORD}@"))
    cluster.secret("broken", "postgresql://%zz@nowhere/x")
    for name, timeout, secret in (("first", 5, "db"), ("second", 7, "db"),
                                  ("garbled", 5, "broken")):
        spec = jobqueue_spec()
        spec["database"] = {"urlSecretRef": {"name": secret}, "connectTimeoutSeconds": timeout}
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, cluster.ns, "jobqueues", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "JobQueue",
            "metadata": {"name": name, "namespace": cluster.ns}, "spec": spec})
    # the database refuses this one row (a constraint added here, standing in for whatever a
    # check in Python misses); a task a worker registered, with its parameters
    sql("ALTER TABLE schedules ADD CONSTRAINT test_refuses CHECK (task <> 'refused')")
    sql("INSERT INTO tasks (name, params, max_attempts, queue) VALUES ('report', "
        "'{\"params\": [{\"name\": \"day\", \"required\": true, \"types\": [\"string\"]}], "
        "\"var_keyword\": false}', 5, 'reports')")
    start_operator()
    create(cluster, "garbled-one", jobQueueRef="garbled", task="t", everySeconds=60)
    create(cluster, "refused", jobQueueRef="first", task="refused", everySeconds=60)
    create(cluster, "misfit", jobQueueRef="first", task="report", everySeconds=60,
           args={"day": 3})
    create(cluster, "x" * (257 - len(cluster.ns)), jobQueueRef="first", task="t",
           everySeconds=60)
    create(cluster, "kept", jobQueueRef="first", task="report", everySeconds=60,
           args={"day": "mon"})
    kept = f"{cluster.ns}/kept"
    wait_until(lambda: (ready(cluster, "kept") or {}).get("status") == "True", 30,
               "kept Ready", interval=0.2)
    for cr, reason, words in (("garbled-one", "ConfigurationError", "malformed"),
                              ("refused", "InvalidSpec", "refused"),
                              ("misfit", "InvalidSpec", "'day' must be string"),
                              ("x" * (257 - len(cluster.ns)), "InvalidSpec", "shorter name")):
        c = wait_until(lambda cr=cr: (ready(cluster, cr) or {}).get("reason") and ready(
            cluster, cr), 30, f"{cr} status")
        assert c["status"] == "False" and words in c["message"], (cr, c)
        if reason != "ConfigurationError":
            assert c["reason"] == reason, (cr, c)
    assert row(sql, f"{cluster.ns}/refused") is None and row(sql, f"{cluster.ns}/misfit") is None
    # a due firing held by the row: a sweep by `second` would delete it and the rewrite
    # would compute a new one
    marker = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    sql("UPDATE schedules SET next_fire_at = %s WHERE name = %s", marker, kept)
    create(cluster, "probe", jobQueueRef="second", task="t", everySeconds=60)
    wait_until(lambda: (ready(cluster, "probe") or {}).get("status") == "True", 30,
               "probe Ready (a pass wrote `second`'s database)", interval=0.2)
    # and one more full pass after it
    generation = sql("SELECT max(updated_at) FROM schedules")[0][0]
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, cluster.ns, PLURAL, "probe",
                                                  {"spec": {"args": {"n": 1}}})
    wait_until(lambda: sql("SELECT max(updated_at) FROM schedules")[0][0] != generation, 30,
               "another pass")
    assert (row(sql, kept) or ())[7] == marker
    everything = json.dumps(cluster.custom.list_namespaced_custom_object(
        GROUP, VERSION, cluster.ns, PLURAL))
    assert PASSWORD not in everything
    # the JobQueues go: the operator's connection to their database is closed, not cached
    def connections() -> int:
        return int(sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                       " AND application_name = 'skiplock-operator-schedules'")[0][0])

    assert connections() >= 1
    for name in ("first", "second"):
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.ns, "jobqueues",
                                                       name)
    wait_until(lambda: connections() == 0, 30, "the operator's connection closed")
