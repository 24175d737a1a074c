"""`helm install` into a real (envtest) API server: every rendered object, the CRD and the
chart's JobQueue, passes server-side validation. No kubelet runs, so nothing is waited on."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.chart.test_chart import CHART, E2E_VALUES, helm_bin
from tests.integration.operator.envtest import (
    EnvTest,
    running_envtest,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_server() -> Iterator[EnvTest]:
    with running_envtest() as env:
        yield env


def test_helm_install_is_accepted_by_the_api_server(api_server: EnvTest) -> None:
    kubeconfig = str(api_server.kubeconfig("admin"))
    r = subprocess.run([str(helm_bin()), "--kubeconfig", kubeconfig, "install", "skiplock",
                        str(CHART), "--namespace", "skiplock", "--create-namespace",
                        *E2E_VALUES, "--set", "jobQueue.queues={a,b}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "STATUS: deployed" in r.stdout
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        jq = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "skiplock.dev", "v1alpha1", "skiplock", "jobqueues", "demo")
        assert jq["spec"]["queues"] == ["a", "b"]
        assert jq["spec"]["scaling"]["scaleUp"] == {"pods": 4, "percent": 100,
                                                    "periodSeconds": 15}  # CRD defaults
        apps = client.AppsV1Api(api)
        assert apps.read_namespaced_deployment("skiplock-operator", "skiplock")
        assert apps.read_namespaced_stateful_set("skiplock-postgres", "skiplock")
    finally:
        api.close()
