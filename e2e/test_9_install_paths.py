"""Install paths: helm upgrade and uninstall of the release under test, then `kubectl apply -f
deploy/` from scratch; each gives a working queue."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tests.support.invariants import assert_invariants

from e2e.conftest import IMAGE_TAG, NAMESPACE, POSTGRES_IMAGE, RELEASE, Env, helm_values
from e2e.support import ROOT, Database, enqueue, step, wait_for

pytestmark = pytest.mark.timeout(1200)


def helm(env: Env, *args: str) -> str:
    return subprocess.run([str(env.helm), "--kubeconfig", str(env.kubectl.kubeconfig), *args],
                          check=True, capture_output=True, text=True, timeout=600).stdout


def test_helm_upgrade_uninstall_then_kubectl_apply(env: Env) -> None:
    helm_queue = env.unique("e2e-helm")
    with step("helm upgrade: turn on the chart's JobQueue"):
        helm(env, "upgrade", RELEASE, str(ROOT / "charts" / "skiplock"), "-n", NAMESPACE,
             "--wait", "--timeout", "5m", *helm_values(),
             "--set", "jobQueue.enabled=true", "--set", "jobQueue.name=helm-queue",
             "--set", f"jobQueue.queues={{{helm_queue}}}",
             "--set", f"jobQueue.worker.image.tag={IMAGE_TAG}",
             "--set", "jobQueue.scaling.minReplicas=1", "--set", "jobQueue.scaling.maxReplicas=2",
             "--set", "jobQueue.scaling.pollIntervalSeconds=2")
        assert "STATUS: deployed" in helm(env, "status", RELEASE, "-n", NAMESPACE)
        wait_for(lambda: env.ready_replicas("helm-queue-worker") >= 1, 240, "chart's worker ready")
        enqueue(env.db, helm_queue, "fast", {"n": 2}, 50)
        wait_for(lambda: env.db.counts(helm_queue).get("succeeded", 0) == 50, 180, "50 succeeded")
        assert_invariants(env.db.query, queue=helm_queue, expected_jobs=50)

    with step("helm uninstall --wait, the chart's JobQueue still installed"):
        # no workaround: the chart's pre-delete hook removes the JobQueues while the operator
        # still runs to release their finalizers
        helm(env, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m")
        wait_for(lambda: env.kubectl("get", "jobqueues", "-A", "-o", "name").strip() == "", 120,
                 "no JobQueue left (none hanging in Terminating)")
        wait_for(lambda: env.kubectl("-n", NAMESPACE, "get", "deployments,statefulsets,pods",
                                     "-o", "name").strip() == "", 300, "release resources gone")
        # The dev database's volume outlives the release (StatefulSet PVCs do); remove it so
        # the manifests below start a fresh database with their own password.
        env.kubectl("-n", NAMESPACE, "delete", "pvc", "--all", "--wait=true", timeout=300)

    with step("kubectl apply -f deploy/ (and the sample JobQueue)"):
        sample = ROOT / "deploy" / "samples" / "jobqueue.yaml"
        manifests = [*sorted((ROOT / "deploy").glob("*.yaml")), sample]
        for path in manifests:
            env.kubectl.apply(_local_images(path))
        env.kubectl("-n", NAMESPACE, "rollout", "status", "deployment/skiplock-operator",
                    "--timeout=300s", timeout=320)
        env.kubectl("-n", NAMESPACE, "rollout", "status", "statefulset/skiplock-postgres",
                    "--timeout=300s", timeout=320)
        env.forward.restart()
        db = Database("postgresql://skiplock:skiplock-dev-password@127.0.0.1:"
                      f"{env.forward.local_port}/skiplock", env.forward)
        # minReplicas is 0 in the sample: only the operator can have created the schema.
        wait_for(lambda: db.query("SELECT to_regclass('skiplock.jobs') IS NOT NULL",
                                  timeout=10) == [(True,)], 180, "schema migrated by the operator")
        assert env.desired_replicas("demo-worker") == 0
        enqueue(db, "default", "fast", {"n": 5}, 100)
        wait_for(lambda: db.counts("default").get("succeeded", 0) == 100, 300,
                 "100 jobs done after scale from zero")
        assert_invariants(db.query, queue="default", expected_jobs=100)

    with step("kubectl delete -f deploy/ (the sample JobQueue too, in one command)"):
        files = [str(ROOT / "deploy/samples/jobqueue.yaml"),
                 *(str(p) for p in sorted((ROOT / "deploy").glob("*.yaml"), reverse=True)
                   if "crd" not in p.name)]
        env.kubectl("delete", "--ignore-not-found", "--wait=true",
                    *(arg for f in files for arg in ("-f", f)), timeout=300)
        wait_for(lambda: env.kubectl("get", "jobqueues", "-A", "-o", "name").strip() == "", 120,
                 "no JobQueue left")
        wait_for(lambda: env.kubectl("-n", NAMESPACE, "get", "deployments,pods", "-o",
                                     "name", check=False).strip() == "", 300, "nothing left")


def _local_images(path: Path) -> str:
    """The manifest as written, with the images built for this run (no registry here)."""
    text = path.read_text()
    text = text.replace("image: postgres:15-bookworm", f"image: {POSTGRES_IMAGE}")
    return text.replace("skiplock/operator:dev", f"skiplock/operator:{IMAGE_TAG}").replace(
        "skiplock/worker:dev", f"skiplock/worker:{IMAGE_TAG}")
