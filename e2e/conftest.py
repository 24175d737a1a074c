"""The kind cluster (pytest-kind, pointed at the locally built kind, kubectl and node image),
the Helm release under test, and a port-forward to its Postgres."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_kind import KindCluster  # type: ignore[import-untyped]

from e2e.support import CACHE, ROOT, Database, Kubectl, PortForward, log, step, wait_for

NAMESPACE = "skiplock"
RELEASE = "skiplock"
DB_PASSWORD = "e2e-not-secret"  # a throwaway dev database inside the test cluster
IMAGE_TAG = os.environ.get("SKIPLOCK_IMAGE_TAG", "dev")
WORKER_IMAGE = f"skiplock/worker:{IMAGE_TAG}"
OPERATOR_IMAGE = f"skiplock/operator:{IMAGE_TAG}"
POSTGRES_IMAGE = os.environ.get("SKIPLOCK_POSTGRES_IMAGE", "skiplock/postgres:15-bookworm")
NODE_IMAGE = os.environ.get("SKIPLOCK_NODE_IMAGE", "skiplock/kind-node:v1.34.4")
# kind-config.yaml labels its nodes with this key (dots escaped for helm --set)
APPS_LABEL = "skiplock.dev/e2e-role"
APPS_LABEL_KEY = APPS_LABEL.replace(".", "\\.")
# the node image's CNI config (e2e/toolchain/node-image.sh)
CNI_CONF = "/etc/cni/net.d/10-skiplock.conflist"
# Queue and JobQueue names get a per-run suffix, so a kept cluster's leftovers never mix in.
RUN_ID = secrets.token_hex(2)


def helm_values() -> list[str]:
    """The chart values the suite installs with (the dev Postgres on a PVC, local images)."""
    return [
        "--set", f"operator.image.repository={OPERATOR_IMAGE.split(':')[0]}",
        "--set", f"operator.image.tag={IMAGE_TAG}",
        "--set", "operator.image.pullPolicy=IfNotPresent",
        "--set", "postgres.enabled=true",
        "--set", f"postgres.image.repository={POSTGRES_IMAGE.split(':')[0]}",
        "--set", f"postgres.image.tag={POSTGRES_IMAGE.split(':')[1]}",
        "--set", "postgres.image.pullPolicy=IfNotPresent",
        "--set", f"postgres.auth.password={DB_PASSWORD}",
        "--set", "jobQueue.enabled=false",
        # namespaced Roles (least privilege), as a platform team installs it
        "--set", f"operator.watchNamespaces={{{NAMESPACE}}}",
        # the operator replicas and the workers on the two "apps" nodes, Postgres on the
        # control plane: the node-loss test stops an apps node and the database stays up
        "--set-string", f"operator.nodeSelector.{APPS_LABEL_KEY}=apps",
        "--set-string", f"postgres.nodeSelector.{APPS_LABEL_KEY}=infra",
    ]


class Env:
    def __init__(self, cluster: KindCluster, kubectl: Kubectl, helm: Path, db: Database,
                 forward: PortForward) -> None:
        self.cluster = cluster
        self.kubectl = kubectl
        self.helm = helm
        self.db = db
        self.forward = forward
        self.namespace = NAMESPACE
        self.postgres = f"{RELEASE}-postgres"
        self.db_secret = f"{RELEASE}-postgres"
        self.created: list[str] = []

    @staticmethod
    def unique(base: str) -> str:
        return f"{base}-{RUN_ID}"

    def jobqueue(self, queue: str, *, min_replicas: int, max_replicas: int,
                 jobs_per_replica: int = 10, concurrency: int = 4, lease: float = 10,
                 grace: int = 20, stabilization: float = 15, poll: float = 2,
                 activation: int = 0, pod_spec: dict[str, Any] | None = None,
                 scaling: dict[str, Any] | None = None) -> str:
        """A JobQueue for ``queue``; ``pod_spec`` is merged into the worker pods' spec (its
        podTemplate), which always pins them to the "apps" nodes; ``scaling`` adds to (or
        overrides) spec.scaling."""
        name = queue
        manifest = {
            "apiVersion": "skiplock.dev/v1alpha1",
            "kind": "JobQueue",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "queues": [queue],
                "database": {"urlSecretRef": {"name": self.db_secret, "key": "url"}},
                "worker": {
                    "image": WORKER_IMAGE, "imagePullPolicy": "IfNotPresent",
                    "app": "skiplock.demo_tasks:app", "concurrency": concurrency,
                    "leaseSeconds": lease, "shutdownGracePeriodSeconds": grace,
                    "resources": {"requests": {"cpu": "10m", "memory": "48Mi"}},
                    "podTemplate": {"spec": {"nodeSelector": {APPS_LABEL: "apps"},
                                             **(pod_spec or {})}},
                },
                "scaling": {
                    "minReplicas": min_replicas, "maxReplicas": max_replicas,
                    "jobsPerReplica": jobs_per_replica, "activationThreshold": activation,
                    "pollIntervalSeconds": poll, "scaleDownStabilizationSeconds": stabilization,
                    "scaleUp": {"pods": 4, "percent": 100, "periodSeconds": 5},
                    **(scaling or {}),
                },
            },
        }
        self.kubectl.apply(json.dumps(manifest))
        self.created.append(name)
        return name

    def delete_jobqueues(self) -> None:
        """Remove what a test created (its workers go with it: owner references)."""
        for name in self.created:
            self.kubectl("-n", self.namespace, "delete", "jobqueue", name, "--ignore-not-found",
                         "--wait=false", check=False)
        self.created.clear()

    def deployment(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("-n", self.namespace, "get", "deployment", name)  # type: ignore[no-any-return]

    def desired_replicas(self, name: str) -> int:
        return int(self.deployment(name)["spec"].get("replicas", 0))

    def ready_replicas(self, name: str) -> int:
        return int(self.deployment(name).get("status", {}).get("readyReplicas", 0) or 0)

    def jobqueue_status(self, name: str) -> dict[str, Any]:
        return self.kubectl.json("-n", self.namespace, "get", "jobqueue", name).get("status", {})  # type: ignore[no-any-return]

    def condition(self, name: str, kind: str, status: str) -> dict[str, Any] | None:
        for c in self.jobqueue_status(name).get("conditions", []):
            if c.get("type") == kind and c.get("status") == status:
                return c  # type: ignore[no-any-return]
        return None

    def operator_pods(self) -> list[str]:
        """The operator's pods that are not being deleted (the chart runs two)."""
        pods = self.kubectl.json("-n", self.namespace, "get", "pods", "-l",
                                 "app.kubernetes.io/component=operator")["items"]
        return sorted(p["metadata"]["name"] for p in pods
                      if not p["metadata"].get("deletionTimestamp"))

    def diagnostics(self) -> str:
        """What a failed test leaves for the reader: every operator pod's recent log (a
        terminating one too, while it lasts), the Leases, the JobQueues' status, the worker
        Deployments and the namespace's recent events. No Secret is read."""
        parts: list[str] = []
        pods = self.kubectl.json("-n", self.namespace, "get", "pods", "-l",
                                 "app.kubernetes.io/component=operator")["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            gone = " (terminating)" if pod["metadata"].get("deletionTimestamp") else ""
            parts.append(f"--- operator pod {name} on {pod['spec'].get('nodeName')}{gone}")
            parts.append(self.kubectl("-n", self.namespace, "logs", name, "--tail=200",
                                      "--timestamps", check=False))
        for what in ("leases", "jobqueues", "deployments"):
            parts.append(f"--- {what}")
            parts.append(self.kubectl("-n", self.namespace, "get", what, "-o", "yaml",
                                      check=False))
        parts.append("--- events")
        parts.append(self.kubectl("-n", self.namespace, "get", "events",
                                  "--sort-by=.lastTimestamp", check=False))
        return "\n".join(parts)

    def operator_pod(self) -> str | None:
        live = self.operator_pods()
        return live[0] if live else None

    def node_of(self, pod: str) -> str:
        """The kind node (its container has the node's name) a pod runs on."""
        return str(self.kubectl.json("-n", self.namespace, "get", "pod", pod)["spec"]["nodeName"])

    def sigkill_pod(self, pod: str) -> None:
        """SIGKILL a pod's main process from the node, like a crash or an OOM kill."""
        node = self.node_of(pod)
        script = (
            f"cid=$(crictl ps -q --label io.kubernetes.pod.name={pod} "
            f"--label io.kubernetes.pod.namespace={self.namespace} | head -n1); "
            "pid=$(crictl inspect --output go-template --template '{{.info.pid}}' \"$cid\"); "
            'kill -9 "$pid"'
        )
        subprocess.run(["docker", "exec", node, "sh", "-c", script], check=True, timeout=60)

    def pod_ready(self, pod: str) -> bool:
        p = self.kubectl.json("-n", self.namespace, "get", "pod", pod)
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in p.get("status", {}).get("conditions", []))


