"""The chart against a real (envtest) API server with RBAC, Pod Security and admission
policies on: every rendered object passes server-side validation; the operator's
ServiceAccount can do what the operator needs and nothing more (RBAC plus the pod-patch
ValidatingAdmissionPolicy); every pod the chart renders is admitted in a namespace that
enforces Pod Security `restricted`; the uninstall hook's script deletes the release's JobQueues
with its own narrow ServiceAccount. No kubelet or controller-manager runs, so nothing is waited on
that needs one (the e2e suite covers `helm uninstall --wait` in kind)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.chart.test_chart import CHART, E2E_VALUES, KUBE_VERSION, env_of, helm_bin, pod_specs
from tests.integration.operator.envtest import EnvTest, kube_bin_dir, running_envtest

pytestmark = pytest.mark.slow

NS = "skiplock"
OPERATOR_SA = f"system:serviceaccount:{NS}:skiplock-operator"
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
COST = "controller.kubernetes.io/pod-deletion-cost"
# The operator serves the release namespace and team-a: Roles there, none elsewhere.
WATCHED = ["--set", "operator.watchNamespaces={skiplock,team-a}"]
OPTIONAL_ON = ["--set", "prune.enabled=true", "--set", "grafanaDashboard.enabled=true",
               "--set", "operator.networkPolicy.enabled=true"]


@pytest.fixture(scope="module")
def api_server() -> Iterator[EnvTest]:
    with running_envtest() as env:
        yield env


@pytest.fixture(scope="module")
def admin(api_server: EnvTest) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(api_server.kubeconfig("admin")))
    yield api
    api.close()


def kubectl(env: EnvTest, *args: str, stdin: str | None = None,
            kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(kube_bin_dir() / "kubectl"), "--kubeconfig",
                           str(kubeconfig or env.kubeconfig("admin")), *args],
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(api_server: EnvTest, admin: client.ApiClient) -> EnvTest:
    """`helm install` with the e2e values, watched namespaces and the optional parts on."""
    for ns in ("team-a", "team-b"):
        client.CoreV1Api(admin).create_namespace(client.V1Namespace(
            metadata=client.V1ObjectMeta(name=ns)))
    r = subprocess.run([str(helm_bin()), "--kubeconfig", str(api_server.kubeconfig("admin")),
                        "install", "skiplock", str(CHART), "--namespace", NS,
                        "--create-namespace", *E2E_VALUES, *WATCHED, *OPTIONAL_ON,
                        "--set", "jobQueue.queues={a,b}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "STATUS: deployed" in r.stdout
    return api_server


def test_helm_install_is_accepted_by_the_api_server(installed: EnvTest,
                                                    admin: client.ApiClient) -> None:
    jq = client.CustomObjectsApi(admin).get_namespaced_custom_object(
        "skiplock.dev", "v1alpha1", NS, "jobqueues", "demo")
    assert jq["spec"]["queues"] == ["a", "b"]
    assert jq["spec"]["scaling"]["scaleUp"] == {"pods": 4, "percent": 100,
                                                "periodSeconds": 15}  # CRD defaults
    apps = client.AppsV1Api(admin)
    assert apps.read_namespaced_deployment("skiplock-operator", NS).spec.replicas == 2
    assert apps.read_namespaced_stateful_set("skiplock-postgres", NS)
    assert client.PolicyV1Api(admin).read_namespaced_pod_disruption_budget(
        "skiplock-operator", NS).spec.min_available == 1
    assert client.BatchV1Api(admin).read_namespaced_cron_job("skiplock-prune", NS)
    # The cluster serves ValidatingAdmissionPolicy, so the chart installed the pod-patch policy.
    assert client.AdmissionregistrationV1Api(admin).read_validating_admission_policy(
        "skiplock-operator-pod-patch")


def can_i(env: EnvTest, *args: str, as_: str = OPERATOR_SA) -> bool:
    r = kubectl(env, "auth", "can-i", *args, f"--as={as_}")
    assert r.stdout.strip() in ("yes", "no"), r.stderr
    return r.stdout.strip() == "yes"


@pytest.mark.parametrize(("args", "allowed"), [
    (("get", "secrets", "-n", "skiplock"), True),
    (("get", "secrets", "-n", "team-a"), True),
    (("get", "secrets", "-n", "team-b"), False),  # not watched
    (("get", "secrets", "--all-namespaces"), False),
    (("list", "secrets", "-n", "team-a"), False),  # get by name only
    (("patch", "pods", "-n", "team-b"), False),
    (("create", "deployments", "-n", "team-b"), False),
    (("create", "deployments", "-n", "team-a"), True),
    (("delete", "deployments", "-n", "team-a"), False),
    (("update", "jobqueues", "--subresource=finalizers", "-n", "team-a"), True),  # blockOwnerDel.
    (("update", "jobqueues", "--subresource=finalizers", "-n", "team-b"), False),
    (("patch", "jobqueues", "--subresource=status", "-n", "team-a"), True),
    (("update", "jobqueues", "--subresource=status", "-n", "team-a"), False),
    (("delete", "jobqueues", "-n", "team-a"), False),
    (("list", "customresourcedefinitions"), True),  # kopf's discovery, the only cluster right
    (("create", "customresourcedefinitions"), False),
    (("update", "leases/skiplock-operator", "-n", "skiplock"), True),
    (("update", "leases/someone-else", "-n", "skiplock"), False),
    (("create", "leases", "-n", "skiplock"), True),
    (("create", "leases", "-n", "team-a"), False),
    (("create", "pods", "-n", "team-a"), False),
])
def test_operator_service_account_rights(installed: EnvTest, args: tuple[str, ...],
                                         allowed: bool) -> None:
    assert can_i(installed, *args) is allowed, args


def test_jobqueue_users_get_rights_through_the_built_in_roles(installed: EnvTest,
                                                               admin: client.ApiClient) -> None:
    rbac = client.RbacAuthorizationV1Api(admin)
    for role, user in (("edit", "alice"), ("view", "bob")):
        rbac.create_namespaced_role_binding("team-a", client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"{user}-{role}"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                      name=role),
            subjects=[client.RbacV1Subject(kind="User", name=user,
                                           api_group="rbac.authorization.k8s.io")]))
    # There is no controller-manager in envtest to aggregate: do what its clusterrole
    # aggregation controller does, from the labels the chart put on its ClusterRoles.
    # (The built-in roles exist, bootstrapped by the API server, with no rules aggregated yet.)
    for role in ("edit", "view"):
        label = f"rbac.authorization.k8s.io/aggregate-to-{role}=true"
        ours = [r for r in rbac.list_cluster_role(label_selector=label).items
                if r.metadata.name.startswith("skiplock-")]
        assert ours, role
        rbac.patch_cluster_role(role, {"rules": [
            admin.sanitize_for_serialization(rule) for r in ours for rule in r.rules]})
    assert can_i(installed, "create", "jobqueues", "-n", "team-a", as_="alice")
    assert not can_i(installed, "create", "jobqueues", "-n", "team-b", as_="alice")
    assert can_i(installed, "list", "jobqueues", "-n", "team-a", as_="bob")
    assert not can_i(installed, "delete", "jobqueues", "-n", "team-a", as_="bob")


def make_pod(admin: client.ApiClient, name: str, labels: dict[str, str]) -> None:
    client.CoreV1Api(admin).create_namespaced_pod("team-a", client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations={"keep": "me"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="w", image="worker:1")])))


def patch_as_operator(env: EnvTest, pod: str, patch: dict[str, Any]) -> str | None:
    """The operator's own call (patch_namespaced_pod) as its ServiceAccount (impersonated);
    None when admitted, else the API server's message."""
    api = config.new_client_from_config(config_file=str(env.kubeconfig("admin")))
    api.set_default_header("Impersonate-User", OPERATOR_SA)
    try:
        client.CoreV1Api(api).patch_namespaced_pod(pod, "team-a", patch)
        return None
    except ApiException as exc:
        assert exc.status in (403, 422), exc
        return str(exc.body)
    finally:
        api.close()


