"""The JobQueue spec as typed models.

The CRD schema (deploy/crd.yaml) rejects most bad specs at admission; these models check the
same rules again because a cluster may run an older CRD, or one installed without CEL, and a
bad spec must end as a condition that says what is wrong, never as a crashed handler.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from skiplock.names import queue_problem, schema_problem

from . import podtemplate

_APP = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$")


class _Model(BaseModel):
    # camelCase on the wire (Kubernetes style), snake_case in Python; unknown fields are an
    # error so a typo ("maxReplica") is reported instead of silently ignored.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="url", min_length=1, max_length=253)


class DatabaseSpec(_Model):
    url_secret_ref: SecretKeyRef
    # Behind a transaction pooler (PgBouncer): a direct URL for what a pooler cannot carry,
    # the workers' LISTEN (SKIPLOCK_LISTEN_URL), the operator's migrations and its NOTIFY
    # listener. Without it, pooled workers poll and spec.database.migrate must be false.
    direct_url_secret_ref: SecretKeyRef | None = None
    # "transaction": url_secret_ref is a transaction pooler's (SKIPLOCK_POOLER); unset, the
    # clients find it out when the pooler refuses their startup options.
    pooler: Literal["transaction"] | None = None
    schema_name: str = Field(default="skiplock", alias="schema")
    # The operator applies pending migrations (advisory-locked, idempotent) before it reads
    # stats: with minReplicas 0 no worker may ever start, so workers cannot be the ones to do it.
    migrate: bool = True
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, v: str) -> str:
        # The workers' own rule (skiplock.names): a schema they would refuse is refused here.
        problem = schema_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _migrate_needs_a_session(self) -> DatabaseSpec:
        if self.pooler is not None and self.migrate and self.direct_url_secret_ref is None:
            raise ValueError("migrations need a direct connection, not a transaction pooler: "
                             "set database.directUrlSecretRef to a direct URL's Secret, or "
                             "database.migrate: false and run `skiplock migrate` yourself")
        return self


class WorkerSpec(_Model):
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    app: str = Field(default="skiplock.demo_tasks:app")
    args: list[str] = Field(default_factory=list)
    env: list[dict[str, Any]] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    concurrency: int = Field(default=10, ge=1, le=10000)
    lease_seconds: float = Field(default=30.0, ge=1, le=86400)
    shutdown_grace_period_seconds: int = Field(default=30, ge=0, le=86400)
    # Always served: the liveness probe (GET /livez) and Prometheus (/metrics) use it.
    metrics_port: int = Field(default=9100, ge=1, le=65535)
    service_account_name: str | None = None
    # Pod template overrides, deep-merged into what the operator builds; only the fields in
    # podtemplate.py's allow-list (a JobQueue must not be a way to run a privileged pod).
    pod_template: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pod_template")
    @classmethod
    def _allowed_template(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = podtemplate.problems(v)
        if bad:
            raise ValueError("fields not allowed: " + "; ".join(bad) + " (podTemplate may set "
                             "labels, annotations, scheduling, imagePullSecrets, "
                             "secret/configMap/emptyDir/projected volumes and the worker "
                             "container's resources, env, envFrom, volumeMounts, probes, ports; "
                             "see docs/operator.md)")
        return v

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        if not _APP.match(v):
            raise ValueError("must look like 'package.module:attribute'")
        return v

    @field_validator("args")
    @classmethod
    def _no_url_in_args(cls, v: list[str]) -> list[str]:
        if any(a.startswith("--database-url") for a in v):
            raise ValueError("the database URL comes from spec.database.urlSecretRef, "
                             "never from args")
        return v

    @field_validator("env")
    @classmethod
    def _no_url_in_env(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(e.get("name") == "SKIPLOCK_DATABASE_URL" and "value" in e for e in v):
            raise ValueError("SKIPLOCK_DATABASE_URL must not be a literal value; "
                             "use spec.database.urlSecretRef")
        return v


class ScaleUpSpec(_Model):
    # HPA-like: per period, add at most max(pods, percent of the replicas at its start).
    pods: int = Field(default=4, ge=1, le=1000)
    percent: int = Field(default=100, ge=0, le=1000)
    period_seconds: float = Field(default=15, ge=1, le=3600)


class FallbackSpec(_Model):
    # KEDA's fallback: after this many failed stats reads in a row, run at least `replicas`.
    failure_threshold: int = Field(ge=1, le=1000)
    replicas: int = Field(ge=0, le=1000)


class ScalingSpec(_Model):
    min_replicas: int = Field(default=0, ge=0, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    jobs_per_replica: int = Field(default=10, ge=1, le=100000)
    activation_threshold: int = Field(default=0, ge=0)
    poll_interval_seconds: float = Field(default=15, ge=1, le=3600)
    scale_up: ScaleUpSpec = Field(default_factory=ScaleUpSpec)
    scale_down_stabilization_seconds: float = Field(default=300, ge=0, le=86400)
    paused: bool = False
    fallback: FallbackSpec | None = None
    # Scale from zero ahead of a schedule (docs/schedules.md): a JobQueue at 0 replicas whose
    # queues have a firing due within this many seconds gets a worker before the firing.
    schedule_lead_seconds: float = Field(default=60, ge=0, le=86400)

    @model_validator(mode="after")
    def _bounds(self) -> ScalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must be <= maxReplicas "
                             f"({self.max_replicas})")
        if self.fallback and self.fallback.replicas > self.max_replicas:
            raise ValueError(f"fallback.replicas ({self.fallback.replicas}) must be <= "
                             f"maxReplicas ({self.max_replicas})")
        return self


class JobQueueSpec(_Model):
    queues: list[str] = Field(min_length=1, max_length=64)
    database: DatabaseSpec
    worker: WorkerSpec
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)

    @field_validator("queues")
    @classmethod
    def _queues(cls, v: list[str]) -> list[str]:
        # The producers' rule (skiplock.names), so every queue a producer can fill is one the
        # operator can scale and the other way round. fullmatch: "mail\n" is not "mail".
        bad = [q for q in v if queue_problem(q)]
        if bad:
            raise ValueError(f"invalid queue name(s) {bad}: use letters, digits, '_.:-', "
                             "at most 128 characters")
        if len(set(v)) != len(v):
            raise ValueError("queue names must be unique")
        return v


class InvalidSpec(ValueError):
    """The spec does not parse; the message lists every problem by field path."""


_M = TypeVar("_M", bound=BaseModel)


def _parsed(model: type[_M], raw: Any) -> _M:
    """A custom resource's ``spec`` as ``model``, or InvalidSpec listing every problem by its
    field path (``spec.scaling.maxReplicas: ...``; ``spec: ...`` for the spec as a whole)."""
    try:
        return model.model_validate(dict(raw or {}))
    except ValidationError as exc:
        problems = ["spec" + "".join(f".{p}" for p in err["loc"]) + f": {err['msg']}"
                    for err in exc.errors()]
        raise InvalidSpec("; ".join(problems)) from None


def parse_spec(raw: Any) -> JobQueueSpec:
    return _parsed(JobQueueSpec, raw)


# -- JobSchedule (docs/schedules.md) -----------------------------------------------------------


class JobScheduleSpec(_Model):
    """A periodic job next to its JobQueue: the operator writes it into the JobQueue's
    database (skiplock_operator/schedules.py), where every worker's scheduler fires it."""

    job_queue_ref: str = Field(min_length=1, max_length=253)
    task: str = Field(min_length=1, max_length=256)
    # default: the JobQueue's first queue
    queue: str | None = Field(default=None, min_length=1, max_length=128)
    cron: str | None = Field(default=None, min_length=1, max_length=256)
    every_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    timezone: str = Field(default="UTC", min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    missed: Literal["skip", "once", "backfill"] = "once"
    backfill: int = Field(default=0, ge=0, le=1000)
    grace_seconds: float = Field(default=60, ge=0, le=31_536_000)
    jitter_seconds: float = Field(default=0, ge=0, le=86400)
    priority: int = Field(default=0, ge=-32768, le=32767)
    paused: bool = False

    @model_validator(mode="after")
    def _one_cadence(self) -> JobScheduleSpec:
        if (self.cron is None) == (self.every_seconds is None):
            raise ValueError("give exactly one of cron and everySeconds")
        if self.missed == "backfill" and self.backfill < 1:
            raise ValueError("missed: backfill needs backfill >= 1 (how many missed firings "
                             "to run)")
        return self


def parse_schedule_spec(raw: Any) -> JobScheduleSpec:
    return _parsed(JobScheduleSpec, raw)
