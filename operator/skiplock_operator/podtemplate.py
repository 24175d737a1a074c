"""What ``spec.worker.podTemplate`` may set: the fields a worker needs, nothing that widens
what the pod may do on its node or in the cluster.

Whoever may create a JobQueue gets a Deployment made by the operator's service account; a
free-form template would let them run a privileged pod, mount a host path or borrow a service
account's token through it. So the template is checked against an allow-list, field by field,
and the hardened security context is applied again after the merge (resources.py).
"""

from __future__ import annotations

from typing import Any

METADATA_FIELDS = frozenset({"labels", "annotations"})
POD_FIELDS = frozenset({
    "containers", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints",
    "priorityClassName", "imagePullSecrets", "volumes", "dnsConfig",
})
# The worker container only (no sidecars or init containers: each would be a new image with
# its own security context to police).
CONTAINER_FIELDS = frozenset({
    "name", "resources", "env", "envFrom", "volumeMounts", "livenessProbe", "readinessProbe",
    "startupProbe", "ports", "imagePullPolicy",
})
# hostPort/hostIP would bind the node's own ports (Pod Security "baseline" forbids it)
PORT_FIELDS = frozenset({"containerPort", "name", "protocol"})
VOLUME_KINDS = frozenset({"secret", "configMap", "emptyDir", "projected"})
# serviceAccountToken is left out: it would mint a token for the pod's service account,
# which the operator deliberately does not mount.
PROJECTED_SOURCES = frozenset({"secret", "configMap", "downwardAPI"})
CONTAINER = "worker"


def _unknown(obj: dict[str, Any], allowed: frozenset[str], where: str) -> list[str]:
    return [f"{where}.{k}" for k in sorted(obj) if k not in allowed]


def problems(template: Any) -> list[str]:
    """Every field of ``template`` the operator refuses, by path (empty: acceptable)."""
    if not isinstance(template, dict):
        return ["podTemplate must be an object"]
    where = "podTemplate"
    out = _unknown(template, frozenset({"metadata", "spec"}), where)
    meta = template.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            out.append(f"{where}.metadata must be an object")
        else:
            out += _unknown(meta, METADATA_FIELDS, f"{where}.metadata")
    spec = template.get("spec")
    if spec is None:
        return out
    if not isinstance(spec, dict):
        return [*out, f"{where}.spec must be an object"]
    out += _unknown(spec, POD_FIELDS, f"{where}.spec")
    for i, c in enumerate(spec.get("containers") or []):
        at = f"{where}.spec.containers[{i}]"
        if not isinstance(c, dict) or c.get("name") != CONTAINER:
            out.append(f"{at}: only the container named {CONTAINER!r} may be set")
            continue
        out += _unknown(c, CONTAINER_FIELDS, at)
        for j, port in enumerate(c.get("ports") or []):
            if not isinstance(port, dict):
                out.append(f"{at}.ports[{j}] must be an object")
            else:
                out += _unknown(port, PORT_FIELDS, f"{at}.ports[{j}]")
    for i, v in enumerate(spec.get("volumes") or []):
        at = f"{where}.spec.volumes[{i}]"
        if not isinstance(v, dict):
            out.append(f"{at} must be an object")
            continue
        kinds = [k for k in v if k != "name"]
        bad = [k for k in kinds if k not in VOLUME_KINDS]
        if bad:
            out.append(f"{at}.{bad[0]}: volume kind not allowed (only "
                       f"{', '.join(sorted(VOLUME_KINDS))})")
        projected = v.get("projected")
        if isinstance(projected, dict):
            for j, src in enumerate(projected.get("sources") or []):
                if isinstance(src, dict):
                    out += [f"{at}.projected.sources[{j}].{k}: projected source not allowed "
                            f"(only {', '.join(sorted(PROJECTED_SOURCES))})"
                            for k in sorted(src) if k not in PROJECTED_SOURCES]
    return out
