"""charts/skiplock: helm lint --strict, rendering with the values the e2e suite uses, the
schema, and agreement with deploy/ (one CRD, one set of RBAC rules)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from skiplock_operator.models import parse_spec
from tests.conftest import ROOT

CHART = ROOT / "charts" / "skiplock"
KUBE_VERSION = "1.34.4"
E2E_VALUES = ["--set", "postgres.enabled=true", "--set", "postgres.auth.password=p@ss:w/rd",
              "--set", "postgres.image.repository=skiplock/postgres",
              "--set", "jobQueue.enabled=true"]


def helm_bin() -> Path:
    explicit = os.environ.get("SKIPLOCK_HELM_BIN")
    path = Path(explicit) if explicit else Path(
        os.environ.get("SKIPLOCK_KUBE_BIN_DIR", "/var/cache/skiplock/bin")) / "helm"
    if not path.exists():
        pytest.fail(f"helm not found at {path}: build it with `bash e2e/toolchain/tools.sh helm` "
                    "(or set SKIPLOCK_HELM_BIN)", pytrace=False)
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if args[0] == "template":  # offline there is no cluster to ask; render for the e2e version
        args = (*args, "--kube-version", KUBE_VERSION)
    r = subprocess.run([str(helm_bin()), *args], capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"helm {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
    return r


def render(*values: str) -> list[dict[str, Any]]:
    out = helm("template", "skiplock", str(CHART), "--namespace", "skiplock", "--include-crds",
               *values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_lint_strict_default_and_full() -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *E2E_VALUES)


def test_default_render_is_operator_only() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                     "Deployment", "ServiceAccount"]
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "operator"
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "skiplock/operator:0.1.0"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_e2e_values_render_database_and_jobqueue() -> None:
    docs = render(*E2E_VALUES)
    secret = next(d for d in by_kind(docs, "Secret")
                  if d["metadata"]["name"] == "skiplock-postgres")
    url = base64.b64decode(secret["data"]["url"]).decode()
    assert url == ("postgresql://skiplock:" + urllib.parse.quote_plus("p@ss:w/rd")
                   + "@skiplock-postgres.skiplock.svc:5432/skiplock")
    assert urllib.parse.unquote_plus(urllib.parse.urlsplit(url).password or "") == "p@ss:w/rd"
    sts = by_kind(docs, "StatefulSet")[0]
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "skiplock/postgres:15-bookworm"
    svc = by_kind(docs, "Service")[0]
    assert svc["metadata"]["name"] == "skiplock-postgres"
    jq = by_kind(docs, "JobQueue")[0]
    spec = parse_spec(jq["spec"])  # the operator accepts what the chart renders
    assert spec.database.url_secret_ref.name == "skiplock-postgres"
    assert spec.worker.image == "skiplock/worker:0.1.0"


def test_postgres_without_password_fails_clearly() -> None:
    r = helm("template", "x", str(CHART), "--set", "postgres.enabled=true", check=False)
    assert r.returncode != 0
    assert "postgres.auth.password is required" in r.stderr


def test_schema_rejects_bad_values() -> None:
    r = helm("template", "x", str(CHART), "--set", "jobQueue.scaling.maxReplicas=0", check=False)
    assert r.returncode != 0 and "maxReplicas" in r.stderr
    r = helm("template", "x", str(CHART), "--set", "operator.typo=1", check=False)
    assert r.returncode != 0 and "typo" in r.stderr


def test_crd_matches_deploy() -> None:
    assert (CHART / "crds" / "jobqueues.skiplock.dev.yaml").read_text() == \
        (ROOT / "deploy" / "00-crd.yaml").read_text()


def test_rbac_matches_deploy() -> None:
    chart_rules = by_kind(render(), "ClusterRole")[0]["rules"]
    deploy = next(d for d in yaml.safe_load_all((ROOT / "deploy" / "20-rbac.yaml").read_text())
                  if d and d["kind"] == "ClusterRole")
    assert chart_rules == deploy["rules"]


def test_every_value_documented() -> None:
    """Each value is preceded by a `# --` comment (children of a documented map are covered)."""
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
        prev = next((p.strip() for p in reversed(lines[:i]) if p.strip()), "")
        nxt = next((n for n in lines[i + 1:] if n.strip()), "")
        is_parent = (not m.group(3).strip()) and (len(nxt) - len(nxt.lstrip())) > indent
        if prev.startswith("# --"):
            documented_at.append(indent)
        elif not is_parent and not documented_at:
            missing.append(line.strip())
    assert not missing, f"values without a `# --` comment: {missing}"
