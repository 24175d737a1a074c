"""Builds the worker Deployment for a JobQueue: pure functions from the spec to a manifest."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from .models import JobQueueSpec

GROUP = "skiplock.dev"
VERSION = "v1alpha1"
PLURAL = "jobqueues"
KIND = "JobQueue"
MANAGED_BY = "skiplock-operator"
CONTAINER = "worker"
SPEC_HASH = f"{GROUP}/worker-spec-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# On the pod template: a salted digest of the database Secret's value, so rotating the Secret
# rolls the workers (they read it from the environment once, at start).
SECRET_CHECKSUM = f"{GROUP}/secret-checksum"
# `kubectl rollout restart` stamps this on the template: a restart, not drift to undo.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Time the worker gets after its drain deadline to flush completions before the kubelet's
# SIGKILL: SIGTERM -> grace for running jobs -> final flush -> exit.
FLUSH_MARGIN_SECONDS = 10
METRICS_PORT_NAME = "metrics"
# The worker answers GET /livez on its metrics port: 503 when one of its services died or the
# oldest outcome waiting to be written is older than half a lease. Such a worker must be
# restarted, not left claiming: its jobs' results are not reaching the database, and once its
# leases run out they would be run again elsewhere anyway. Three failures 10 s apart (about
# 30 s) ride out a slow scrape or a short database hiccup; the worker's own half-lease rule is
# what decides "stuck". Readiness stays unset on purpose: it is never a "busy" signal.
LIVENESS_PROBE: dict[str, Any] = {
    "httpGet": {"path": "/livez", "port": METRICS_PORT_NAME},
    "initialDelaySeconds": 10,
    "periodSeconds": 10,
    "timeoutSeconds": 5,
    "failureThreshold": 3,
}
_PROBE_HANDLERS = ("httpGet", "exec", "tcpSocket", "grpc")


def deployment_name(jobqueue: str) -> str:
    return f"{jobqueue}-worker"[:63].rstrip("-")


def selector_labels(jobqueue: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "skiplock-worker",
        "app.kubernetes.io/instance": jobqueue,
    }


def labels(jobqueue: str) -> dict[str, str]:
    return {
        **selector_labels(jobqueue),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "skiplock",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Dicts merge key by key; lists of named items (containers, env, volumes) merge by name;
    any other value in ``override`` replaces the base value."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            out[key] = deep_merge(old, value)
        elif (isinstance(old, list) and isinstance(value, list)
              and all(isinstance(i, dict) and "name" in i for i in [*old, *value])):
            merged = {i["name"]: i for i in old}
            for item in value:
                merged[item["name"]] = (deep_merge(merged[item["name"]], item)
                                        if item["name"] in merged else copy.deepcopy(item))
            out[key] = list(merged.values())
        else:
            out[key] = copy.deepcopy(value)
    return out


def worker_env(spec: JobQueueSpec) -> list[dict[str, Any]]:
    w, db = spec.worker, spec.database
    env: list[dict[str, Any]] = [
        # The URL stays in the Secret; the pod reads it from there, so it never appears in
        # the JobQueue or the Deployment.
        {"name": "SKIPLOCK_DATABASE_URL", "valueFrom": {"secretKeyRef": {
            "name": db.url_secret_ref.name, "key": db.url_secret_ref.key}}},
        # Workers record the pod name in locked_by; the operator maps running jobs to pods
        # with it to remove idle pods first.
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SKIPLOCK_SCHEMA", "value": db.schema_name},
        {"name": "SKIPLOCK_CONCURRENCY", "value": str(w.concurrency)},
        {"name": "SKIPLOCK_LEASE_SECONDS", "value": f"{w.lease_seconds:g}"},
        {"name": "SKIPLOCK_SHUTDOWN_GRACE", "value": str(w.shutdown_grace_period_seconds)},
        {"name": "SKIPLOCK_LOG_JSON", "value": "true"},
    ]
    if db.direct_url_secret_ref is not None:
        # LISTEN needs a session: through a transaction pooler it would be lost at the end
        # of each transaction, so wake-ups come over the direct URL
        env.append({"name": "SKIPLOCK_LISTEN_URL", "valueFrom": {"secretKeyRef": {
            "name": db.direct_url_secret_ref.name, "key": db.direct_url_secret_ref.key}}})
    if db.pooler is not None:
        env.append({"name": "SKIPLOCK_POOLER", "value": db.pooler})
    env.append({"name": "SKIPLOCK_METRICS_PORT", "value": str(w.metrics_port)})
    names = {e["name"] for e in w.env}
    return [e for e in env if e["name"] not in names] + [dict(e) for e in w.env]


def metrics_port(spec: JobQueueSpec) -> int:
    """The port the worker listens on: spec.worker.metricsPort, unless spec.worker.env sets
    SKIPLOCK_METRICS_PORT to a literal port (the env wins in the pod, so the probe follows it)."""
    for e in spec.worker.env:
        value = e.get("value")
        if e.get("name") == "SKIPLOCK_METRICS_PORT" and isinstance(value, str) \
                and value.isdigit() and 1 <= int(value) <= 65535:
            return int(value)
    return spec.worker.metrics_port


def _user_container(overrides: dict[str, Any]) -> dict[str, Any]:
    for c in (overrides.get("spec") or {}).get("containers") or []:
        if isinstance(c, dict) and c.get("name") == CONTAINER:
            return c
    return {}


def _merge_overrides(template: dict[str, Any], overrides: dict[str, Any],
                     port: int) -> dict[str, Any]:
    """podTemplate deep-merged over ours. Our livenessProbe may be tuned (its fields merge,
    e.g. a larger failureThreshold), given another handler (an exec, tcpSocket or grpc probe
    drops our httpGet: a probe has exactly one) or removed (``livenessProbe: null``). If the
    overrides' ``ports`` replaced ours, the named port the probe uses is declared again."""
    theirs = _user_container(overrides).get("livenessProbe")
    if isinstance(theirs, dict) and "httpGet" not in theirs \
            and any(h in theirs for h in _PROBE_HANDLERS):
        for c in template["spec"]["containers"]:
            c.get("livenessProbe", {}).pop("httpGet", None)
    out = deep_merge(template, overrides)
    for c in (out.get("spec") or {}).get("containers") or []:
        if not isinstance(c, dict) or c.get("name") != CONTAINER:
            continue
        if "livenessProbe" in c and c["livenessProbe"] is None:
            del c["livenessProbe"]
        probe = c.get("livenessProbe")
        get = probe.get("httpGet") if isinstance(probe, dict) else None
        if isinstance(get, dict) and get.get("port") == METRICS_PORT_NAME:
            if not isinstance(c.get("ports"), list):
                c["ports"] = []
            if not any(isinstance(p, dict) and p.get("name") == METRICS_PORT_NAME
                       for p in c["ports"]):
                c["ports"].append({"name": METRICS_PORT_NAME, "containerPort": port})
    return out


