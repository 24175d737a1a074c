"""Operator configuration from the environment (prefix ``SKIPLOCK_OPERATOR_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Counts are capped at what can change the decision (maxReplicas * jobsPerReplica), but
    # never below this, so the status stays informative on small queues. 1000 keeps a poll at
    # ~7 ms on a 1M-row table where 10 000 costs ~34 ms (benchmarks/backlog_query.py).
    count_cap_floor: int = Field(default=1_000, ge=1)
    # A Warning event for the same ongoing database outage is repeated at most this often.
    warning_repeat_seconds: float = Field(default=300, ge=0)
    log_json: bool = False
