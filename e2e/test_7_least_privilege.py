"""What the operator may do, asked of the API server as the operator's ServiceAccount, and
Pod Security `restricted` admitting the operator and worker pods."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from e2e.conftest import NAMESPACE, RELEASE, Env
from e2e.support import step, wait_for

pytestmark = pytest.mark.timeout(600)

OPERATOR_SA = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"


def can_i(env: Env, *args: str) -> bool:
    out = env.kubectl("auth", "can-i", *args, f"--as={OPERATOR_SA}", check=False)
    return out.strip() == "yes"


def test_rbac_denies_what_the_operator_does_not_need(env: Env) -> None:
    # the suite installs with watchNamespaces=[skiplock]: namespaced Roles, not a ClusterRole
    assert can_i(env, "get", "secrets", "-n", NAMESPACE)
    assert not can_i(env, "get", "secrets", "-n", "default")
    assert not can_i(env, "get", "secrets", "-n", "kube-system")
    assert not can_i(env, "create", "deployments", "-n", "default")
    assert not can_i(env, "patch", "pods", "-n", "kube-system")
    assert can_i(env, "update", "leases.coordination.k8s.io", "-n", NAMESPACE)
    assert can_i(env, "update", "jobqueues/finalizers", "-n", NAMESPACE)


def test_a_pod_patch_as_the_operator_may_only_touch_the_deletion_cost(env: Env) -> None:
    """RBAC cannot limit a patch to one field; the chart's ValidatingAdmissionPolicy does. A
    server-side dry run goes through admission, so it proves the rule without changing pods."""
    pod = wait_for(lambda: next(iter(env.kubectl(
        "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=operator",
        "-o", "jsonpath={.items[*].metadata.name}").split()), None), 120, "an operator pod")
    as_operator = [f"--as={OPERATOR_SA}", "--dry-run=server", "--type=merge"]
    cost = {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-5"}}}
    env.kubectl("-n", NAMESPACE, "patch", "pod", pod, *as_operator, "-p", json.dumps(cost))
    for hostile in (
        {"metadata": {"labels": {"app.kubernetes.io/component": "not-the-operator"}}},
        {"metadata": {"annotations": {"something.else/x": "1"}}},
        {"spec": {"activeDeadlineSeconds": 1}},
    ):
        out = env.kubectl("-n", NAMESPACE, "patch", "pod", pod, *as_operator, "-p",
                          json.dumps(hostile), check=False)
        assert "patched" not in out, f"the operator could patch {hostile}: {out}"


@pytest.fixture
def restricted(env: Env) -> Iterator[None]:
    label = "pod-security.kubernetes.io/enforce"
    env.kubectl("label", "--overwrite", "namespace", NAMESPACE, f"{label}=restricted")
    try:
        yield
    finally:
        env.kubectl("label", "namespace", NAMESPACE, f"{label}-", check=False)


def test_pod_security_restricted_admits_the_operator_and_its_workers(
    env: Env, restricted: None
) -> None:
    with step("a new operator pod under enforce=restricted"):
        before = set(env.operator_pods())
        old = sorted(before)[0]
        env.kubectl("-n", NAMESPACE, "delete", "pod", old, "--wait=false")
        wait_for(lambda: [p for p in env.operator_pods() if p not in before and env.pod_ready(p)],
                 240, "a replacement operator pod admitted and ready")
    with step("worker pods under enforce=restricted"):
        queue = env.unique("e2e-psa")
        name = env.jobqueue(queue, min_replicas=1, max_replicas=1)
        wait_for(lambda: env.ready_replicas(f"{name}-worker") == 1, 240,
                 "a worker pod admitted and ready")
