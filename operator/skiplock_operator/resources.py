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
# Time the worker gets after its drain deadline to flush completions before the kubelet's
# SIGKILL: SIGTERM -> grace for running jobs -> final flush -> exit.
FLUSH_MARGIN_SECONDS = 10


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
    if w.metrics_port is not None:
        env.append({"name": "SKIPLOCK_METRICS_PORT", "value": str(w.metrics_port)})
    names = {e["name"] for e in w.env}
    return [e for e in env if e["name"] not in names] + [dict(e) for e in w.env]


def pod_template(name: str, spec: JobQueueSpec) -> dict[str, Any]:
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
        "securityContext": {
            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
        },
    }
    if w.image_pull_policy:
        container["imagePullPolicy"] = w.image_pull_policy
    if w.metrics_port is not None:
        container["ports"] = [{"name": "metrics", "containerPort": w.metrics_port}]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": w.shutdown_grace_period_seconds + FLUSH_MARGIN_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                            "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [{"name": "tmp", "emptyDir": {}}],
        "automountServiceAccountToken": False,
    }
    container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]  # noqa: S108
    if w.service_account_name:
        pod_spec["serviceAccountName"] = w.service_account_name
    template: dict[str, Any] = {"metadata": {"labels": labels(name)}, "spec": pod_spec}
    if w.pod_template:
        template = deep_merge(template, w.pod_template)
        # Overrides may add labels but never break the selector that ties pods to us.
        template["metadata"]["labels"].update(selector_labels(name))
    return template


def spec_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    """True if ``obj`` has a controller owner reference to the object with ``uid``."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller") for r in refs)


def deployment(body: dict[str, Any], spec: JobQueueSpec, replicas: int) -> dict[str, Any]:
    """The whole worker Deployment. ``replicas`` is used on creation only; afterwards the
    operator changes replicas through the scale decision and nothing else."""
    name = body["metadata"]["name"]
    template = pod_template(name, spec)
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
    return out


def deletion_costs(pods: list[str], busy: dict[str, int]) -> dict[str, int]:
    """pod-deletion-cost per pod: the running jobs it holds, so idle pods (0) go first and the
    busiest last."""
    return {p: min(busy.get(p, 0), 2**31 - 1) for p in pods}
