"""A fake Kube (in memory, counting calls) and a controller whose database read is canned:
for unit tests of the controller's phases and the status it builds. The real API server and
Postgres are in tests/integration/operator/."""

from __future__ import annotations

import base64
import copy
import itertools
from collections import Counter
from typing import Any

from kubernetes.client.exceptions import ApiException

from skiplock import inspection
from skiplock_operator.controller import QueueController
from skiplock_operator.kube import Forbidden, SecretProblem, SecretValue, data_checksum
from skiplock_operator.models import JobQueueSpec
from skiplock_operator.scaling import Policy
from skiplock_operator.settings import OperatorSettings

NS, NAME, UID = "ns", "jq", "uid-1"


class FakeKube:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, str]] = {
            "db": {"url": base64.b64encode(b"postgresql://u:pw@h/db").decode()}}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str, str]] = []
        self.calls: Counter[str] = Counter()
        self.forbid: set[str] = set()       # "verb resource" refused with 403
        self.fail_scale: int | None = None  # HTTP status for the next scale call
        self._rv = itertools.count(1)

    def _count(self, verb: str, resource: str) -> None:
        self.calls[verb] += 1
        if f"{verb} {resource}" in self.forbid:
            raise Forbidden(403, verb, resource, NS)

    def secret_value(self, namespace: str, name: str, key: str, salt: str = "") -> SecretValue:
        self._count("get", "secrets")
        data = self.secrets.get(name)
        if data is None:
            raise SecretProblem("SecretNotFound", f"Secret {namespace}/{name} does not exist")
        if key not in data:
            raise SecretProblem("SecretKeyNotFound", f"Secret {namespace}/{name} has no {key}")
        return SecretValue(base64.b64decode(data[key]).decode(),
                           data_checksum(salt, {key: data[key]}))

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._count("get", "deployments")
        dep = self.deployments.get(name)
        return copy.deepcopy(dep) if dep else None

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        dep = copy.deepcopy(body)
        dep["metadata"]["resourceVersion"] = str(next(self._rv))
        # what the API server defaults: a protocol on each port
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports") or []:
                p.setdefault("protocol", "TCP")
        dep.setdefault("status", {})
        self.deployments[dep["metadata"]["name"]] = dep
        return copy.deepcopy(dep)

    def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._count("create", "deployments")
        return self._store(body)

    def replace_deployment(self, namespace: str, name: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        self._count("update", "deployments")
        return self._store(body)

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self._count("patch", "deployments/scale")
        if self.fail_scale is not None:
            status, self.fail_scale = self.fail_scale, None
            raise ApiException(status=status, reason="Conflict")
        self.deployments[name]["spec"]["replicas"] = replicas

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        self._count("list", "pods")
        return []

    def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self._count("patch", "pods")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._count("patch", "jobqueues/status")
        self.statuses.append(copy.deepcopy(status))

    def event(self, body: dict[str, Any], type_: str, reason: str, message: str,
              instance: str = "") -> None:
        self._count("create", "events")
        self.events.append((type_, reason, message))


def stats(queue: str = "default", runnable: int = 0, in_flight: int = 0,
          paused: bool = False) -> inspection.QueueStats:
    return inspection.QueueStats(queue=queue, runnable=runnable, scheduled=0,
                                 in_flight=in_flight, stuck=0, dead=0, dead_last_hour=0,
                                 high_retry=0, oldest_runnable_age=None, paused=paused)


class CannedController(QueueController):
    """The database read replaced by canned numbers (None: the database is down)."""

    canned: list[inspection.QueueStats] | None = None

    def _read_load(self, body: dict[str, Any], secret: SecretValue | SecretProblem,
                   spec: JobQueueSpec, policy: Policy, direct: SecretValue | None = None
                   ) -> tuple[list[inspection.QueueStats], tuple[str, str] | None]:
        if isinstance(secret, SecretProblem):
            return [], (secret.reason, str(secret))
        if self.canned is None:
            return [], ("DatabaseUnavailable", "connection refused")
        return list(self.canned), None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def body(generation: int = 1, **scaling: Any) -> dict[str, Any]:
    return {"metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": generation},
            "spec": {"queues": ["default"], "database": {"urlSecretRef": {"name": "db"}},
                     "worker": {"image": "w"},
                     "scaling": {"pollIntervalSeconds": 1, "jobsPerReplica": 10,
                                 "scaleDownStabilizationSeconds": 0, **scaling}},
            "status": {}}


def controller(kube: FakeKube, clock: Clock | None = None,
               **settings: Any) -> CannedController:
    s = OperatorSettings(warning_repeat_seconds=0, identity="me", **settings)
    return CannedController(kube, s, NS, NAME, clock=clock or Clock())  # type: ignore[arg-type]
