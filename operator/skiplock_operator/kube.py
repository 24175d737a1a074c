"""The Kubernetes API calls the operator makes, behind a small typed interface (the
kubernetes client is synchronous: the handlers call this from a thread).

Every call has a timeout (the client's default is none) and is counted in
``skiplock_operator_kube_calls_total{verb}``; a 401/403 becomes ``Forbidden``, which names
the verb, resource and namespace that were refused, never the API server's body.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import metrics
from .resources import GROUP, KIND, PLURAL, VERSION

COMPONENT = "skiplock-operator"
T = TypeVar("T")


class SecretProblem(Exception):
    """The database Secret or its key is missing; the message names both, never the value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Forbidden(Exception):
    """The API server refused a call (401/403): which permission is missing."""

    def __init__(self, status: int, verb: str, resource: str, namespace: str) -> None:
        self.status, self.verb, self.resource, self.namespace = status, verb, resource, namespace
        self.reason = "Unauthorized" if status == 401 else "Forbidden"
        where = f"in namespace {namespace}" if namespace else "cluster-wide"
        what = ("the operator's credentials were rejected (HTTP 401)" if status == 401 else
                f"the operator may not {verb} {resource} {where} (HTTP 403)")
        super().__init__(f"{what}; grant the operator's service account "
                         f"'{verb}' on '{resource}' {where} (see the chart's RBAC)")


@dataclass(frozen=True)
class SecretValue:
    value: str
    checksum: str   # changes when the Secret's data changes; reveals nothing of it


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # Read KUBECONFIG now: the client's own default was fixed when it was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    cfg = client.Configuration.get_default_copy()
    # No retries inside a call: urllib3's default (3) would turn a 10 s timeout into 40 s.
    # The poll itself is the retry, on its next round.
    cfg.retries = 0
    return client.ApiClient(cfg)


def data_checksum(salt: str, data: dict[str, str]) -> str:
    """A digest of a Secret's data salted with the JobQueue's uid (the same password in two
    namespaces does not give the same annotation). Put on the pod template, so a change of
    the Secret rolls the workers."""
    h = hashlib.sha256(salt.encode())
    for key in sorted(data):
        h.update(b"\0" + key.encode() + b"\0" + data[key].encode())
    return h.hexdigest()[:20]


class Kube:
    def __init__(self, api: client.ApiClient, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    def call(self, verb: str, resource: str, namespace: str, fn: Callable[..., T],
             *args: Any, **kwargs: Any) -> T:
        """One API call with the timeout (connect, read), counted; 401/403 -> Forbidden."""
        metrics.KUBE_CALLS.labels(verb).inc()
        try:
            return fn(*args, _request_timeout=(self.timeout, self.timeout), **kwargs)
        except ApiException as exc:
            if exc.status in (401, 403):
                text = exc.body if isinstance(exc.body, str) else ""
                if "blockOwnerDeletion" in text:
                    # OwnerReferencesPermissionEnforcement: the owner reference's
                    # blockOwnerDeletion needs this, not the Deployment permission
                    raise Forbidden(403, "update", f"{PLURAL}/finalizers", namespace) from None
                raise Forbidden(exc.status, verb, resource, namespace) from None
            raise

    # -- secrets --------------------------------------------------------------------------

    def secret_value(self, namespace: str, name: str, key: str, salt: str = "") -> SecretValue:
        try:
            secret = self.call("get", "secrets", namespace, self.core.read_namespaced_secret,
                               name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretProblem("SecretNotFound",
                                    f"Secret {namespace}/{name} (spec.database.urlSecretRef) "
                                    "does not exist; create it with the database URL "
                                    f"under key {key!r}") from None
            raise
        data = secret.data or {}
        if key not in data:
            raise SecretProblem("SecretKeyNotFound",
                                f"Secret {namespace}/{name} has no key {key!r} "
                                f"(it has: {sorted(data) or 'no keys'})")
        return SecretValue(base64.b64decode(data[key]).decode(),
                           data_checksum(salt, {key: str(data[key])}))

    # -- deployments ----------------------------------------------------------------------

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.call("get", "deployments", namespace,
                                         self.apps.read_namespaced_deployment, name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(self.call("create", "deployments", namespace,
                                     self.apps.create_namespaced_deployment, namespace,
                                     cast(Any, body)))

    def replace_deployment(self, namespace: str, name: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(self.call("update", "deployments", namespace,
                                     self.apps.replace_namespaced_deployment, name, namespace,
                                     cast(Any, body)))

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.call("patch", "deployments/scale", namespace,
                  self.apps.patch_namespaced_deployment_scale, name, namespace,
                  {"spec": {"replicas": replicas}})

    # -- pods -----------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self.call("list", "pods", namespace, self.core.list_namespaced_pod, namespace,
                         label_selector=text)
        return [self._plain(p) for p in pods.items]

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        try:
            self.call("patch", "pods", namespace, self.core.patch_namespaced_pod, name,
                      namespace, {"metadata": {"annotations": annotations}})
        except ApiException as exc:
            if exc.status != 404:  # the pod went away meanwhile: nothing to mark
                raise

    # -- the JobQueue ---------------------------------------------------------------------

    def remove_jobqueue_finalizer(self, namespace: str, name: str, finalizers: list[str],
                                  finalizer: str) -> None:
        """Remove one finalizer by a JSON patch that first tests it is still at its index, so
        a finalizer another controller added meanwhile is never dropped with it (the patch
        fails instead and the next event tries again)."""
        i = finalizers.index(finalizer)
        path = f"/metadata/finalizers/{i}"
        self.call("patch", PLURAL, namespace, self.custom.patch_namespaced_custom_object,
                  GROUP, VERSION, namespace, PLURAL, name,
                  [{"op": "test", "path": path, "value": finalizer},
                   {"op": "remove", "path": path}])

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.call("patch", f"{PLURAL}/status", namespace,
                  self.custom.patch_namespaced_custom_object_status,
                  GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str,
              instance: str = COMPONENT) -> None:
        meta = body["metadata"]
        now = dt.datetime.now(dt.UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(
                name=f"{meta['name']}.{secrets.token_hex(8)}", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion")),
            type=type_, reason=reason, message=message[:1024],
            first_timestamp=now, last_timestamp=now, count=1,
            source=client.V1EventSource(component=COMPONENT),
            reporting_component=COMPONENT, reporting_instance=instance[:128],
        )
        self.call("create", "events", meta["namespace"], self.core.create_namespaced_event,
                  meta["namespace"], event)

    # -- the Lease (leader election) ---------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.call("get", "leases", namespace,
                                         self.coordination.read_namespaced_lease, name,
                                         namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(self.call("create", "leases", namespace,
                                     self.coordination.create_namespaced_lease, namespace,
                                     cast(Any, body)))

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(self.call("update", "leases", namespace,
                                     self.coordination.replace_namespaced_lease, name,
                                     namespace, cast(Any, body)))
