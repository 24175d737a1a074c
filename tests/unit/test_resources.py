"""The worker Deployment built from a JobQueue spec, and spec parsing (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from skiplock_operator import resources
from skiplock_operator.models import InvalidSpec, parse_spec

BODY: dict[str, Any] = {"metadata": {"name": "emails", "namespace": "jobs", "uid": "u-1"}}


def raw_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "queues": ["default", "mail"],
        "database": {"urlSecretRef": {"name": "db", "key": "url"}},
        "worker": {"image": "skiplock/worker:dev", "concurrency": 4,
                   "shutdownGracePeriodSeconds": 45},
        "scaling": {"minReplicas": 1, "maxReplicas": 8},
    }
    spec.update(over)
    return spec


def build(**over: Any) -> dict[str, Any]:
    return resources.deployment(BODY, parse_spec(raw_spec(**over)), replicas=2)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(dep)["env"]}


def test_owner_reference_and_labels() -> None:
    dep = build()
    assert dep["metadata"]["name"] == "emails-worker"
    assert dep["metadata"]["ownerReferences"] == [{
        "apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue", "name": "emails", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "skiplock-operator"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_worker_command_env_and_grace() -> None:
    dep = build()
    c = container(dep)
    assert c["args"] == ["worker", "skiplock.demo_tasks:app", "--queue", "default", "--queue",
                         "mail", "--concurrency", "4"]
    env = env_of(dep)
    # the URL comes from the Secret, never a literal value
    assert env["SKIPLOCK_DATABASE_URL"] == {"secretKeyRef": {"name": "db", "key": "url"}}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SKIPLOCK_SHUTDOWN_GRACE"] == "45"
    # the kubelet waits for the drain plus time to flush completions
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 55
    # readiness is never a "busy" signal
    assert "readinessProbe" not in c


def test_user_env_overrides_ours() -> None:
    dep = build(worker={"image": "w", "env": [{"name": "SKIPLOCK_LOG_JSON", "value": "false"},
                                              {"name": "EXTRA", "value": "1"}]})
    env = env_of(dep)
    assert env["SKIPLOCK_LOG_JSON"] == "false" and env["EXTRA"] == "1"
    assert [e["name"] for e in container(dep)["env"]].count("SKIPLOCK_LOG_JSON") == 1


def test_pod_template_overrides_merge_but_keep_selector() -> None:
    dep = build(worker={"image": "w", "podTemplate": {
        "metadata": {"labels": {"team": "a", "app.kubernetes.io/instance": "hijack"}},
        "spec": {"nodeSelector": {"pool": "batch"},
                 "containers": [{"name": "worker", "resources": {"limits": {"cpu": "1"}}}]}}})
    tpl = dep["spec"]["template"]
    assert tpl["metadata"]["labels"]["team"] == "a"
    assert tpl["metadata"]["labels"]["app.kubernetes.io/instance"] == "emails"
    assert tpl["spec"]["nodeSelector"] == {"pool": "batch"}
    assert container(dep)["resources"] == {"limits": {"cpu": "1"}}
    assert container(dep)["image"] == "w"  # merged by name, not replaced


def test_hash_changes_with_spec_not_with_replicas() -> None:
    a = build()
    b = resources.deployment(BODY, parse_spec(raw_spec()), replicas=7)
    c = build(worker={"image": "skiplock/worker:v2"})
    h = resources.SPEC_HASH
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h]
    assert a["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]


def test_for_update_keeps_running_replicas() -> None:
    desired = build()
    existing = {"metadata": {"resourceVersion": "42", "annotations": {"x": "y"}},
                "spec": {"replicas": 6}}
    out = resources.for_update(desired, existing)
    assert out["spec"]["replicas"] == 6
    assert out["metadata"]["resourceVersion"] == "42"
    assert out["metadata"]["annotations"]["x"] == "y"


def test_deletion_costs_idle_first() -> None:
    costs = resources.deletion_costs(["a", "b", "c"], {"b": 3, "zz": 9})
    assert costs == {"a": 0, "b": 3, "c": 0}


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"scaling": {"minReplicas": 5, "maxReplicas": 2}},
         "minReplicas (5) must be <= maxReplicas (2)"),
        ({"scaling": {"maxReplicas": 2, "fallback": {"failureThreshold": 1, "replicas": 3}}},
         "fallback.replicas (3) must be <= maxReplicas (2)"),
        ({"queues": []}, "spec.queues"),
        ({"queues": ["bad name"]}, "invalid queue name"),
        ({"database": {"urlSecretRef": {"name": "db"}, "schema": "Bad-Schema"}},
         "spec.database.schema"),
        ({"worker": {"image": "w", "concurency": 3}}, "spec.worker.concurency"),
        ({"worker": {"image": "w", "app": "nocolon"}}, "spec.worker.app"),
        ({"worker": {"image": "w", "args": ["--database-url=postgresql://u:p@h/d"]}},
         "never from args"),
        ({"worker": {"image": "w", "env": [{"name": "SKIPLOCK_DATABASE_URL", "value": "x"}]}},
         "must not be a literal value"),
    ],
)
def test_invalid_specs_say_what_is_wrong(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        parse_spec(raw_spec(**over))
    assert needle in str(info.value)


def test_owned_by() -> None:
    dep = build()
    assert resources.owned_by(dep, "u-1")
    assert not resources.owned_by(dep, "someone-else")
    assert not resources.owned_by({"metadata": {}}, "u-1")