def pod_template(name: str, spec: JobQueueSpec, secret_checksum: str = "") -> dict[str, Any]:
    w = spec.worker
    args = ["worker", w.app]
    for q in spec.queues:
        args += ["--queue", q]
    args += ["--concurrency", str(w.concurrency), *w.args]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": w.image,
        "args": args,
        "env": worker_env(spec),
        "resources": dict(w.resources),
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
    }
    if w.image_pull_policy:
        container["imagePullPolicy"] = w.image_pull_policy
    port = metrics_port(spec)
    container["ports"] = [{"name": METRICS_PORT_NAME, "containerPort": port}]
    container["livenessProbe"] = copy.deepcopy(LIVENESS_PROBE)
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": w.shutdown_grace_period_seconds + FLUSH_MARGIN_SECONDS,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "automountServiceAccountToken": False,
    }
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    if w.service_account_name:
        pod_spec["serviceAccountName"] = w.service_account_name
    template: dict[str, Any] = {"metadata": {"labels": labels(name)}, "spec": pod_spec}
    if w.pod_template:
        template = _merge_overrides(template, w.pod_template, port)
        # Overrides may add labels but never break the selector that ties pods to us.
        template["metadata"]["labels"].update(selector_labels(name))
    harden(template)
    if secret_checksum:
        template["metadata"].setdefault("annotations", {})[SECRET_CHECKSUM] = secret_checksum
    return template


def harden(template: dict[str, Any]) -> None:
    """The security context, again, after the merge: podtemplate.py already refuses these
    fields, and this keeps a future allow-list mistake from reopening them."""
    spec = template["spec"]
    spec["securityContext"] = copy.deepcopy(POD_SECURITY)
    spec["automountServiceAccountToken"] = False
    for key in ("hostNetwork", "hostPID", "hostIPC", "initContainers", "ephemeralContainers"):
        spec.pop(key, None)
    spec["containers"] = [c for c in spec["containers"] if c.get("name") == CONTAINER]
    for c in spec["containers"]:
        c["securityContext"] = copy.deepcopy(CONTAINER_SECURITY)