def test_pod_patch_policy_allows_only_the_deletion_cost(installed: EnvTest,
                                                        admin: client.ApiClient) -> None:
    worker = {"app.kubernetes.io/name": "skiplock-worker", "app.kubernetes.io/instance": "demo"}
    make_pod(admin, "worker-1", worker)
    make_pod(admin, "someone-else", {"app": "web"})
    assert patch_as_operator(installed, "worker-1",
                             {"metadata": {"annotations": {COST: "-5"}}}) is None
    pod = client.CoreV1Api(admin).read_namespaced_pod("worker-1", "team-a")
    assert pod.metadata.annotations[COST] == "-5"
    denied = {
        "label (moves the pod out of its ReplicaSet)":
            {"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}},
        "another annotation": {"metadata": {"annotations": {"keep": "changed"}}},
        "an annotation removed": {"metadata": {"annotations": {"keep": None}}},
        "the image": {"spec": {"containers": [{"name": "w", "image": "evil:1"}]}},
        "finalizers": {"metadata": {"finalizers": ["x/y"]}},
    }
    for what, patch in denied.items():
        err = patch_as_operator(installed, "worker-1", patch)
        assert err is not None, what
        assert "skiplock-operator-pod-patch" in err, (what, err)
    err = patch_as_operator(installed, "someone-else", {"metadata": {"annotations": {COST: "1"}}})
    assert err is not None and "only change Skiplock worker pods" in err, err
    # Changing the cost again, or removing it, stays allowed.
    assert patch_as_operator(installed, "worker-1",
                             {"metadata": {"annotations": {COST: "3"}}}) is None
    pod = client.CoreV1Api(admin).read_namespaced_pod("worker-1", "team-a")
    assert pod.metadata.annotations == {COST: "3", "keep": "me"}
    assert pod.spec.containers[0].image == "worker:1"
    # The policy binds the operator only: the admin changes labels as before.
    r = kubectl(installed, "-n", "team-a", "label", "pod", "worker-1", "x=y")
    assert r.returncode == 0, r.stderr


def rendered(*values: str) -> list[dict[str, Any]]:
    r = subprocess.run([str(helm_bin()), "template", "skiplock", str(CHART), "--namespace", NS,
                        "--kube-version", KUBE_VERSION, *values],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def admit_in(env: EnvTest, namespace: str,
             spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "psa-check", "namespace": namespace}, "spec": spec}
    return kubectl(env, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))


