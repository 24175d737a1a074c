"""charts/skiplock: helm lint --strict, rendering with each value, the schema, and agreement
with deploy/ (one CRD, one set of RBAC rules, one admission policy). Rendering only; the tests
against a real API server are in test_chart_install.py."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from skiplock_operator.models import parse_spec
from tests.conftest import ROOT

CHART = ROOT / "charts" / "skiplock"
KUBE_VERSION = "1.34.4"
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
E2E_VALUES = ["--set", "postgres.enabled=true", "--set", "postgres.auth.password=p@ss:w/rd",
              "--set", "postgres.image.repository=skiplock/postgres",
              "--set", "jobQueue.enabled=true"]
# Every optional part on: what a production install with monitoring would render.
ALL_ON = [*E2E_VALUES, "--set", "prune.enabled=true", "--set", "grafanaDashboard.enabled=true",
          "--set", "operator.networkPolicy.enabled=true",
          "--set", "operator.metrics.serviceMonitor.enabled=true",
          "--set", "operator.metrics.podMonitor.enabled=true"]
OPERATOR_POD = {"app.kubernetes.io/name": "skiplock", "app.kubernetes.io/instance": "skiplock",
                "app.kubernetes.io/component": "operator"}


def helm_bin() -> Path:
    explicit = os.environ.get("SKIPLOCK_HELM_BIN")
    path = Path(explicit) if explicit else Path(
        os.environ.get("SKIPLOCK_KUBE_BIN_DIR", "/var/cache/skiplock/bin")) / "helm"
    if not path.exists():
        pytest.fail(f"helm not found at {path}: build it with `bash e2e/toolchain/tools.sh helm` "
                    "(or set SKIPLOCK_HELM_BIN)", pytrace=False)
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if args[0] in ("template", "lint"):  # offline there is no cluster to ask
        args = (*args, "--kube-version", KUBE_VERSION)
    r = subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def render(*values: str) -> list[dict[str, Any]]:
    out = helm("template", "skiplock", str(CHART), "--namespace", "skiplock", "--include-crds",
               *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def fails(*values: str) -> str:
    """Render that must fail; returns helm's error output."""
    r = helm("template", "skiplock", str(CHART), "--namespace", "skiplock", *values, check=False)
    assert r.returncode != 0, f"rendered although it should not:\n{r.stdout[:2000]}"
    return r.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name or ''}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def operator_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", "skiplock-operator")["spec"]["template"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod spec the chart renders, by "Kind/name" (Deployments, Jobs, CronJobs, Pods)."""
    out = {}
    for d in docs:
        key = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[key] = d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            out[key] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            out[key] = d["spec"]
    return out


def restricted_problems(spec: dict[str, Any]) -> list[str]:
    """What Pod Security `restricted` would reject in a pod spec (the checks that apply here)."""
    problems = []
    psc = spec.get("securityContext", {})
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{c['name']}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities.drop")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{c['name']}: seccompProfile")
    return problems


# --- lint, defaults ---------------------------------------------------------------------------

def test_lint_strict_default_and_full() -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *ALL_ON)
    helm("lint", "--strict", str(CHART), "--set", "operator.watchNamespaces={a,b}")


def test_default_render_is_operator_only() -> None:
    docs = render()
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    assert kinds == [
        "ClusterRole/skiplock-jobqueue-edit", "ClusterRole/skiplock-jobqueue-view",
        "ClusterRole/skiplock-operator", "ClusterRoleBinding/skiplock-operator",
        "ConfigMap/skiplock-test", "CustomResourceDefinition/jobqueues.skiplock.dev",
        "CustomResourceDefinition/jobschedules.skiplock.dev",
        "Deployment/skiplock-operator", "Pod/skiplock-test",
        "PodDisruptionBudget/skiplock-operator", "Role/skiplock-operator-leader-election",
        "RoleBinding/skiplock-operator-leader-election", "Service/skiplock-operator",
        "ServiceAccount/skiplock-operator"]
    pod = operator_pod(docs)
    assert pod["metadata"]["labels"] == OPERATOR_POD
    c = pod["spec"]["containers"][0]
    assert c["image"] == "skiplock/operator:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env_of(c)["SKIPLOCK_OPERATOR_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"


