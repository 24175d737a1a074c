"""The Kubernetes API calls the operator makes, behind a small typed interface (the
kubernetes client is synchronous: the handlers call this from a thread)."""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .resources import GROUP, KIND, PLURAL, VERSION

COMPONENT = "skiplock-operator"


class SecretProblem(Exception):
    """The database Secret or its key is missing; the message names both, never the value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # Read KUBECONFIG now: the client's own default was fixed when it was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

    # -- secrets --------------------------------------------------------------------------

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
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
        return base64.b64decode(data[key]).decode()

    # -- deployments ----------------------------------------------------------------------

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.apps.read_namespaced_deployment(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._plain(self.apps.create_namespaced_deployment(namespace, cast(Any, body)))

    def replace_deployment(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.apps.replace_namespaced_deployment(name, namespace, cast(Any, body))

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment_scale(name, namespace,
                                                    {"spec": {"replicas": replicas}})

    # -- pods -----------------------------------------------------------------------------

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self.core.list_namespaced_pod(namespace, label_selector=text)
        return [self._plain(p) for p in pods.items]

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        try:
            self.core.patch_namespaced_pod(name, namespace,
                                           {"metadata": {"annotations": annotations}})
        except ApiException as exc:
            if exc.status != 404:  # the pod went away meanwhile: nothing to mark
                raise

    # -- the JobQueue ---------------------------------------------------------------------

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
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
            reporting_component=COMPONENT, reporting_instance=COMPONENT,
        )
        self.core.create_namespaced_event(meta["namespace"], event)
