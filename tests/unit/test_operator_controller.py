"""The controller's phases against a fake Kube and canned stats: what it writes, when, and
how many API calls a poll costs."""

from __future__ import annotations

import copy
from typing import Any

from skiplock_operator import resources
from tests.unit.operator_fakes import (
    NS,
    UID,
    CannedController,
    Clock,
    FakeKube,
    body,
    controller,
    stats,
)


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def run(ctl: CannedController, b: dict[str, Any], leading: bool = True) -> dict[str, Any]:
    ctl.poll(b, leading)
    return b


def test_first_poll_creates_the_deployment_and_writes_the_status() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    ctl.canned = [stats(runnable=25)]
    ctl.poll(body(maxReplicas=10))
    dep = kube.deployments["jq-worker"]
    assert dep["metadata"]["ownerReferences"][0]["uid"] == UID
    # created at the minimum, then scaled by the decision in the same poll
    assert dep["spec"]["replicas"] == 3
    st = kube.statuses[-1]
    assert st["desiredReplicas"] == 3 and st["backlog"] == 25
    # actual replicas come from the Deployment's status (no pods yet): not what was asked
    assert st["replicas"] == 0 and st["readyReplicas"] == 0 and st["availableReplicas"] == 0
    c = conds(st)
    assert c["Ready"]["status"] == "True" and c["Active"]["status"] == "True"
    assert c["Fallback"]["reason"] == "NotConfigured" and c["Paused"]["status"] == "False"
    assert [e[1] for e in kube.events] == ["DeploymentCreated", "ScaledUp"]


def test_steady_polls_write_no_status_until_the_heartbeat() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock, status_heartbeat_seconds=60)
    ctl.canned = [stats(runnable=5)]
    b = body()
    ctl.poll(b)
    first = dict(kube.calls)
    clock.t += 1
    ctl.poll(b)  # "0 -> 1" becomes "holding 1": a change, written
    kube.calls.clear()
    writes = len(kube.statuses)
    for _ in range(10):
        clock.t += 1
        ctl.poll(b)
    # each steady poll: get the Secret, get the Deployment; nothing written
    assert dict(kube.calls) == {"get": 20}, kube.calls
    assert len(kube.statuses) == writes
    clock.t += 60
    ctl.poll(b)
    assert len(kube.statuses) == writes + 1  # the heartbeat
    assert first["patch"] >= 1


def test_a_change_is_written_at_once() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats(runnable=5)]
    b = body()
    ctl.poll(b)
    n = len(kube.statuses)
    ctl.canned = [stats(runnable=6)]
    clock.t += 1
    ctl.poll(b)
    assert len(kube.statuses) == n + 1 and kube.statuses[-1]["backlog"] == 6


def test_history_moves_only_after_the_scale_call_succeeded() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats()]
    b = body(scaleUp={"pods": 2, "percent": 0, "periodSeconds": 60})
    ctl.poll(b)
    before = ctl.history
    ctl.canned = [stats(runnable=100)]
    kube.fail_scale = 409
    clock.t += 1
    try:
        ctl.poll(b)
    except Exception as exc:  # the daemon backs off on it
        assert getattr(exc, "status", None) == 409
    assert ctl.history == before  # the failed scale-up used none of the rate limit
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 0
    clock.t += 1
    ctl.poll(b)
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 2
    assert ctl.history is not None and sum(n for _, n in ctl.history.scale_ups) == 2


def test_forbidden_secret_read_is_a_condition_naming_the_permission() -> None:
    kube = FakeKube()
    kube.forbid.add("get secrets")
    ctl = controller(kube)
    ctl.canned = [stats()]
    ctl.poll(body())
    c = conds(kube.statuses[-1])["Ready"]
    assert c["status"] == "False" and c["reason"] == "Forbidden"
    assert "get" in c["message"] and "secrets" in c["message"] and NS in c["message"]
    assert "pw" not in str(kube.statuses)


def test_forbidden_scale_keeps_the_rest_of_the_status() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    ctl.canned = [stats()]
    ctl.poll(body())
    kube.forbid.add("patch deployments/scale")
    ctl.canned = [stats(runnable=50)]
    ctl.poll(body())
    st = kube.statuses[-1]
    assert conds(st)["Ready"]["reason"] == "Forbidden"
    assert "deployments/scale" in conds(st)["Ready"]["message"]
    assert st["backlog"] == 50


def test_standby_reads_but_writes_nothing_and_takes_over_without_scaling_down() -> None:
    kube, clock = FakeKube(), Clock()
    leader = controller(kube, clock)
    leader.canned = [stats(runnable=40)]
    b = body(scaleDownStabilizationSeconds=300)
    leader.poll(b)
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 4
    standby = controller(kube, clock)
    standby.canned = [stats(runnable=0)]
    kube.calls.clear()
    kube.statuses.clear()
    kube.events.clear()
    clock.t += 1
    standby.poll(b, leading=False)
    assert set(kube.calls) == {"get"} and not kube.statuses and not kube.events
    # takes over with no load: the current 4 count as just recommended, so no scale-down
    clock.t += 1
    standby.poll(b, leading=True)
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 4
    assert kube.statuses, "the new leader writes its status at once"
    clock.t += 301
    standby.poll(b, leading=True)
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 0


def test_hand_edited_template_is_put_back() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats()]
    ctl.poll(body())
    dep = kube.deployments["jq-worker"]
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "evil"
    dep["spec"]["template"]["spec"]["hostNetwork"] = True
    kube.calls.clear()
    clock.t += 1
    ctl.poll(body())
    fixed = kube.deployments["jq-worker"]["spec"]["template"]["spec"]
    assert fixed["containers"][0]["image"] == "w" and "hostNetwork" not in fixed
    assert kube.calls["update"] == 1
    assert any(e[1] == "DeploymentDriftReverted" for e in kube.events)
    clock.t += 1
    kube.calls.clear()
    ctl.poll(body())
    assert kube.calls["update"] == 0  # the server's defaults are no drift


