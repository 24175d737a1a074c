"""podTemplate's allow-list and the security context applied after the merge."""

from __future__ import annotations

from typing import Any

import pytest

from skiplock_operator import podtemplate, resources
from skiplock_operator.models import InvalidSpec, parse_spec


def spec_with(template: dict[str, Any]) -> dict[str, Any]:
    return {"queues": ["q"], "database": {"urlSecretRef": {"name": "db"}},
            "worker": {"image": "w", "podTemplate": template}}


ALLOWED: dict[str, Any] = {
    "metadata": {"labels": {"team": "a"}, "annotations": {"x": "y"}},
    "spec": {
        "nodeSelector": {"pool": "batch"}, "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": {}, "topologySpreadConstraints": [], "priorityClassName": "high",
        "imagePullSecrets": [{"name": "reg"}],
        "volumes": [{"name": "ca", "secret": {"secretName": "pg-ca"}},
                    {"name": "cfg", "configMap": {"name": "c"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "s"}}]}}],
        "containers": [{"name": "worker", "resources": {"limits": {"cpu": "1"}},
                        "env": [{"name": "A", "value": "1"}], "envFrom": [],
                        "volumeMounts": [{"name": "ca", "mountPath": "/ca"}]}],
    },
}


def test_the_fields_a_worker_needs_are_allowed() -> None:
    assert podtemplate.problems(ALLOWED) == []
    parse_spec(spec_with(ALLOWED))


@pytest.mark.parametrize(("template", "path"), [
    ({"spec": {"hostNetwork": True}}, "podTemplate.spec.hostNetwork"),
    ({"spec": {"hostPID": True}}, "podTemplate.spec.hostPID"),
    ({"spec": {"serviceAccountName": "admin"}}, "podTemplate.spec.serviceAccountName"),
    ({"spec": {"securityContext": {"runAsUser": 0}}}, "podTemplate.spec.securityContext"),
    ({"spec": {"automountServiceAccountToken": True}},
     "podTemplate.spec.automountServiceAccountToken"),
    ({"spec": {"initContainers": [{"name": "x", "image": "y"}]}},
     "podTemplate.spec.initContainers"),
    ({"spec": {"containers": [{"name": "worker", "securityContext": {"privileged": True}}]}},
     "podTemplate.spec.containers[0].securityContext"),
    ({"spec": {"containers": [{"name": "worker", "image": "other"}]}},
     "podTemplate.spec.containers[0].image"),
    ({"spec": {"containers": [{"name": "sidecar", "image": "x"}]}},
     "podTemplate.spec.containers[0]: only the container named 'worker'"),
    ({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}},
     "podTemplate.spec.volumes[0].hostPath"),
    ({"spec": {"volumes": [{"name": "t", "projected": {"sources": [
        {"serviceAccountToken": {"path": "t"}}]}}]}},
     "podTemplate.spec.volumes[0].projected.sources[0].serviceAccountToken"),
    ({"spec": {"containers": [{"name": "worker", "ports": [
        {"containerPort": 80, "hostPort": 80, "hostIP": "0.0.0.0"}]}]}},
     "podTemplate.spec.containers[0].ports[0].hostIP"),
    ({"spec": {"containers": [{"name": "worker", "ports": [{"hostPort": 22}]}]}},
     "podTemplate.spec.containers[0].ports[0].hostPort"),
    ({"metadata": {"namespace": "kube-system"}}, "podTemplate.metadata.namespace"),
    ({"kind": "Pod"}, "podTemplate.kind"),
])
def test_forbidden_fields_are_named(template: dict[str, Any], path: str) -> None:
    assert any(p.startswith(path) for p in podtemplate.problems(template)), \
        podtemplate.problems(template)
    with pytest.raises(InvalidSpec, match="fields not allowed"):
        parse_spec(spec_with(template))


def test_security_context_is_ours_after_the_merge() -> None:
    spec = parse_spec(spec_with(ALLOWED))
    tpl = resources.pod_template("jq", spec, secret_checksum="abc")
    assert tpl["spec"]["securityContext"] == resources.POD_SECURITY
    assert tpl["spec"]["automountServiceAccountToken"] is False
    (c,) = tpl["spec"]["containers"]
    assert c["securityContext"] == resources.CONTAINER_SECURITY
    assert tpl["metadata"]["annotations"][resources.SECRET_CHECKSUM] == "abc"
    assert tpl["metadata"]["annotations"]["x"] == "y"


def test_harden_undoes_a_merge_that_slipped_through() -> None:
    tpl: dict[str, Any] = {"metadata": {}, "spec": {
        "hostNetwork": True, "securityContext": {"runAsUser": 0},
        "initContainers": [{"name": "i"}], "automountServiceAccountToken": True,
        "containers": [{"name": "worker", "securityContext": {"privileged": True}},
                       {"name": "side"}]}}
    resources.harden(tpl)
    assert "hostNetwork" not in tpl["spec"] and "initContainers" not in tpl["spec"]
    assert [c["name"] for c in tpl["spec"]["containers"]] == ["worker"]
    assert tpl["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True


def test_contains_allows_server_defaults_only() -> None:
    want = {"a": 1, "l": [{"name": "x", "p": 1}], "empty": {}}
    assert resources.contains({"a": 1, "b": 2, "l": [{"name": "x", "p": 1, "q": 0}]}, want)
    assert not resources.contains({"a": 2, "l": [{"name": "x", "p": 1}]}, want)
    assert not resources.contains({"a": 1, "l": []}, want)
    assert not resources.contains({"a": 1, "l": [{"name": "x", "p": 1}, {"name": "y"}]}, want)
