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


def test_behind_a_pooler_the_workers_listen_on_the_direct_url() -> None:
    env = env_of(build(database={"urlSecretRef": {"name": "pgb"}, "pooler": "transaction",
                                 "directUrlSecretRef": {"name": "direct", "key": "dsn"}}))
    assert env["SKIPLOCK_DATABASE_URL"] == {"secretKeyRef": {"name": "pgb", "key": "url"}}
    assert env["SKIPLOCK_LISTEN_URL"] == {"secretKeyRef": {"name": "direct", "key": "dsn"}}
    assert env["SKIPLOCK_POOLER"] == "transaction"
    # a pooler the operator is not told about: no direct URL, the workers find out and poll
    plain = env_of(build(database={"urlSecretRef": {"name": "pgb"}, "migrate": False}))
    assert "SKIPLOCK_LISTEN_URL" not in plain and "SKIPLOCK_POOLER" not in plain


def test_metrics_port_and_liveness_probe_by_default() -> None:
    c = container(build())
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100}]
    assert env_of(build())["SKIPLOCK_METRICS_PORT"] == "9100"
    # a worker whose outcomes stop being written is restarted, not left claiming
    assert c["livenessProbe"] == {"httpGet": {"path": "/livez", "port": "metrics"},
                                  "initialDelaySeconds": 10, "periodSeconds": 10,
                                  "timeoutSeconds": 5, "failureThreshold": 3}
    other = container(build(worker={"image": "w", "metricsPort": 9300}))
    assert other["ports"] == [{"name": "metrics", "containerPort": 9300}]
    assert other["livenessProbe"]["httpGet"]["port"] == "metrics"


def test_metrics_port_cannot_be_switched_off() -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.worker\.metricsPort"):
        parse_spec(raw_spec(worker={"image": "w", "metricsPort": None}))


def test_env_metrics_port_moves_the_container_port_with_it() -> None:
    dep = build(worker={"image": "w", "env": [{"name": "SKIPLOCK_METRICS_PORT", "value": "9200"}]})
    assert env_of(dep)["SKIPLOCK_METRICS_PORT"] == "9200"
    assert container(dep)["ports"] == [{"name": "metrics", "containerPort": 9200}]


def override(probe: Any, **container_over: Any) -> dict[str, Any]:
    return container(build(worker={"image": "w", "podTemplate": {"spec": {"containers": [
        {"name": "worker", "livenessProbe": probe, **container_over}]}}}))


def test_pod_template_tunes_the_probe_field_by_field() -> None:
    probe = override({"failureThreshold": 6, "timeoutSeconds": 10})["livenessProbe"]
    assert probe == {"httpGet": {"path": "/livez", "port": "metrics"}, "initialDelaySeconds": 10,
                     "periodSeconds": 10, "timeoutSeconds": 10, "failureThreshold": 6}


def test_pod_template_probe_with_another_handler_replaces_ours() -> None:
    probe = override({"exec": {"command": ["true"]}})["livenessProbe"]
    assert "httpGet" not in probe and probe["exec"] == {"command": ["true"]}
    assert probe["periodSeconds"] == 10  # our timings stay unless overridden
    probe = override({"tcpSocket": {"port": 9100}, "periodSeconds": 30})["livenessProbe"]
    assert set(probe) == {"tcpSocket", "initialDelaySeconds", "periodSeconds",
                          "timeoutSeconds", "failureThreshold"}
    assert probe["periodSeconds"] == 30


def test_pod_template_can_remove_the_probe() -> None:
    assert "livenessProbe" not in override(None)


def test_pod_template_ports_keep_the_probe_port() -> None:
    # an unnamed port makes the list replace ours: the probe's named port is declared again
    c = override({"failureThreshold": 5}, ports=[{"containerPort": 8080}])
    assert c["ports"] == [{"containerPort": 8080}, {"name": "metrics", "containerPort": 9100}]
    c = override({"failureThreshold": 5}, ports=[{"name": "http", "containerPort": 8080}])
    assert c["ports"] == [{"name": "metrics", "containerPort": 9100},
                          {"name": "http", "containerPort": 8080}]


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
        ({"database": {"urlSecretRef": {"name": "pgb"}, "pooler": "transaction"}},
         "set database.directUrlSecretRef"),
        ({"database": {"urlSecretRef": {"name": "pgb"}, "pooler": "session"}},
         "spec.database.pooler"),
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
