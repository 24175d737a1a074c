"""One JobQueue's reconcile loop body: spec -> Secret -> Deployment -> stats -> decision ->
scale -> status. Synchronous (the kubernetes client and the Database are); the kopf daemon
runs ``poll()`` in a thread once per poll interval.

Nothing here may raise out of ``poll()`` for a known problem: every failure becomes a
condition, an event and a held replica count, and the next poll tries again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from skiplock import inspect as inspection
from skiplock.db import Database
from skiplock.errors import ConfigurationError, DatabaseUnavailable, SkiplockError

from . import conditions as cond
from . import metrics, resources
from .kube import Kube, SecretProblem
from .models import InvalidSpec, JobQueueSpec, parse_spec
from .scaling import Decision, History, Load, Policy, decide
from .settings import OperatorSettings

log = logging.getLogger("skiplock.operator")
DEFAULT_POLL = 15.0


def api_message(exc: ApiException) -> str:
    """The API server's own explanation (Status.message), else the HTTP reason."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def policy_of(spec: JobQueueSpec) -> Policy:
    s = spec.scaling
    return Policy(min_replicas=s.min_replicas, max_replicas=s.max_replicas,
                  jobs_per_replica=s.jobs_per_replica,
                  activation_threshold=s.activation_threshold,
                  scale_up_pods=s.scale_up.pods, scale_up_percent=s.scale_up.percent,
                  scale_up_period=s.scale_up.period_seconds,
                  scale_down_window=s.scale_down_stabilization_seconds, paused=s.paused,
                  fallback_failures=s.fallback.failure_threshold if s.fallback else 0,
                  fallback_replicas=s.fallback.replicas if s.fallback else 0)


@dataclass
class _Db:
    key: str
    db: Database
    migrated: bool = False