# --- HA ---------------------------------------------------------------------------------------

def test_ha_two_replicas_rolling_leader_election_and_spread() -> None:
    docs = render()
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = dep["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SKIPLOCK_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["SKIPLOCK_OPERATOR_LEASE_NAME"] == "skiplock-operator"
    assert env["SKIPLOCK_OPERATOR_LEASE_NAMESPACE"] == "skiplock"
    # Soft (preferred) anti-affinity by hostname, selecting exactly the operator's pods.
    anti = pod["affinity"]["podAntiAffinity"]
    terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    term = terms[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == OPERATOR_POD
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": OPERATOR_POD}}
    # The Lease the operator is told to use is the one its Role names.
    lease_rule = one(docs, "Role", "skiplock-operator-leader-election")["rules"][1]
    assert lease_rule["resourceNames"] == [env["SKIPLOCK_OPERATOR_LEASE_NAME"]]


def test_leader_election_values() -> None:
    docs = render("--set", "operator.leaderElection.leaseName=my-lease",
                  "--set", "operator.leaderElection.leaseDurationSeconds=30")
    env = env_of(operator_pod(docs)["spec"]["containers"][0])
    assert env["SKIPLOCK_OPERATOR_LEASE_NAME"] == "my-lease"
    assert env["SKIPLOCK_OPERATOR_LEASE_DURATION_SECONDS"] == "30"
    assert one(docs, "Role", "skiplock-operator-leader-election")["rules"][1][
        "resourceNames"] == ["my-lease"]
    assert "retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds" in fails(
        "--set", "operator.leaderElection.renewDeadlineSeconds=20")
    assert "retryPeriodSeconds < renewDeadlineSeconds" in fails(
        "--set", "operator.leaderElection.retryPeriodSeconds=10")


def test_one_replica_has_no_pdb_and_two_without_election_fail() -> None:
    docs = render("--set", "operator.replicaCount=1", "--set",
                  "operator.leaderElection.enabled=false")
    assert not by_kind(docs, "PodDisruptionBudget")  # minAvailable 1 of 1 would block drains
    assert not [r for r in by_kind(docs, "Role") if "leader" in r["metadata"]["name"]]
    assert env_of(operator_pod(docs)["spec"]["containers"][0])[
        "SKIPLOCK_OPERATOR_LEADER_ELECTION"] == "false"
    assert "needs operator.leaderElection.enabled=true" in fails(
        "--set", "operator.leaderElection.enabled=false")
    assert not by_kind(render("--set", "operator.podDisruptionBudget.enabled=false"),
                       "PodDisruptionBudget")


# --- RBAC -------------------------------------------------------------------------------------

def rules_by_resource(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in rules:
        for res in r["resources"]:
            out.setdefault(res, set()).update(r["verbs"])
    return out


def test_cluster_wide_rbac_has_exactly_the_operators_verbs() -> None:
    docs = render()
    rules = rules_by_resource(one(docs, "ClusterRole", "skiplock-operator")["rules"])
    assert rules == {
        "customresourcedefinitions": {"list", "watch"},
        "jobqueues": {"list", "watch", "patch"}, "jobqueues/status": {"patch"},
        "jobqueues/finalizers": {"update"},  # blockOwnerDeletion under OwnerReferencesPermission
        "jobschedules": {"list", "watch"}, "jobschedules/status": {"patch"},
        "deployments": {"get", "create", "update"}, "deployments/scale": {"patch"},
        "pods": {"list", "patch"}, "secrets": {"get"}, "events": {"create"}}
    assert not by_kind(docs, "Role") or all(
        "leases" in r["rules"][0]["resources"] for r in by_kind(docs, "Role"))


def test_watch_namespaces_get_roles_and_no_cluster_wide_secrets() -> None:
    docs = render("--set", "operator.watchNamespaces={team-a,team-b}")
    cluster = one(docs, "ClusterRole", "skiplock-operator")
    assert rules_by_resource(cluster["rules"]) == {"customresourcedefinitions": {"list", "watch"}}
    for role in by_kind(docs, "ClusterRole"):  # nothing cluster-wide reads a Secret or a pod
        assert not {"secrets", "pods"} & set(rules_by_resource(role["rules"])), role
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")
             if r["metadata"]["name"] == "skiplock-operator"}
    assert set(roles) == {"team-a", "team-b"}
    cluster_wide = rules_by_resource(one(render(), "ClusterRole", "skiplock-operator")["rules"])
    del cluster_wide["customresourcedefinitions"]
    for ns, role in roles.items():
        assert rules_by_resource(role["rules"]) == cluster_wide
        binding = next(b for b in by_kind(docs, "RoleBinding")
                       if b["metadata"]["namespace"] == ns)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "skiplock-operator"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "skiplock-operator",
                                        "namespace": "skiplock"}]
    env = env_of(operator_pod(docs)["spec"]["containers"][0])
    assert json.loads(env["SKIPLOCK_OPERATOR_NAMESPACES"]) == ["team-a", "team-b"]


