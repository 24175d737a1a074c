"""Operator configuration from the environment (prefix ``SKIPLOCK_OPERATOR_``)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _pod_name() -> str:
    # The Downward API's metadata.name (POD_NAME, unprefixed like the workers' own), else the
    # host name, which is the pod name in a pod too.
    return os.environ.get("POD_NAME") or socket.gethostname()


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_OPERATOR_", extra="ignore")

    # Empty: watch JobQueues in every namespace (needs the ClusterRole in deploy/rbac.yaml).
    namespaces: list[str] = Field(default_factory=list)
    liveness_endpoint: str | None = "http://0.0.0.0:8080/healthz"
    metrics_port: int | None = Field(default=9090, ge=0, le=65535)
    # kopf watches can go silent without an error (kopf #585, #957); asking the API server to
    # end each watch, and giving up on a quiet connection client-side, makes kopf re-list.
    # An integer: the API server rejects "timeoutSeconds=30.0".
    watch_server_timeout: int = Field(default=300, gt=0)
    watch_client_timeout: float = Field(default=330, gt=0)
    watch_connect_timeout: float = Field(default=10, gt=0)
    # Every Kubernetes call the poll makes gives up after this long (connect and read): the
    # client's default is to wait forever, and one half-open connection would freeze a
    # JobQueue's poll for good.
    kube_timeout: float = Field(default=10, gt=0, le=300)
    # Counts are capped at what can change the decision (maxReplicas * jobsPerReplica), but
    # never below this, so the status stays informative on small queues. 1000 keeps a poll at
    # ~7 ms on a 1M-row table where 10 000 costs ~34 ms (benchmarks/backlog_query.py).
    count_cap_floor: int = Field(default=1_000, ge=1)
    # A Warning event for the same ongoing database outage is repeated at most this often.
    warning_repeat_seconds: float = Field(default=300, ge=0)
    # The status is written when it changed, else at most this often (lastPollTime then shows
    # the operator is alive): a busy JobQueue polled every second costs no status write.
    status_heartbeat_seconds: float = Field(default=60, ge=0)
    # Liveness fails when a JobQueue's last completed poll is older than
    # max(liveness_poll_factor * pollInterval, liveness_min_seconds).
    liveness_poll_factor: float = Field(default=3, gt=0)
    liveness_min_seconds: float = Field(default=60, gt=0)
    # Threads running polls: the pool grows with the JobQueues (one per JobQueue up to this),
    # so a JobQueue stuck on an unreachable database never waits for another's thread.
    max_poll_threads: int = Field(default=256, ge=1)
    # Leader election on a coordination.k8s.io/v1 Lease: only the holder scales, writes
    # status and posts events. Off: this replica always leads (one replica only).
    leader_election: bool = True
    lease_name: str = "skiplock-operator"
    # Empty: the namespace this pod runs in (the service account's), else "default".
    lease_namespace: str = ""
    lease_duration_seconds: float = Field(default=15, gt=0)
    renew_deadline_seconds: float = Field(default=10, gt=0)
    retry_period_seconds: float = Field(default=2, gt=0)
    # Holder identity: the pod name (unique among the replicas, and what `kubectl get lease`
    # then shows).
    identity: str = Field(default_factory=_pod_name, min_length=1)
    log_json: bool = False

    @model_validator(mode="after")
    def _lease_timing(self) -> OperatorSettings:
        if not (self.retry_period_seconds < self.renew_deadline_seconds
                < self.lease_duration_seconds):
            raise ValueError("need retry_period_seconds < renew_deadline_seconds < "
                             "lease_duration_seconds (a leader must give up before its "
                             "lease can be taken)")
        return self

    def resolved_lease_namespace(self) -> str:
        if self.lease_namespace:
            return self.lease_namespace
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"
