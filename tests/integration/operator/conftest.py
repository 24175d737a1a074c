"""Fixtures: a real etcd + kube-apiserver (session), the CRD and RBAC from deploy/, the
operator running in-process as the deploy/ ServiceAccount, and a fresh namespace per test."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.conftest import ROOT
from tests.integration.operator.envtest import (
    EnvTest,
    OperatorThread,
    load_yaml_docs,
    running_envtest,
)

_ns_counter = itertools.count()
GROUP, VERSION, PLURAL = "skiplock.dev", "v1alpha1", "jobqueues"


@pytest.fixture(scope="session")
def envtest() -> Iterator[EnvTest]:
    with running_envtest() as env:
        yield env


@pytest.fixture(scope="session")
def admin(envtest: EnvTest) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(envtest.kubeconfig("admin")))
    _install(api, ROOT / "deploy")
    yield api
    api.close()


def _install(api: client.ApiClient, deploy: Path) -> None:
    """The CRDs, namespace and RBAC exactly as shipped in deploy/."""
    ext = client.ApiextensionsV1Api(api)
    crds = load_yaml_docs(deploy / "00-crd.yaml")
    for crd in crds:
        ext.create_custom_resource_definition(crd)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace(load_yaml_docs(deploy / "10-namespace.yaml")[0])
    for doc in load_yaml_docs(deploy / "20-rbac.yaml"):
        kind = doc["kind"]
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(doc["metadata"]["namespace"], doc)
        elif kind == "ClusterRole":
            rbac.create_cluster_role(doc)
        elif kind == "ClusterRoleBinding":
            rbac.create_cluster_role_binding(doc)
        elif kind == "Role":
            rbac.create_namespaced_role(doc["metadata"]["namespace"], doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(doc["metadata"]["namespace"], doc)
    names = [crd["metadata"]["name"] for crd in crds]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pending = [n for n in names if not any(
            c.type == "Established" and c.status == "True"
            for c in (ext.read_custom_resource_definition(n).status.conditions or []))]
        if not pending:
            return
        time.sleep(0.1)
    pytest.fail(f"CRDs {pending} not Established after 30s")


@pytest.fixture
def operator_env(envtest: EnvTest, admin: client.ApiClient,
                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator authenticates as the deploy/ ServiceAccount, so RBAC gaps fail the tests.
    monkeypatch.setenv("KUBECONFIG", str(envtest.kubeconfig("operator")))
    monkeypatch.setenv("SKIPLOCK_OPERATOR_WARNING_REPEAT_SECONDS", "0")
    monkeypatch.setenv("SKIPLOCK_OPERATOR_WATCH_SERVER_TIMEOUT", "30")
    monkeypatch.setenv("SKIPLOCK_OPERATOR_WATCH_CLIENT_TIMEOUT", "40")
    # Every poll writes its status (the tests watch lastPollTime move); the default 60 s
    # heartbeat has tests of its own (test_operator_ha.py, tests/unit/test_operator_*).
    monkeypatch.setenv("SKIPLOCK_OPERATOR_STATUS_HEARTBEAT_SECONDS", "0")
    # Leader election on, as deployed, on the Lease deploy/20-rbac.yaml grants; short times
    # so a test starting after another's operator never waits long for the Lease.
    monkeypatch.setenv("SKIPLOCK_OPERATOR_LEASE_NAMESPACE", "skiplock")
    monkeypatch.setenv("SKIPLOCK_OPERATOR_LEASE_DURATION_SECONDS", "3")
    monkeypatch.setenv("SKIPLOCK_OPERATOR_RENEW_DEADLINE_SECONDS", "2")
    monkeypatch.setenv("SKIPLOCK_OPERATOR_RETRY_PERIOD_SECONDS", "0.5")


@pytest.fixture
def operators(operator_env: None) -> Iterator[Callable[[Path], OperatorThread]]:
    """Start real operators with a kubeconfig each (as different users, or several at once);
    each is stopped at the end and must not have crashed."""
    started: list[OperatorThread] = []

    def start(kubeconfig: Path) -> OperatorThread:
        op = OperatorThread(kubeconfig)
        op.start()
        started.append(op)
        return op

    yield start
    for op in started:
        if op.thread.is_alive():
            op.stop()
        assert op.error is None, f"operator crashed: {op.error!r}"


@pytest.fixture
def start_operator(operators: Callable[[Path], OperatorThread], envtest: EnvTest
                   ) -> Callable[[], OperatorThread]:
    """Start the operator as its own ServiceAccount-like user."""
    return lambda: operators(envtest.kubeconfig("operator"))


@pytest.fixture
def operator(start_operator: Callable[[], OperatorThread]) -> OperatorThread:
    return start_operator()


class Cluster:
    """Admin-side helpers for one test namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def secret(self, name: str, url: str, key: str = "url") -> None:
        self.core.create_namespaced_secret(self.ns, {
            "metadata": {"name": name},
            "data": {key: base64.b64encode(url.encode()).decode()}})

    def create_jobqueue(self, name: str, **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "JobQueue",
                "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        return self.custom.create_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, self.ns, PLURAL, body)

    def patch_jobqueue(self, name: str, patch: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name, patch)

    def jobqueue(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.jobqueue(name).get("status") or {})

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(name).get("conditions") or []:
            if c["type"] == type_:
                return dict(c)
        return None

    def deployment(self, name: str) -> Any | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def replicas(self, name: str) -> int | None:
        dep = self.deployment(name)
        return None if dep is None else int(dep.spec.replicas)

    def events(self, reason: str | None = None) -> list[Any]:
        items = self.core.list_namespaced_event(self.ns).items
        items = [e for e in items if reason is None or e.reason == reason]
        return sorted(items, key=lambda e: (e.first_timestamp or e.event_time, e.metadata.name))

    def pod(self, name: str, labels: dict[str, str]) -> None:
        self.core.create_namespaced_pod(self.ns, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"automountServiceAccountToken": False,
                     "containers": [{"name": "worker", "image": "example.invalid/worker"}]}})

    def pod_annotations(self, name: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_pod(name, self.ns).metadata.annotations or {})


def _clear_earlier_tests(api: client.ApiClient) -> None:
    """Delete the JobQueues and JobSchedules earlier tests left (their namespaces stay, see
    below). The databases they point at were dropped by their tests: an operator started
    later would poll, and sweep the schedules of, every one of them, each waiting out a
    connect timeout, which slows its passes and polls by seconds and has nothing to do with
    what the next test checks. No
    operator runs between tests, so a finalizer left on one is dropped by hand."""
    custom = client.CustomObjectsApi(api)
    for plural in (PLURAL, "jobschedules"):
        try:
            items = custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        except ApiException as exc:
            if exc.status == 404:  # the JobSchedule CRD is installed by its own module
                continue
            raise
        for item in items:
            ns, name = item["metadata"]["namespace"], item["metadata"]["name"]
            try:
                if item["metadata"].get("finalizers"):
                    custom.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name,
                                                          {"metadata": {"finalizers": None}})
                custom.delete_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def cluster(admin: client.ApiClient) -> Cluster:
    _clear_earlier_tests(admin)
    ns = f"jq-{int(time.time()) % 100000}-{next(_ns_counter)}"
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": ns}})
    # Namespaces are never deleted: without a controller-manager they would stay Terminating.
    return Cluster(admin, ns)
