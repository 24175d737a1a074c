"""Helm pre-delete hook: delete this release's JobQueues while the operator still runs.

Helm deletes custom resources last, after the operator: kopf's finalizer on a JobQueue would
then never be removed and the JobQueue, its worker Deployment and pods would stay. This runs
first (a `pre-delete` hook, in the operator image, which has the kubernetes client), so the
operator stops its poll loop and releases each JobQueue the normal way. If the operator does not
release one within the timeout (it is down, or already gone), the finalizer is removed here:
the worker Deployment is owned by the JobQueue, so the garbage collector removes it either way.
Then it waits, bounded by the same timeout, for the worker Deployments and pods to be gone.

Settings from the environment: SKIPLOCK_HOOK_NAMESPACE, SKIPLOCK_HOOK_SELECTOR (the release's
JobQueue label selector), SKIPLOCK_HOOK_TIMEOUT (seconds). Credentials: in-cluster, else
KUBECONFIG (tests).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

GROUP, VERSION, PLURAL = "skiplock.dev", "v1alpha1", "jobqueues"
WORKER_NAME = "skiplock-worker"  # app.kubernetes.io/name of worker pods (operator resources.py)
REQUEST_TIMEOUT = 10.0  # seconds per API call: a hung connection must not hang the uninstall


def log(message: str) -> None:
    print(f"skiplock-uninstall: {message}", flush=True)


def wait_until(done: Callable[[], list[str]], deadline: float, what: str) -> list[str]:
    """Poll until ``done()`` returns nothing left or the deadline passes; return what is left."""
    left = done()
    while left and time.monotonic() < deadline:
        log(f"waiting for {what}: {', '.join(left)}")
        time.sleep(2)
        left = done()
    return left


def worker_selector(jobqueues: list[str]) -> str:
    return (f"app.kubernetes.io/name={WORKER_NAME},"
            f"app.kubernetes.io/instance in ({','.join(jobqueues)})")


def main() -> int:
    namespace = os.environ["SKIPLOCK_HOOK_NAMESPACE"]
    selector = os.environ["SKIPLOCK_HOOK_SELECTOR"]
    timeout = float(os.environ.get("SKIPLOCK_HOOK_TIMEOUT", "120"))
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    custom, apps, core = client.CustomObjectsApi(), client.AppsV1Api(), client.CoreV1Api()

    def jobqueues() -> list[str]:
        found: dict[str, Any] = custom.list_namespaced_custom_object(  # type: ignore[assignment]
            GROUP, VERSION, namespace, PLURAL, label_selector=selector,
            _request_timeout=REQUEST_TIMEOUT)
        return sorted(item["metadata"]["name"] for item in found["items"])

    names = jobqueues()
    if not names:
        log(f"no JobQueue matches {selector} in {namespace}")
        return 0
    for name in names:
        log(f"deleting JobQueue {namespace}/{name}")
        try:
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
                _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise
    left = wait_until(jobqueues, time.monotonic() + timeout, "the operator to release")
    for name in left:
        # The operator did not finish in time: drop every finalizer so the JobQueue goes.
        log(f"JobQueue {namespace}/{name} still held after {timeout:.0f}s; removing its finalizers")
        try:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"finalizers": None}},
                _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise

    workers = worker_selector(names)

    def remaining_workers() -> list[str]:
        deps = apps.list_namespaced_deployment(namespace, label_selector=workers,
                                               _request_timeout=REQUEST_TIMEOUT)
        pods = core.list_namespaced_pod(namespace, label_selector=workers,
                                        _request_timeout=REQUEST_TIMEOUT)
        return ([f"deployment/{d.metadata.name}" for d in deps.items if d.metadata]
                + [f"pod/{p.metadata.name}" for p in pods.items if p.metadata])

    left = wait_until(jobqueues, time.monotonic() + 30, "the JobQueues to go")
    if left:
        log(f"JobQueues still present: {', '.join(left)}")
        return 1
    left = wait_until(remaining_workers, time.monotonic() + timeout, "workers to drain")
    if left:
        # Their owner is gone, so they are terminating and will go; failing the uninstall
        # would not make that faster.
        log(f"still terminating after {timeout:.0f}s: {', '.join(left)}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