def test_aggregated_user_roles() -> None:
    docs = render()
    edit = one(docs, "ClusterRole", "skiplock-jobqueue-edit")
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "create" in rules_by_resource(edit["rules"])["jobqueues"]
    view = one(docs, "ClusterRole", "skiplock-jobqueue-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert rules_by_resource(view["rules"]) == {
        "jobqueues": {"get", "list", "watch"}, "jobqueues/status": {"get", "list", "watch"},
        "jobschedules": {"get", "list", "watch"}, "jobschedules/status": {"get", "list", "watch"}}
    off = render("--set", "rbac.aggregateToUserRoles=false")
    assert [r["metadata"]["name"] for r in by_kind(off, "ClusterRole")] == ["skiplock-operator"]


def test_rbac_off_renders_none() -> None:
    docs = render("--set", "rbac.create=false", "--set", "rbac.aggregateToUserRoles=false",
                  "--api-versions", VAP_API)
    assert not [d for d in docs if d["kind"] in (
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "ValidatingAdmissionPolicy")]


def deploy_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / name).read_text()) if d]


def test_rbac_matches_deploy() -> None:
    """deploy/20-rbac.yaml is the chart's cluster-wide RBAC (release "skiplock", ns "skiplock")."""
    chart = render()
    deploy = deploy_docs("20-rbac.yaml")
    for kind, name in [("ClusterRole", "skiplock-operator"),
                       ("Role", "skiplock-operator-leader-election"),
                       ("ClusterRole", "skiplock-jobqueue-edit"),
                       ("ClusterRole", "skiplock-jobqueue-view")]:
        assert one(chart, kind, name)["rules"] == one(deploy, kind, name)["rules"], name
        labels = one(deploy, kind, name)["metadata"]["labels"]
        for key, value in one(chart, kind, name)["metadata"]["labels"].items():
            if key.startswith("rbac.authorization.k8s.io/"):
                assert labels[key] == value
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for b in by_kind(deploy, kind):
            assert b["subjects"] == one(chart, kind, b["metadata"]["name"])["subjects"]


# --- admission policy -------------------------------------------------------------------------

def test_pod_patch_policy_only_when_the_cluster_serves_it() -> None:
    assert not by_kind(render(), "ValidatingAdmissionPolicy")
    docs = render("--api-versions", VAP_API)
    vap = one(docs, "ValidatingAdmissionPolicy")
    assert vap["spec"]["matchConditions"][0]["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:skiplock:skiplock-operator'")
    assert vap["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": vap["metadata"]["name"],
                               "validationActions": ["Deny"]}
    assert not by_kind(render("--api-versions", VAP_API, "--set",
                              "rbac.podPatchPolicy.enabled=false"), "ValidatingAdmissionPolicy")


def test_pod_patch_policy_matches_deploy() -> None:
    chart = render("--api-versions", VAP_API)
    deploy = deploy_docs("25-admission-policy.yaml")
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert one(chart, kind)["spec"] == one(deploy, kind)["spec"]


# --- pod values -------------------------------------------------------------------------------