def test_drift_found_by_a_fresh_controller_too() -> None:
    kube = FakeKube()
    controller(kube).canned = None
    first = controller(kube)
    first.canned = [stats()]
    first.poll(body())
    kube.deployments["jq-worker"]["spec"]["template"]["spec"]["containers"][0]["env"] = []
    fresh = controller(kube)  # e.g. a new leader: no fingerprint of its own
    fresh.canned = [stats()]
    fresh.poll(body())
    env = kube.deployments["jq-worker"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "SKIPLOCK_DATABASE_URL" for e in env)


def test_rollout_restart_is_not_drift() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats()]
    ctl.poll(body())
    tpl = kube.deployments["jq-worker"]["spec"]["template"]
    tpl["metadata"].setdefault("annotations", {})[resources.RESTARTED_AT] = "2026-01-01T00:00:00Z"
    kube.calls.clear()
    clock.t += 1
    ctl.poll(body())
    assert kube.calls["update"] == 0


def test_secret_rotation_rolls_the_workers() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats()]
    ctl.poll(body())

    def checksum() -> str:
        tpl = kube.deployments["jq-worker"]["spec"]["template"]
        return str(tpl["metadata"]["annotations"][resources.SECRET_CHECKSUM])

    before = checksum()
    assert "pw" not in before
    kube.secrets["db"]["url"] = "cG9zdGdyZXNxbDovL3U6bmV3QGgvZGI="  # postgresql://u:new@h/db
    clock.t += 1
    ctl.poll(body())
    assert checksum() != before
    # a Secret gone missing keeps the pods as they are
    rotated = checksum()
    del kube.secrets["db"]
    clock.t += 1
    ctl.poll(body())
    assert checksum() == rotated
    assert conds(kube.statuses[-1])["DatabaseReachable"]["reason"] == "SecretNotFound"


def test_fallback_condition() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = None
    b = body(fallback={"failureThreshold": 2, "replicas": 3})
    ctl.poll(b)
    assert conds(kube.statuses[-1])["Fallback"]["status"] == "False"
    assert conds(kube.statuses[-1])["Active"]["status"] == "Unknown"
    clock.t += 1
    ctl.poll(b)
    c = conds(kube.statuses[-1])
    assert c["Fallback"]["status"] == "True" and c["Ready"]["status"] == "False"
    assert kube.deployments["jq-worker"]["spec"]["replicas"] == 3


def test_paused_condition_and_event_once() -> None:
    kube, clock = FakeKube(), Clock()
    ctl = controller(kube, clock)
    ctl.canned = [stats(paused=True)]
    b = body()
    ctl.poll(b)
    clock.t += 1
    ctl.poll(copy.deepcopy(b))
    assert conds(kube.statuses[-1])["Paused"]["reason"] == "AllQueuesPaused"
    assert [e[1] for e in kube.events].count("QueuesPaused") == 1


def test_invalid_pod_template_stops_with_a_clear_condition() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    ctl.canned = [stats()]
    b = body()
    b["spec"]["worker"]["podTemplate"] = {"spec": {"hostNetwork": True, "volumes": [
        {"name": "root", "hostPath": {"path": "/"}}]}}
    ctl.poll(b)
    c = conds(kube.statuses[-1])["Ready"]
    assert c["reason"] == "InvalidSpec"
    assert "podTemplate.spec.hostNetwork" in c["message"]
    assert "podTemplate.spec.volumes[0].hostPath" in c["message"]
    assert not kube.deployments


class _SlowMigration:
    """A Database whose migrate() blocks until released (an index build on a big table)."""

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.calls = 0

    def migrate(self) -> list[str]:
        self.calls += 1
        if not self.release.wait(10):
            raise TimeoutError("never released")
        return ["0007_x"]


def test_a_long_migration_runs_beside_the_polls(monkeypatch: Any) -> None:
    from skiplock_operator import controller as controller_module

    monkeypatch.setattr(controller_module, "MIGRATION_WAIT", 0.01)
    ctl = controller(FakeKube())
    slow = _SlowMigration()
    db = controller_module._Db("k", slow)  # type: ignore[arg-type]
    ctl._migrate(db)  # started; the poll goes on
    assert not db.migrated and db.migration is not None
    ctl._migrate(db)  # still running: not started twice
    assert slow.calls == 1 and not db.migrated
    slow.release.set()
    db.migration.result(timeout=5)
    ctl._migrate(db)
    assert db.migrated and db.migration is None and slow.calls == 1


def test_a_failed_migration_is_raised_by_the_poll_and_started_again(monkeypatch: Any) -> None:
    from skiplock.errors import MigrationBlocked
    from skiplock_operator import controller as controller_module

    class Blocked:
        calls = 0

        def migrate(self) -> list[str]:
            Blocked.calls += 1
            raise MigrationBlocked("migration 0004_x: could not take its lock")

    ctl = controller(FakeKube())
    db = controller_module._Db("k", Blocked())  # type: ignore[arg-type]
    import pytest

    with pytest.raises(MigrationBlocked):
        ctl._migrate(db)
    assert not db.migrated and db.migration is None
    ctl._migrate(db)  # backing off: every try made writers wait up to the lock timeout
    assert Blocked.calls == 1
    db.retry_at = 0.0
    with pytest.raises(MigrationBlocked):
        ctl._migrate(db)
    assert Blocked.calls == 2
