"""What the operator may do, asked of the API server as the operator's ServiceAccount, and
Pod Security `restricted` admitting the operator and worker pods."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

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
    # the Lease rule names the one Lease the operator holds, nothing else
    assert can_i(env, "update", f"leases.coordination.k8s.io/{RELEASE}-operator", "-n", NAMESPACE)
    assert not can_i(env, "update", "leases.coordination.k8s.io/someone-elses", "-n", NAMESPACE)
    assert can_i(env, "update", "jobqueues.skiplock.dev", "--subresource=finalizers", "-n",
                 NAMESPACE)


def test_a_pod_patch_as_the_operator_may_only_touch_the_deletion_cost(env: Env) -> None:
    """RBAC cannot limit a patch to one field; the chart's ValidatingAdmissionPolicy does. A
    server-side dry run goes through admission, so it proves the rule without changing pods."""
    name = env.jobqueue(env.unique("e2e-vap"), min_replicas=1, max_replicas=1)
    pod = wait_for(lambda: next(iter(env.kubectl(
        "-n", NAMESPACE, "get", "pods", "-l", f"app.kubernetes.io/instance={name}",
        "-o", "jsonpath={.items[*].metadata.name}").split()), None), 120, "a worker pod")
    # the operator's own call (a PATCH, no GET first, as kubectl would), made as its SA
    api = config.new_client_from_config(str(env.kubectl.kubeconfig))
    api.set_default_header("Impersonate-User", OPERATOR_SA)
    core = client.CoreV1Api(api)
    cost = {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-5"}}}
    core.patch_namespaced_pod(pod, NAMESPACE, cost, dry_run="All")
    for hostile in (
        {"metadata": {"labels": {"app.kubernetes.io/component": "not-a-worker"}}},
        {"metadata": {"annotations": {"something.else/x": "1"}}},
        {"spec": {"activeDeadlineSeconds": 1}},
        {"metadata": {"finalizers": ["example.com/stuck"]}},
    ):
        with pytest.raises(ApiException) as refused:
            core.patch_namespaced_pod(pod, NAMESPACE, hostile, dry_run="All")
        assert refused.value.status in (403, 422), (hostile, refused.value.status)


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