def wire_pod_network(kubectl: Kubectl) -> None:
    """What kindnet does, for the node image's static CNI config (ptp + host-local, no
    daemon): each node allocates pod IPs from its own podCIDR, and routes every other node's
    podCIDR to that node. Without it every node hands out the same 10.244.0.x addresses and
    pods on a worker node cannot reach DNS or the API server's Service."""
    nodes = [(n["metadata"]["name"], n["spec"]["podCIDR"],
              next(a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"))
             for n in kubectl.json("get", "nodes")["items"]]
    for name, cidr, _ in nodes:
        conf = subprocess.run(["docker", "exec", name, "cat", CNI_CONF], check=True,
                              capture_output=True, text=True, timeout=30).stdout
        subprocess.run(["docker", "exec", "-i", name, "sh", "-c", f"cat > {CNI_CONF}"],
                       input=re.sub(r'"subnet": "[0-9./]+"', f'"subnet": "{cidr}"', conf),
                       check=True, text=True, timeout=30)
        for other, other_cidr, other_ip in nodes:
            if other != name:
                subprocess.run(["docker", "exec", name, "ip", "route", "replace", other_cidr,
                                "via", other_ip], check=True, timeout=30)
                # the node image rejects pod addresses leaving via eth0 (so nothing leaks off
                # this machine before kube-proxy is ready); another node's podCIDR, routed to
                # that node's container, is let through ahead of that fence
                for chain in ("FORWARD", "OUTPUT"):
                    subprocess.run(["docker", "exec", name, "iptables", "-I", chain, "1", "-d",
                                    other_cidr, "-o", "eth0", "-j", "ACCEPT"], check=True,
                                   timeout=30)


def _binary(env: str, name: str) -> Path:
    path = Path(os.environ.get(env, CACHE / "bin" / name))
    if not path.exists():
        pytest.fail(f"{name} not found at {path}: run `make e2e` (e2e/run.sh builds the offline "
                    "toolchain into the cache)")
    return path


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[KindCluster]:
    kind_bin = request.config.getoption("kind_bin") or str(_binary("SKIPLOCK_KIND_BIN", "kind"))
    kubectl_bin = request.config.getoption("kind_kubectl_bin") or str(
        _binary("SKIPLOCK_KUBECTL_BIN", "kubectl"))
    name = request.config.getoption("cluster_name")
    name = "skiplock-e2e" if name == "pytest-kind" else name
    kubeconfig = CACHE / "kube" / f"{name}.kubeconfig"
    kubeconfig.parent.mkdir(parents=True, exist_ok=True)
    kc = KindCluster(name, kubeconfig, image=request.config.getoption("kind_image") or NODE_IMAGE,
                     kind_path=Path(kind_bin), kubectl_path=Path(kubectl_bin))
    with step(f"kind cluster {name}"):
        kc.create(config_file=ROOT / "e2e" / "toolchain" / "kind-config.yaml")
    kubectl = Kubectl(Path(kubectl_bin), kubeconfig)
    with step("nodes Ready"):
        kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=300s", timeout=320)
    with step("pod network across nodes"):
        wire_pod_network(kubectl)
        # the control plane runs the dev Postgres (nodeSelector in helm_values)
        kubectl("taint", "nodes", "-l", f"{APPS_LABEL}=infra",
                "node-role.kubernetes.io/control-plane:NoSchedule-", check=False)
    with step("load images onto every node"):
        # every image on every node: the install-paths test applies deploy/, whose pods have
        # no node selector and may land anywhere
        for image in (WORKER_IMAGE, OPERATOR_IMAGE, POSTGRES_IMAGE):
            kc.load_docker_image(image)
    yield kc
    if not request.config.getoption("keep_cluster"):
        with step(f"delete cluster {name}"):
            kc.delete()


@pytest.fixture(scope="session")
def env(cluster: KindCluster) -> Iterator[Env]:
    kubectl = Kubectl(Path(cluster.kubectl_path), Path(cluster.kubeconfig_path))
    helm = _binary("SKIPLOCK_HELM_BIN", "helm")
    with step("helm install the chart (operator, CRD, dev Postgres)"):
        subprocess.run([str(helm), "--kubeconfig", str(cluster.kubeconfig_path), "upgrade",
                        "--install", RELEASE, str(ROOT / "charts" / "skiplock"), "-n", NAMESPACE,
                        "--create-namespace", "--wait", "--timeout", "8m", *helm_values()],
                       check=True, timeout=600)
    with PortForward(kubectl, NAMESPACE, f"svc/{RELEASE}-postgres", 5432) as forward:
        url = f"postgresql://skiplock:{DB_PASSWORD}@127.0.0.1:{forward.local_port}/skiplock"
        db = Database(url, forward)
        e = Env(cluster, kubectl, helm, db, forward)
        with step("migrate the schema through the port-forward"):
            wait_for(lambda: _migrate(url), 240, "skiplock migrate")
        yield e
        log("final state of the cluster:")
        print(kubectl("get", "jobqueues,deployments,pods", "-n", NAMESPACE, "-o", "wide",
                      check=False), flush=True)


def _migrate(url: str) -> bool:
    from skiplock.db import Database as SkiplockDatabase

    with SkiplockDatabase(url, connect_timeout=5) as db:
        db.migrate()
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed test, print the cluster's side of the story before the cleanup deletes
    it (CI keeps only this output)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    env = getattr(item, "funcargs", {}).get("env")
    if report.when == "call" and report.failed and isinstance(env, Env):
        try:
            text = env.diagnostics()
        except Exception as exc:  # the cluster itself may be what broke
            text = f"(could not collect diagnostics: {type(exc).__name__}: {exc})"
        print(f"\n===== diagnostics for {item.nodeid} =====\n{text}\n===== end =====",
              flush=True)


@pytest.fixture(autouse=True)
def _cleanup_jobqueues(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "env" in request.fixturenames:
        request.getfixturevalue("env").delete_jobqueues()