@pytest.mark.parametrize("openshift", [False, True])
def test_every_pod_is_admitted_under_restricted(installed: EnvTest, admin: client.ApiClient,
                                                openshift: bool) -> None:
    ns = "restricted-openshift" if openshift else "restricted"
    client.CoreV1Api(admin).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=ns, labels={"pod-security.kubernetes.io/enforce": "restricted"})))
    values = [*E2E_VALUES, "--set", "prune.enabled=true"]
    if openshift:  # no fixed uid: OpenShift assigns one; restricted still holds
        values += ["--set", "compatibility.openshift.adaptSecurityContext=force"]
    specs = pod_specs(rendered(*values))
    del specs["StatefulSet/skiplock-postgres"]  # dev only: runs as root to own its volume
    assert len(specs) == 4
    for key, spec in specs.items():
        spec = {**spec, "serviceAccountName": "default"}  # the chart's SAs live elsewhere
        r = admit_in(installed, ns, spec)
        assert r.returncode == 0, f"{key}: {r.stderr}"
    # Control: the namespace really enforces restricted (a pod without seccomp is refused).
    bare = {"containers": [{"name": "c", "image": "x"}]}
    r = admit_in(installed, ns, bare)
    assert r.returncode != 0 and "restricted" in r.stderr, r.stderr


def sa_kubeconfig(env: EnvTest, name: str) -> Path:
    r = kubectl(env, "-n", NS, "create", "token", name, "--duration=10m")
    assert r.returncode == 0, r.stderr
    env.write_kubeconfig(name, r.stdout.strip())
    return env.kubeconfig(name)


def run_hook(kubeconfig: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHART / "files" / "delete_jobqueues.py")],
                          env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=120)


