"""`helm test`: the JobQueue CRD is served and the operator answers on /healthz.

Settings from the environment: SKIPLOCK_TEST_HEALTH_URL (empty: skip the health check, when
the chart renders no Service), SKIPLOCK_TEST_DEADLINE (seconds to wait for a healthy answer,
default 60: the operator may still be starting right after an install). Credentials:
in-cluster, else KUBECONFIG.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

GROUP_VERSION = "skiplock.dev/v1alpha1"


def crd_served() -> str | None:
    """None when the API server serves jobqueues, else what is wrong."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    group, version = GROUP_VERSION.split("/")
    # Discovery is readable by every authenticated user: no RBAC needed beyond the token.
    found = client.CustomObjectsApi().get_api_resources(group, version, _request_timeout=10)
    names = {r.name for r in found.resources or []}
    return None if "jobqueues" in names else f"{GROUP_VERSION} serves {sorted(names)}"


def healthy(url: str) -> str | None:
    """None when the operator's liveness endpoint answers 200, else what it answered."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310  (an http URL we build)
            return None if r.status == 200 else f"{url} answered {r.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def main() -> int:
    problem = crd_served()
    if problem:
        print(f"FAIL: JobQueue CRD not served: {problem}", flush=True)
        return 1
    print(f"ok: {GROUP_VERSION} jobqueues served", flush=True)
    url = os.environ.get("SKIPLOCK_TEST_HEALTH_URL", "")
    if not url:
        return 0
    deadline = time.monotonic() + float(os.environ.get("SKIPLOCK_TEST_DEADLINE", "60"))
    while (problem := healthy(url)) and time.monotonic() < deadline:
        time.sleep(2)
    if problem:
        print(f"FAIL: operator not healthy: {problem}", flush=True)
        return 1
    print(f"ok: {url} answered 200", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