def test_every_pod_meets_restricted_by_default() -> None:
    docs = render(*ALL_ON)
    specs = pod_specs(docs)
    assert set(specs) == {"Deployment/skiplock-operator", "StatefulSet/skiplock-postgres",
                          "Job/skiplock-uninstall", "Pod/skiplock-test",
                          "CronJob/skiplock-prune"}
    del specs["StatefulSet/skiplock-postgres"]  # dev only: starts as root to own its volume
    for key, spec in specs.items():
        assert restricted_problems(spec) == [], key
        assert spec["securityContext"]["runAsUser"] == 10001, key


@pytest.mark.parametrize("how", [["--set", "compatibility.openshift.adaptSecurityContext=force"],
                                 ["--api-versions", "security.openshift.io/v1"]])
def test_openshift_drops_the_fixed_uid(how: list[str]) -> None:
    specs = pod_specs(render(*ALL_ON, *how))
    del specs["StatefulSet/skiplock-postgres"]
    for key, spec in specs.items():
        for sc in [spec["securityContext"], *(c["securityContext"] for c in spec["containers"])]:
            assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(sc), key
        assert restricted_problems(spec) == [], key  # still restricted otherwise


def test_openshift_disabled_keeps_the_uid_and_contexts_are_values() -> None:
    docs = render("--api-versions", "security.openshift.io/v1",
                  "--set", "compatibility.openshift.adaptSecurityContext=disabled",
                  "--set", "operator.podSecurityContext.fsGroup=2000",
                  "--set", "operator.securityContext.runAsNonRoot=true")
    spec = operator_pod(docs)["spec"]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["fsGroup"] == 2000
    assert spec["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_extra_env_volumes_and_scheduling_values() -> None:
    values = {"operator": {
        "extraEnv": [{"name": "SKIPLOCK_OPERATOR_KUBE_TIMEOUT", "value": "5"}],
        "extraEnvFrom": [{"secretRef": {"name": "op-env"}}],
        "extraVolumes": [{"name": "pg-ca", "secret": {"secretName": "pg-ca"}}],
        "extraVolumeMounts": [{"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": True}],
        "priorityClassName": "system-cluster-critical",
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
             "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
             "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"x": "spread"}}}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "infra", "operator": "In", "values": ["yes"]}]}]}}},
        "podLabels": {"team": "platform"}, "podAnnotations": {"a": "b"}}}
    docs = render_values(values)
    pod = operator_pod(docs)
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert env_of(c)["SKIPLOCK_OPERATOR_KUBE_TIMEOUT"] == "5"
    assert "POD_NAME" in env_of(c)  # extras add to, never replace, the chart's env
    assert c["envFrom"] == [{"secretRef": {"name": "op-env"}}]
    assert {"name": "pg-ca", "secret": {"secretName": "pg-ca"}} in spec["volumes"]
    assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
    assert {"name": "pg-ca", "mountPath": "/etc/pg-ca", "readOnly": True} in c["volumeMounts"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    tsc = spec["topologySpreadConstraints"]
    assert tsc[0]["labelSelector"] == {"matchLabels": OPERATOR_POD}  # filled in
    assert tsc[1]["labelSelector"] == {"matchLabels": {"x": "spread"}}  # kept
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "infra"
    assert spec["affinity"] == values["operator"]["affinity"]  # replaces the default
    assert pod["metadata"]["labels"]["team"] == "platform"
    assert pod["metadata"]["annotations"]["a"] == "b"
    # The selector never takes the extra labels (it is immutable on upgrade).
    assert one(docs, "Deployment")["spec"]["selector"]["matchLabels"] == OPERATOR_POD


def render_values(values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    r = subprocess.run([str(helm_bin()), "template", "skiplock", str(CHART), "--namespace",
                        "skiplock", "--kube-version", KUBE_VERSION, "-f", "-", *extra],
                       input=yaml.safe_dump(values), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def test_probes() -> None:
    c = operator_pod(render())["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "enabled" not in c["readinessProbe"]
    c = operator_pod(render("--set", "operator.readinessProbe.enabled=false",
                            "--set", "operator.livenessProbe.periodSeconds=20",
                            "--set", "operator.livenessPort=8181"))["spec"]["containers"][0]
    assert "readinessProbe" not in c
    assert c["livenessProbe"]["periodSeconds"] == 20
    assert {"name": "health", "containerPort": 8181} in c["ports"]
    assert env_of(c)["SKIPLOCK_OPERATOR_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8181/healthz"


# --- metrics, monitors, network policy --------------------------------------------------------

def test_metrics_service_and_monitors() -> None:
    docs = render()
    svc = one(docs, "Service", "skiplock-operator")
    assert svc["spec"]["selector"] == OPERATOR_POD
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {
        "metrics": "metrics", "health": "health"}
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodMonitor")
    docs = render("--set", "operator.metrics.serviceMonitor.enabled=true",
                  "--set", "operator.metrics.serviceMonitor.labels.release=prom",
                  "--set", "operator.metrics.podMonitor.enabled=true")
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    svc_labels = one(docs, "Service", "skiplock-operator")["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc_labels.items()
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == OPERATOR_POD
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    off = render("--set", "operator.metrics.enabled=false")
    assert not by_kind(off, "Service")
    assert env_of(operator_pod(off)["spec"]["containers"][0])[
        "SKIPLOCK_OPERATOR_METRICS_PORT"] == "0"
    assert "needs operator.metrics.enabled" in fails(
        "--set", "operator.metrics.enabled=false",
        "--set", "operator.metrics.serviceMonitor.enabled=true")


def test_network_policy() -> None:
    assert not by_kind(render(), "NetworkPolicy")
    docs = render_values({"operator": {"networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        "egress": [{"ports": [{"port": 5432}]}]}}})
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == OPERATOR_POD
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    health, metrics = np["spec"]["ingress"]
    assert health["ports"] == [{"port": "health", "protocol": "TCP"}]
    # the helm test pod may reach the health port
    test_pod = one(docs, "Pod", "skiplock-test")
    assert health["from"][0]["podSelector"]["matchLabels"].items() <= \
        test_pod["metadata"]["labels"].items()
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
    assert np["spec"]["egress"] == [{"ports": [{"port": 5432}]}]
    assert one(render("--set", "operator.networkPolicy.enabled=true"),
               "NetworkPolicy")["spec"]["policyTypes"] == ["Ingress"]


# --- helm test, uninstall hook ----------------------------------------------------------------

def test_helm_test_pod() -> None:
    docs = render()
    pod = one(docs, "Pod", "skiplock-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "/test/helm_test.py"]
    assert env_of(c)["SKIPLOCK_TEST_HEALTH_URL"] == \
        "http://skiplock-operator.skiplock.svc:8080/healthz"
    cm = one(docs, "ConfigMap", "skiplock-test")
    assert cm["data"]["helm_test.py"] == (CHART / "files" / "helm_test.py").read_text()
    assert env_of(one(render("--set", "operator.metrics.enabled=false"), "Pod")["spec"][
        "containers"][0])["SKIPLOCK_TEST_HEALTH_URL"] == ""  # no Service to call
    assert not by_kind(render("--set", "tests.enabled=false"), "Pod")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (p.split("=", 1) for p in selector.split(",")))


def test_uninstall_hook_targets_the_releases_jobqueue() -> None:
    assert not by_kind(render(), "Job")  # nothing to delete without a JobQueue
    docs = render(*E2E_VALUES)
    hook = [d for d in docs if d["metadata"]["name"] == "skiplock-uninstall"]
    assert sorted(d["kind"] for d in hook) == ["ConfigMap", "Job", "Role", "RoleBinding",
                                               "ServiceAccount"]
    for d in hook:
        ann = d["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "pre-delete"
        assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        assert int(ann["helm.sh/hook-weight"]) < 0 or d["kind"] == "Job"  # RBAC first
    job = one(docs, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "skiplock-uninstall"
    env = env_of(spec["containers"][0])
    jq = one(docs, "JobQueue")
    assert selector_matches(env["SKIPLOCK_HOOK_SELECTOR"], jq["metadata"]["labels"])
    assert env["SKIPLOCK_HOOK_NAMESPACE"] == jq["metadata"]["namespace"]
    assert job["spec"]["activeDeadlineSeconds"] == 2 * 120 + 90  # bounded
    # Its Role is namespaced and can only touch JobQueues, and read workers.
    role = one(docs, "Role", "skiplock-uninstall")
    assert role["metadata"]["namespace"] == "skiplock"
    assert rules_by_resource(role["rules"]) == {"jobqueues": {"list", "delete", "patch"},
                                                "deployments": {"list"}, "pods": {"list"}}
    cm = one(docs, "ConfigMap", "skiplock-uninstall")
    assert cm["data"]["delete_jobqueues.py"] == \
        (CHART / "files" / "delete_jobqueues.py").read_text()
    assert not by_kind(render(*E2E_VALUES, "--set", "uninstall.deleteJobQueues=false"), "Job")


# --- prune ------------------------------------------------------------------------------------

def test_prune_cronjob_runs_the_real_cli() -> None:
    from skiplock import cli

    assert not by_kind(render(*E2E_VALUES), "CronJob")
    docs = render(*E2E_VALUES, "--set", "prune.enabled=true", "--set",
                  "prune.retentionSeconds=3600", "--set", "prune.schedule=*/30 * * * *")
    cron = one(docs, "CronJob")
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == "skiplock/worker:0.1.0"  # the worker image has the CLI
    args = cli.build_parser().parse_args(c["args"])  # the CLI accepts exactly these flags
    assert args.func is cli.cmd_prune
    assert args.older_than == 3600 and args.keys_older_than == 86400
    env = env_of(c)
    assert env["SKIPLOCK_DATABASE_URL"] == {"secretKeyRef": {"name": "skiplock-postgres",
                                                             "key": "url"}}
    assert env["SKIPLOCK_SCHEMA"] == "skiplock"


def test_prune_database_and_image_choices() -> None:
    docs = render("--set", "prune.enabled=true", "--set", "prune.database.secretName=prod-db",
                  "--set", "prune.database.secretKey=dsn", "--set",
                  "prune.image.repository=acme/app", "--set", "prune.image.tag=2.1")
    c = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["SKIPLOCK_DATABASE_URL"] == {"secretKeyRef": {"name": "prod-db",
                                                                   "key": "dsn"}}
    assert c["image"] == "acme/app:2.1"
    docs = render("--set", "prune.enabled=true", "--set", "jobQueue.database.secretName=jq-db",
                  "--set", "jobQueue.database.secretKey=u")
    c = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["SKIPLOCK_DATABASE_URL"] == {"secretKeyRef": {"name": "jq-db", "key": "u"}}
    assert "prune.enabled needs a database" in fails("--set", "prune.enabled=true")


def test_the_chart_jobqueue_behind_a_pooler_gets_a_direct_url() -> None:
    docs = render("--set", "jobQueue.enabled=true", "--set", "jobQueue.database.secretName=pgb",
                  "--set", "jobQueue.database.pooler=transaction",
                  "--set", "jobQueue.database.directSecretName=direct",
                  "--set", "jobQueue.database.directSecretKey=dsn")
    db = one(docs, "JobQueue")["spec"]["database"]
    assert db == {"urlSecretRef": {"name": "pgb", "key": "url"}, "pooler": "transaction",
                  "directUrlSecretRef": {"name": "direct", "key": "dsn"}}
    plain = one(render("--set", "jobQueue.enabled=true", "--set",
                       "jobQueue.database.secretName=pg"), "JobQueue")["spec"]["database"]
    assert plain == {"urlSecretRef": {"name": "pg", "key": "url"}}
    assert "needs jobQueue.database.directSecretName" in fails(
        "--set", "jobQueue.enabled=true", "--set", "jobQueue.database.secretName=pgb",
        "--set", "jobQueue.database.pooler=transaction")


# --- dev Postgres URL -------------------------------------------------------------------------

@pytest.mark.parametrize("password", ["p@ss:w/rd", "with space", "a b@c/d%e+f:g?h#i&j=k é~",
                                      "100%", "+plus+"])
def test_dev_postgres_url_percent_encodes_the_password(password: str) -> None:
    docs = render("--set", "postgres.enabled=true", "--set-string",
                  f"postgres.auth.password={password}", "--set-string",
                  "postgres.auth.username=us er")
    secret = one(docs, "Secret", "skiplock-postgres")
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert base64.b64decode(secret["data"]["password"]).decode() == password
    assert "+" not in url.split("@")[0].split("//")[1]  # never form encoding
    # libpq (through psycopg) reads back exactly the password and user.
    parsed = conninfo_to_dict(url)
    assert parsed["password"] == password and parsed["user"] == "us er"
    assert parsed["host"] == "skiplock-postgres.skiplock.svc" and parsed["dbname"] == "skiplock"
    assert urllib.parse.unquote(urllib.parse.urlsplit(url).password or "") == password


def test_e2e_values_render_database_and_jobqueue() -> None:
    docs = render(*E2E_VALUES)
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "skiplock/postgres:15-bookworm"
    assert one(docs, "Service", "skiplock-postgres")
    jq = one(docs, "JobQueue")
    spec = parse_spec(jq["spec"])  # the operator accepts what the chart renders
    assert spec.database.url_secret_ref.name == "skiplock-postgres"
    assert spec.worker.image == "skiplock/worker:0.1.0"


def test_jobqueue_outside_the_watched_namespaces_fails_clearly() -> None:
    err = fails(*E2E_VALUES, "--set", "operator.watchNamespaces={team-a}")
    assert "creates a JobQueue in skiplock, which operator.watchNamespaces (team-a)" in err
    assert one(render(*E2E_VALUES, "--set", "operator.watchNamespaces={team-a,skiplock}"),
               "JobQueue")


def test_postgres_without_password_fails_clearly() -> None:
    assert "postgres.auth.password is required" in fails("--set", "postgres.enabled=true")


# --- schema -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "needle"), [
    (["--set", "jobQueue.scaling.maxReplicas=0"], "maxReplicas"),
    (["--set", "operator.typo=1"], "typo"),
    (["--set", "operator.replicaCount=0"], "replicaCount"),
    (["--set", "compatibility.openshift.adaptSecurityContext=yes"], "adaptSecurityContext"),
    (["--set", "operator.extraEnv[0].value=x"], "name"),
    (["--set", "operator.extraVolumeMounts[0].name=x"], "mountPath"),
    (["--set", "operator.topologySpreadConstraints[0].maxSkew=1"], "topologyKey"),
    (["--set", "operator.podDisruptionBudget.minAvailable=half"], "minAvailable"),
    (["--set", "operator.metrics.serviceMonitor.interval=often"], "interval"),
    (["--set", "prune.schedule=daily"], "schedule"),
    (["--set", "prune.retentionSeconds=-1"], "retentionSeconds"),
    (["--set", "prune.database.schema=Bad-Schema"], "schema"),
    (["--set", "prune.extra=1"], "extra"),
    (["--set", "uninstall.timeoutSeconds=1"], "timeoutSeconds"),
    (["--set", "operator.leaderElection.leaseName=Not_A_Name"], "leaseName"),
    (["--set", "grafanaDashboard.labels.grafana_dashboard=1"], "grafana_dashboard"),
    (["--set", "rbac.podPatchPolicy.enabled=maybe"], "enabled"),
    (["--set", "jobQueue.database.pooler=session"], "pooler"),
])
def test_schema_rejects_bad_values(values: list[str], needle: str) -> None:
    err = fails(*values)
    assert "schema" in err and needle in err, err


# --- CRD, deploy/ -----------------------------------------------------------------------------

def test_crd_matches_deploy() -> None:
    assert (CHART / "crds" / "jobqueues.skiplock.dev.yaml").read_text() == \
        (ROOT / "deploy" / "00-crd.yaml").read_text()


def test_deploy_operator_matches_chart_defaults() -> None:
    deploy = one(deploy_docs("30-operator.yaml"), "Deployment")
    chart = one(render(), "Deployment")
    for key in ("replicas", "strategy"):
        assert deploy["spec"][key] == chart["spec"][key], key
    d_pod, c_pod = deploy["spec"]["template"]["spec"], chart["spec"]["template"]["spec"]
    assert d_pod["securityContext"] == c_pod["securityContext"]
    d_c, c_c = d_pod["containers"][0], c_pod["containers"][0]
    for key in ("livenessProbe", "readinessProbe", "securityContext", "resources", "ports"):
        assert d_c[key] == c_c[key], key
    d_env, c_env = env_of(d_c), env_of(c_c)
    for name in ("POD_NAME", "SKIPLOCK_OPERATOR_LIVENESS_ENDPOINT", "SKIPLOCK_OPERATOR_LEASE_NAME",
                 "SKIPLOCK_OPERATOR_LEASE_NAMESPACE", "SKIPLOCK_OPERATOR_LEADER_ELECTION"):
        assert d_env[name] == c_env[name], name
    d_term = d_pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert d_term["topologyKey"] == "kubernetes.io/hostname"
    assert d_term["labelSelector"]["matchLabels"].items() <= \
        deploy["spec"]["template"]["metadata"]["labels"].items()
    pdb = one(deploy_docs("30-operator.yaml"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == deploy["spec"]["selector"]


# --- Grafana dashboard ------------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    """Names the worker and operator actually export (as Prometheus scrapes them)."""
    import prometheus_client

    import skiplock.metrics
    import skiplock_operator.metrics

    names = set()
    for family in prometheus_client.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    # Gauges the worker computes at scrape time (QueueStatsCollector), from its table.
    names.add("skiplock_queue_stats_up")
    names.add("skiplock_queue_oldest_runnable_age_seconds")
    for suffix, _, _ in skiplock.metrics._QUEUE_GAUGES:
        names.add(f"skiplock_queue_{suffix}")
    assert skiplock_operator.metrics.BACKLOG  # both modules registered
    return names


def test_grafana_dashboard_uses_only_real_metrics() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = {m for e in exprs for m in re.findall(r"\bskiplock_[a-z_]+", e)}
    missing = used - exported_metric_names()
    assert not missing, f"dashboard queries metrics nobody exports: {sorted(missing)}"
    for prefix in ("skiplock_operator_", "skiplock_jobs_", "skiplock_queue_"):
        assert any(m.startswith(prefix) for m in used), prefix
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_grafana_dashboard_configmap() -> None:
    assert not [d for d in by_kind(render(), "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    docs = render("--set", "grafanaDashboard.enabled=true",
                  "--set", "grafanaDashboard.namespace=monitoring")
    cm = one(docs, "ConfigMap", "skiplock-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert json.loads(cm["data"]["skiplock.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text())


# --- values.yaml documentation ----------------------------------------------------------------

def test_every_value_documented() -> None:
    """Each value is preceded by a `# --` comment block (children of a documented map are
    covered); a block may run over several `#` lines."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    documented_at: list[int] = []  # indents of documented ancestors
    key = re.compile(r"^(\s*)([A-Za-z][\w]*):(.*)$")
    for i, line in enumerate(lines):
        m = key.match(line)
        if not m:
            continue
        indent = len(m.group(1))
        documented_at = [d for d in documented_at if d < indent]
        comments = []
        for p in reversed(lines[:i]):
            if not p.strip().startswith("#"):
                break
            comments.append(p.strip())
        nxt = next((n for n in lines[i + 1:] if n.strip()), "")
        is_parent = (not m.group(3).strip()) and (len(nxt) - len(nxt.lstrip())) > indent
        if comments and comments[-1].startswith("# --"):
            documented_at.append(indent)
        elif not is_parent and not documented_at:
            missing.append(line.strip())
    assert not missing, f"values without a `# --` comment: {missing}"


def test_every_value_in_the_schema() -> None:
    """values.yaml and values.schema.json name the same keys (additionalProperties is false
    everywhere, so a value missing from the schema fails every render anyway; this names it)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(v: Any, s: dict[str, Any], path: str) -> list[str]:
        if not isinstance(v, dict) or "properties" not in s:
            return []
        out = []
        for k, child in v.items():
            if k not in s["properties"]:
                out.append(f"{path}{k}")
            else:
                out += walk(child, s["properties"][k], f"{path}{k}.")
        return out

    assert walk(values, schema, "") == []


def test_postgres_placement_values() -> None:
    docs = render("--set", "postgres.enabled=true", "--set", "postgres.auth.password=x",
                  "--set-string", "postgres.nodeSelector.disk=ssd",
                  "--set", "postgres.tolerations[0].key=dedicated",
                  "--set", "postgres.tolerations[0].operator=Exists")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = sts["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"disk": "ssd"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    plain = next(d for d in render("--set", "postgres.enabled=true", "--set",
                                   "postgres.auth.password=x") if d["kind"] == "StatefulSet")
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]