def spec_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """True if ``obj`` has a controller owner reference to the object with ``uid``."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def deployment(body: dict[str, Any], spec: JobQueueSpec, replicas: int,
               secret_checksum: str = "") -> dict[str, Any]:
    """The whole worker Deployment. ``replicas`` is used on creation only; afterwards the
    operator changes replicas through the scale decision and nothing else."""
    name = body["metadata"]["name"]
    template = pod_template(name, spec, secret_checksum)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels(name),
            "annotations": {SPEC_HASH: spec_hash(template)},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            # Surge rather than take a busy worker away during a rollout.
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": template,
        },
    }


def for_update(desired: dict[str, Any], existing: dict[str, Any]) -> dict[str, Any]:
    """The object to PUT over ``existing``: our spec, but the replicas that run now and the
    resourceVersion we read (a concurrent change makes the PUT fail and the next poll retry).
    A PUT, not a merge patch, so a field removed from the JobQueue is removed here too."""
    out = copy.deepcopy(desired)
    meta = existing.get("metadata") or {}
    out["metadata"]["resourceVersion"] = meta.get("resourceVersion")
    out["metadata"]["labels"] = {**(meta.get("labels") or {}), **out["metadata"]["labels"]}
    out["metadata"]["annotations"] = {**(meta.get("annotations") or {}),
                                      **out["metadata"]["annotations"]}
    out["spec"]["replicas"] = (existing.get("spec") or {}).get("replicas", out["spec"]["replicas"])
    restarted = template_annotations(existing).get(RESTARTED_AT)
    if restarted:  # keep a `kubectl rollout restart` (undoing it would roll the pods again)
        out["spec"]["template"]["metadata"].setdefault("annotations", {})[RESTARTED_AT] = \
            restarted
    return out


def template_annotations(dep: dict[str, Any]) -> dict[str, Any]:
    """The pod template's annotations of a Deployment as read ({} when there are none)."""
    tpl = (dep.get("spec") or {}).get("template") or {}
    return dict((tpl.get("metadata") or {}).get("annotations") or {})


def template_fingerprint(dep: dict[str, Any]) -> str:
    """A digest of the pod template as the API server stores it (defaults filled in), minus
    a rollout restart's stamp: it changes when someone edits the template."""
    tpl = copy.deepcopy((dep.get("spec") or {}).get("template") or {})
    annotations = (tpl.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(RESTARTED_AT, None)
    return hashlib.sha256(json.dumps(tpl, sort_keys=True).encode()).hexdigest()[:16]


def contains(actual: Any, wanted: Any) -> bool:
    """True if every field of ``wanted`` is in ``actual`` with the same value; ``actual`` may
    have more (what the API server defaults). Lists must match item by item."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            k in actual and contains(actual[k], v) for k, v in wanted.items()
            if v not in ({}, [], None) or k in actual)
    if isinstance(wanted, list):
        return (isinstance(actual, list) and len(actual) == len(wanted)
                and all(contains(a, w) for a, w in zip(actual, wanted, strict=True)))
    return bool(actual == wanted)


def drifted(existing: dict[str, Any], desired: dict[str, Any], applied: str | None) -> bool:
    """Does ``existing`` need our template again? Yes when the JobQueue (or the Secret's
    checksum) changed it, or when the stored template is not the one we last wrote
    (``applied``, its fingerprint) — someone edited it. Without a fingerprint (the operator
    restarted, a new leader) the test is weaker: every field we set must still hold."""
    ours = desired["metadata"]["annotations"][SPEC_HASH]
    if ((existing.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH) != ours:
        return True
    if applied is not None:
        return template_fingerprint(existing) != applied
    return not contains((existing.get("spec") or {}).get("template"),
                        desired["spec"]["template"])


def deletion_costs(pods: list[str], busy: dict[str, int]) -> dict[str, int]:
    """pod-deletion-cost per pod: the running jobs it holds, so idle pods (0) go first and the
    busiest last."""
    return {p: min(busy.get(p, 0), 2**31 - 1) for p in pods}
