"""deploy/ applies cleanly with kubectl to a fresh API server (nothing installed before), and
the sample JobQueue passes the CRD's schema and CEL rules."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.conftest import ROOT
from tests.integration.operator.envtest import (
    EnvTest,
    kube_bin_dir,
    running_envtest,
)


@pytest.fixture(scope="module")
def fresh() -> Iterator[EnvTest]:
    """An API server of its own: `kubectl apply -f deploy/` must work with no CRD installed."""
    with running_envtest() as env:
        yield env


@pytest.fixture(scope="module")
def fresh_admin(fresh: EnvTest) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(fresh.kubeconfig("admin")))
    yield api
    api.close()


def kubectl(envtest: EnvTest, *args: str) -> subprocess.CompletedProcess[str]:
    path = kube_bin_dir() / "kubectl"
    if not path.exists():
        pytest.fail(f"{path} missing: build it with `bash e2e/toolchain/tools.sh kubectl`",
                    pytrace=False)
    return subprocess.run([str(path), "--kubeconfig", str(envtest.kubeconfig("admin")), *args],
                          capture_output=True, text=True, timeout=120)


def test_kubectl_apply_deploy_dir(fresh: EnvTest, fresh_admin: client.ApiClient) -> None:
    envtest, admin = fresh, fresh_admin
    r = kubectl(envtest, "apply", "-f", str(ROOT / "deploy"))
    assert r.returncode == 0, r.stderr
    r = kubectl(envtest, "wait", "--for=condition=Established", "--timeout=60s",
                "crd/jobqueues.skiplock.dev")
    assert r.returncode == 0, r.stderr
    r = kubectl(envtest, "apply", "-f", str(ROOT / "deploy" / "samples"))
    assert r.returncode == 0, r.stderr
    assert "jobqueue.skiplock.dev/demo created" in r.stdout, r.stdout
    apps = client.AppsV1Api(admin)
    dep = apps.read_namespaced_deployment("skiplock-operator", "skiplock")
    # two replicas with leader election: a rolling update keeps one up
    assert dep.spec.strategy.type == "RollingUpdate" and dep.spec.replicas == 2
    env = {e.name for e in dep.spec.template.spec.containers[0].env}
    assert {"POD_NAME", "SKIPLOCK_OPERATOR_LEASE_NAMESPACE"} <= env, env
    assert apps.read_namespaced_stateful_set("skiplock-postgres", "skiplock")
    # defaults from the schema were filled in by the API server
    jq = client.CustomObjectsApi(admin).get_namespaced_custom_object(
        "skiplock.dev", "v1alpha1", "skiplock", "jobqueues", "demo")
    assert jq["spec"]["database"]["schema"] == "skiplock"
    assert jq["spec"]["worker"]["leaseSeconds"] == 30


def test_server_rejects_bad_values(fresh: EnvTest, fresh_admin: client.ApiClient) -> None:
    envtest = fresh
    assert kubectl(envtest, "apply", "-f", str(ROOT / "deploy" / "00-crd.yaml")).returncode == 0
    assert kubectl(envtest, "wait", "--for=condition=Established", "--timeout=60s",
                   "crd/jobqueues.skiplock.dev").returncode == 0
    bad = ("apiVersion: skiplock.dev/v1alpha1\nkind: JobQueue\nmetadata: {name: bad, "
           "namespace: default}\nspec:\n  queues: ['has space']\n  database: {urlSecretRef: "
           "{name: x}}\n  worker: {image: w, concurrency: 0, args: [--database-url=postgresql://a],"
           " env: [{name: SKIPLOCK_DATABASE_URL, value: postgresql://b}]}\n  scaling: "
           "{minReplicas: 3, maxReplicas: 1}\n")
    r = subprocess.run([str(kube_bin_dir() / "kubectl"), "--kubeconfig",
                        str(envtest.kubeconfig("admin")), "apply", "-f", "-"], input=bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    for needle in ("spec.queues[0]", "spec.worker.concurrency",
                   "minReplicas must be less than or equal to maxReplicas",
                   "never from args", "must not be a literal value"):
        assert needle in r.stderr, r.stderr