class QueueController:
    def __init__(self, kube: Kube, settings: OperatorSettings, namespace: str, name: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = namespace
        self.name = name
        self.clock = clock
        self.history: History | None = None
        self.failures = 0  # consecutive polls without stats
        # (url, schema, queues) of the last successful read: what the NOTIFY listener follows.
        self.listen_target: tuple[str, str, tuple[str, ...]] | None = None
        self._db: _Db | None = None
        self._last_warning: dict[str, float] = {}

    def close(self) -> None:
        if self._db is not None:
            self._db.db.close()
            self._db = None

    # -- helpers ----------------------------------------------------------------------------

    def _warn(self, body: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event, repeated for the same reason at most every warning_repeat_seconds
        (an outage polled every few seconds must not flood the event store)."""
        now = self.clock()
        last = self._last_warning.get(reason)
        if last is not None and now - last < self.settings.warning_repeat_seconds:
            return
        self._last_warning[reason] = now
        self._event(body, "Warning", reason, message)

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        try:
            self.kube.event(body, type_, reason, message)
        except ApiException as exc:  # an event is best effort; the status says it all too
            log.warning("could not post event %s for %s/%s: %s", reason, self.namespace,
                        self.name, exc.reason)

    def _database(self, url: str, spec: JobQueueSpec) -> Database:
        key = hashlib.sha256(
            f"{url}\0{spec.database.schema_name}\0{spec.database.connect_timeout_seconds}"
            .encode()).hexdigest()
        if self._db is None or self._db.key != key:
            self.close()
            timeout = spec.database.connect_timeout_seconds
            self._db = _Db(key, Database(url, schema=spec.database.schema_name,
                                         connect_timeout=timeout, statement_timeout=timeout,
                                         max_size=2, application_name="skiplock-operator"))
        if spec.database.migrate and not self._db.migrated:
            applied = self._db.db.migrate()
            if applied:
                log.info("%s/%s: applied migrations %s", self.namespace, self.name, applied)
            self._db.migrated = True
        return self._db.db

    def _clear_warning(self, reason: str) -> None:
        self._last_warning.pop(reason, None)

    # -- the poll -----------------------------------------------------------------------------

    def poll(self, body: dict[str, Any]) -> float:
        """One reconcile; returns the seconds until the next one."""
        meta, status = body["metadata"], dict(body.get("status") or {})
        generation = meta.get("generation")
        conditions: list[dict[str, Any]] = list(status.get("conditions") or [])
        labels = (self.namespace, self.name)

        def finish(extra: dict[str, Any]) -> None:
            new = {**extra, "conditions": conditions, "observedGeneration": generation}
            self.kube.patch_status(self.namespace, self.name, new)

        try:
            spec = parse_spec(body.get("spec"))
        except InvalidSpec as exc:
            conditions = cond.set_condition(conditions, cond.READY, False, "InvalidSpec",
                                            str(exc), generation)
            conditions = cond.set_condition(conditions, cond.SCALING, False, "InvalidSpec",
                                            "not scaling until the spec is fixed", generation)
            self._warn(body, "InvalidSpec", str(exc))
            metrics.RECONCILE_ERRORS.labels(*labels, "InvalidSpec").inc()
            finish({})
            return DEFAULT_POLL
        self._clear_warning("InvalidSpec")
        poll_interval = spec.scaling.poll_interval_seconds
        policy = policy_of(spec)

        # The URL only lives in memory: never in status, events, logs or the Deployment.
        ref = spec.database.url_secret_ref
        try:
            url: str | None = self.kube.secret_value(self.namespace, ref.name, ref.key)
            self._clear_warning("SecretProblem")
        except SecretProblem as exc:
            url = None
            secret_problem: SecretProblem | None = exc
        else:
            secret_problem = None

        dep_name = resources.deployment_name(self.name)
        existing = self.kube.get_deployment(self.namespace, dep_name)
        desired_dep = resources.deployment(
            body, spec, replicas=self._initial_replicas(status, policy))
        rejected: str | None = None
        if existing is not None and not resources.owned_by(existing, meta.get("uid", "")):
            # Someone else's Deployment (or one left by a deleted JobQueue of the same name,
            # waiting for garbage collection): never take it over or scale it.
            message = (f"Deployment {self.namespace}/{dep_name} exists and is not owned by this "
                       "JobQueue; rename or delete it (a leftover of a deleted JobQueue goes "
                       "away with garbage collection)")
            conditions = cond.set_condition(conditions, cond.READY, False, "DeploymentConflict",
                                            message, generation)
            conditions = cond.set_condition(conditions, cond.SCALING, False,
                                            "DeploymentConflict", "not scaling a Deployment "
                                            "this JobQueue does not own", generation)
            self._warn(body, "DeploymentConflict", message)
            metrics.RECONCILE_ERRORS.labels(*labels, "DeploymentConflict").inc()
            finish({})
            return poll_interval
        self._clear_warning("DeploymentConflict")
        try:
            if existing is None:
                existing = self.kube.create_deployment(self.namespace, desired_dep)
                self._event(body, "Normal", "DeploymentCreated",
                            f"created Deployment {dep_name} with "
                            f"{desired_dep['spec']['replicas']} replica(s)")
            elif ((existing["metadata"].get("annotations") or {}).get(resources.SPEC_HASH)
                  != desired_dep["metadata"]["annotations"][resources.SPEC_HASH]):
                self.kube.replace_deployment(self.namespace, dep_name,
                                             resources.for_update(desired_dep, existing))
                self._event(body, "Normal", "DeploymentUpdated",
                            f"applied the JobQueue spec to Deployment {dep_name}")
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            # The schema cannot check a free-form podTemplate; the API server's verdict on
            # the Deployment built from it is the user's answer.
            rejected = (f"the API server rejected Deployment {dep_name}: {api_message(exc)}; "
                        "fix spec.worker (podTemplate, env, resources)")
            self._warn(body, "DeploymentRejected", rejected)
            metrics.RECONCILE_ERRORS.labels(*labels, "DeploymentRejected").inc()
        else:
            self._clear_warning("DeploymentRejected")
        if existing is None:
            assert rejected is not None
            conditions = cond.set_condition(conditions, cond.READY, False, "DeploymentRejected",
                                            rejected, generation)
            conditions = cond.set_condition(conditions, cond.SCALING, False,
                                            "DeploymentRejected",
                                            "no worker Deployment to scale", generation)
            finish({})
            return poll_interval
        current = int((existing.get("spec") or {}).get("replicas") or 0)
        ready = int((existing.get("status") or {}).get("readyReplicas") or 0)

        stats: inspection.QueueStats | None = None
        per_queue: list[inspection.QueueStats] = []
        if secret_problem is not None:
            conditions = cond.set_condition(conditions, cond.DATABASE_REACHABLE, False,
                                            secret_problem.reason, str(secret_problem),
                                            generation)
            self._warn(body, "SecretProblem", str(secret_problem))
            metrics.RECONCILE_ERRORS.labels(*labels, secret_problem.reason).inc()
        else:
            assert url is not None
            per_queue, db_error = self._read_stats(url, spec, policy)
            stats = inspection.totals(per_queue) if per_queue else None
            if stats is None:
                conditions = cond.set_condition(conditions, cond.DATABASE_REACHABLE, False,
                                                db_error[0], db_error[1], generation)
                self._warn(body, db_error[0], db_error[1])
                metrics.RECONCILE_ERRORS.labels(*labels, db_error[0]).inc()
            else:
                self.listen_target = (url, spec.database.schema_name, tuple(spec.queues))
                for reason in ("DatabaseUnavailable", "DatabaseUrlInvalid", "QueryFailed"):
                    self._clear_warning(reason)
                conditions = cond.set_condition(
                    conditions, cond.DATABASE_REACHABLE, True, "StatsRead",
                    f"read stats for queue(s) {', '.join(spec.queues)}", generation)
        metrics.DATABASE_UP.labels(*labels).set(1 if stats is not None else 0)

        now = self.clock()
        if self.history is None:
            # First poll since the operator (re)started: act as if the current count had just
            # been recommended, so a restart never scales down before a full window has passed.
            self.history = History.seeded(now, current)
        # A queue paused in the database (skiplock queue pause) is claimed by no worker, so its
        # waiting jobs ask for no replicas (its running ones still count). With every queue
        # paused the decision also never scales up (scaling.paused_load says why).
        load = (Load(sum(q.backlog for q in per_queue if not q.paused), stats.in_flight)
                if stats is not None else None)
        self.failures = 0 if load is not None else self.failures + 1
        all_paused = stats is not None and stats.paused
        decision = decide(policy, load, current, self.history, now, self.failures,
                          queues_paused=all_paused)
        self.history = decision.history
        scaled_at: str | None = None
        if decision.desired != current:
            scaled_at = self._scale(body, spec, dep_name, current, decision)

        if policy.paused:
            conditions = cond.set_condition(conditions, cond.SCALING, False, "Paused",
                                            decision.message, generation)
        elif load is None:
            conditions = cond.set_condition(conditions, cond.SCALING, False, decision.reason,
                                            decision.message, generation)
        else:
            conditions = cond.set_condition(conditions, cond.SCALING, True, decision.reason,
                                            decision.message, generation)
        if stats is not None:
            conditions = self._paused_condition(body, conditions, per_queue, status, generation)
        reachable = stats is not None
        if rejected is not None:
            conditions = cond.set_condition(conditions, cond.READY, False, "DeploymentRejected",
                                            rejected, generation)
        else:
            conditions = cond.set_condition(
                conditions, cond.READY, reachable,
                "Reconciled" if reachable else "DatabaseUnreachable",
                (f"Deployment {dep_name} has {decision.desired} replica(s), {ready} ready"
                 if reachable else
                 f"holding {decision.desired} replica(s) until the database can be read"),
                generation)

        extra: dict[str, Any] = {
            "queues": ",".join(spec.queues),
            "deployment": dep_name,
            "replicas": decision.desired,
            "desiredReplicas": decision.desired,
            "recommendedReplicas": decision.raw,
            "readyReplicas": ready,
            # A heartbeat: shows the operator is polling (e.g. after it restarted).
            "lastPollTime": cond.precise_timestamp(),
        }
        if scaled_at:
            extra["lastScaleTime"] = scaled_at
        if stats is not None:
            extra.update({
                "backlog": stats.backlog, "inFlight": stats.in_flight, "dead": stats.dead,
                "stuck": stats.stuck, "scheduled": stats.scheduled,
                "oldestRunnableAgeSeconds": (round(stats.oldest_runnable_age, 3)
                                             if stats.oldest_runnable_age is not None else None),
                "countCap": self._cap(policy),
                # `kubectl get jq` shows it (the Paused column); unknown while stats are not
                # read, so then the last value stays
                "paused": stats.paused,
                "pausedQueues": ",".join(q.queue for q in per_queue if q.paused),
            })
            metrics.PAUSED.labels(*labels).set(1 if stats.paused else 0)
            metrics.BACKLOG.labels(*labels).set(stats.backlog)
            metrics.IN_FLIGHT.labels(*labels).set(stats.in_flight)
            metrics.DEAD.labels(*labels).set(stats.dead)
        metrics.DESIRED.labels(*labels).set(decision.desired)
        metrics.REPLICAS.labels(*labels).set(decision.desired)
        finish(extra)
        return poll_interval

    def _initial_replicas(self, status: dict[str, Any], policy: Policy) -> int:
        """Replicas for a Deployment created now: what we last decided (a deleted Deployment
        comes back at its old size), else the minimum."""
        last = status.get("desiredReplicas")
        base = int(last) if isinstance(last, int) else policy.min_replicas
        return max(policy.min_replicas, min(policy.max_replicas, base))

    def _cap(self, policy: Policy) -> int:
        return max(self.settings.count_cap_floor,
                   policy.max_replicas * policy.jobs_per_replica + 1)

    def _paused_condition(self, body: dict[str, Any], conditions: list[dict[str, Any]],
                          per_queue: list[inspection.QueueStats], status: dict[str, Any],
                          generation: int | None) -> list[dict[str, Any]]:
        """QueuesPaused: True when every queue is paused; an event when that changes."""
        paused = [q for q in per_queue if q.paused]
        said = "; ".join(f"{q.queue} since {cond.timestamp(q.paused_at)} by {q.paused_by or '?'}"
                         for q in paused)
        if paused and len(paused) == len(per_queue):
            reason = "AllQueuesPaused"
            message = (f"every queue is paused ({said}): no worker claims from them, running "
                       "jobs finish, and the workers are not scaled up; resume with "
                       "`skiplock queue resume QUEUE`")
        elif paused:
            reason = "SomeQueuesPaused"
            message = (f"{len(paused)} of {len(per_queue)} queue(s) paused ({said}): their "
                       "waiting jobs are not counted for scaling; the others are served as usual")
        else:
            reason, message = "NoQueuePaused", "no queue is paused"
        all_paused = reason == "AllQueuesPaused"
        if all_paused != (status.get("paused") is True):
            self._event(body, "Normal", "QueuesPaused" if all_paused else "QueuesResumed",
                        message if all_paused else f"workers claim again: {message}")
        return cond.set_condition(conditions, cond.QUEUES_PAUSED, all_paused, reason, message,
                                  generation)

    def _read_stats(self, url: str, spec: JobQueueSpec, policy: Policy
                    ) -> tuple[list[inspection.QueueStats], tuple[str, str]]:
        started = time.perf_counter()
        try:
            db = self._database(url, spec)
            per_queue = inspection.queue_stats(db, spec.queues, cap=self._cap(policy))
        except SkiplockError as exc:
            # Scrubbed of the password at the database boundary, however the URL looks (a URL
            # libpq cannot parse is a ConfigurationError there, not a driver traceback here).
            reason = ("DatabaseUnavailable" if isinstance(exc, DatabaseUnavailable)
                      else "DatabaseUrlInvalid" if isinstance(exc, ConfigurationError)
                      else "QueryFailed")
            return [], (reason, str(exc))
        metrics.STATS_SECONDS.labels(self.namespace, self.name).observe(
            time.perf_counter() - started)
        return per_queue, ("", "")

    def _scale(self, body: dict[str, Any], spec: JobQueueSpec, dep_name: str, current: int,
               decision: Decision) -> str:
        if decision.desired < current:
            self._mark_idle_first(body, spec)
        self.kube.scale_deployment(self.namespace, dep_name, decision.desired)
        direction = "up" if decision.desired > current else "down"
        metrics.SCALE_EVENTS.labels(self.namespace, self.name, direction).inc()
        self._event(body, "Normal", decision.reason, decision.message)
        log.info("%s/%s: %s", self.namespace, self.name, decision.message)
        return cond.timestamp()

    def _mark_idle_first(self, body: dict[str, Any], spec: JobQueueSpec) -> None:
        """Just before scaling in, give each pod a deletion cost equal to the jobs it is
        running, so the ReplicaSet removes idle pods first. Set once here, not on every poll:
        the Kubernetes docs warn that frequent updates load the API server."""
        if self._db is None:
            return
        try:
            busy = inspection.busy_pods(self._db.db, spec.queues)
        except SkiplockError as exc:
            log.warning("%s/%s: cannot tell busy pods apart (%s); scaling in without marks",
                        self.namespace, self.name, exc)
            return
        pods = self.kube.list_pods(self.namespace, resources.selector_labels(self.name))
        costs = resources.deletion_costs([p["metadata"]["name"] for p in pods], busy)
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            value = str(costs[pod_name])
            if (pod["metadata"].get("annotations") or {}).get(resources.DELETION_COST) != value:
                self.kube.annotate_pod(self.namespace, pod_name, {resources.DELETION_COST: value})