def test_uninstall_hook_deletes_only_the_releases_jobqueues(installed: EnvTest,
                                                            admin: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(admin)
    # The hook's own ServiceAccount and Role (Helm creates them just before the hook Job).
    docs = rendered(*E2E_VALUES)
    hook = [d for d in docs if d["metadata"]["name"] == "skiplock-uninstall"]
    rbac = [d for d in hook if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    r = kubectl(installed, "apply", "-f", "-", stdin=yaml.safe_dump_all(rbac))
    assert r.returncode == 0, r.stderr
    job_env = env_of(next(d for d in hook if d["kind"] == "Job")["spec"]["template"]["spec"][
        "containers"][0])
    # kopf holds the release's JobQueue, and no operator runs to let go of it: the hook must
    # drop the finalizer after its timeout. A JobQueue outside the release must survive.
    custom.patch_namespaced_custom_object("skiplock.dev", "v1alpha1", NS, "jobqueues", "demo",
                                          {"metadata": {"finalizers": [KOPF_FINALIZER]}})
    other = custom.get_namespaced_custom_object("skiplock.dev", "v1alpha1", NS, "jobqueues",
                                                "demo")
    other = {"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue",
             "metadata": {"name": "not-ours", "namespace": NS}, "spec": other["spec"]}
    custom.create_namespaced_custom_object("skiplock.dev", "v1alpha1", NS, "jobqueues", other)
    # A worker pod that cannot go (no kubelet): the hook waits for it, bounded, and says so.
    client.CoreV1Api(admin).create_namespaced_pod(NS, client.V1Pod(
        metadata=client.V1ObjectMeta(name="demo-worker-x", labels={
            "app.kubernetes.io/name": "skiplock-worker", "app.kubernetes.io/instance": "demo"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="w", image="w")])))
    kubeconfig = sa_kubeconfig(installed, "skiplock-uninstall")
    r = run_hook(kubeconfig, {"SKIPLOCK_HOOK_NAMESPACE": job_env["SKIPLOCK_HOOK_NAMESPACE"],
                              "SKIPLOCK_HOOK_SELECTOR": job_env["SKIPLOCK_HOOK_SELECTOR"],
                              "SKIPLOCK_HOOK_TIMEOUT": "4"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deleting JobQueue skiplock/demo" in r.stdout
    assert "removing its finalizers" in r.stdout
    assert "still terminating after 4s: pod/demo-worker-x" in r.stdout
    names = [i["metadata"]["name"] for i in custom.list_namespaced_custom_object(
        "skiplock.dev", "v1alpha1", NS, "jobqueues")["items"]]
    assert names == ["not-ours"]
    # Its token may not touch anything else.
    with pytest.raises(ApiException) as err:
        api = config.new_client_from_config(config_file=str(kubeconfig))
        try:
            client.CoreV1Api(api).read_namespaced_secret("skiplock-postgres", NS)
        finally:
            api.close()
    assert err.value.status == 403
    # A second run finds nothing to do.
    r = run_hook(kubeconfig, {"SKIPLOCK_HOOK_NAMESPACE": NS,
                              "SKIPLOCK_HOOK_SELECTOR": job_env["SKIPLOCK_HOOK_SELECTOR"]})
    assert r.returncode == 0 and "no JobQueue matches" in r.stdout, r.stdout + r.stderr


def test_helm_test_script_checks_the_crd(installed: EnvTest) -> None:
    script = str(CHART / "files" / "helm_test.py")
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120,
                       env={"KUBECONFIG": str(installed.kubeconfig("admin")),
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "jobqueues served" in r.stdout
    # Nothing answers on the health URL: the test fails and says what it saw.
    r = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120,
                       env={"KUBECONFIG": str(installed.kubeconfig("admin")),
                            "PATH": "/usr/bin:/bin", "SKIPLOCK_TEST_DEADLINE": "0",
                            "SKIPLOCK_TEST_HEALTH_URL": "http://127.0.0.1:9/healthz"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL: operator not healthy: http://127.0.0.1:9/healthz" in r.stdout, r.stdout
