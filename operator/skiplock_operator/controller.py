"""One JobQueue's reconcile loop body, in phases: ensure the worker Deployment, read the load,
decide (scaling.decide, pure), apply, and build the status (status.build_status, pure).
Synchronous (the kubernetes client and the Database are); the JobQueue's poll loop
(handlers.py) runs ``poll()`` in a thread of the operator's poll pool once per poll interval.

Nothing here may raise out of ``poll()`` for a known problem: every failure becomes a
condition, an event and a held replica count, and the next poll tries again. A replica that
does not hold the leader Lease polls read-only: it reads and decides (so its history is warm
when it takes over) but writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from skiplock import inspection
from skiplock.db import Database
from skiplock.errors import ConfigurationError, DatabaseUnavailable, SkiplockError

from . import conditions as cond
from . import metrics, resources
from .kube import Forbidden, Kube, SecretProblem, SecretValue
from .models import InvalidSpec, JobQueueSpec, parse_spec
from .scaling import Decision, History, Load, Policy, decide, with_seed
from .settings import OperatorSettings
from .status import PollResult, Stop, build_status, condition_values, differs

log = logging.getLogger("skiplock.operator")
DEFAULT_POLL = 15.0
# How long a poll waits for a migration it started before it goes on without it.
MIGRATION_WAIT = 20.0
# Seconds between tries of a migration that failed.
MIGRATION_RETRY = 300.0


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
                  fallback_replicas=s.fallback.replicas if s.fallback else 0,
                  # models.py (schedules) adds the field; 60 s until it does
                  schedule_lead_seconds=float(getattr(s, "schedule_lead_seconds", 60.0)),
                  worker_concurrency=spec.worker.concurrency)


def load_of(per_queue: list[inspection.QueueStats],
            next_fire_in: float | None = None) -> Load | None:
    """A queue paused in the database (skiplock queue pause) is claimed by no worker, so its
    waiting jobs ask for no replicas (its running ones still count). Jobs a limit holds back
    are not in the backlog (QueueStats.backlog); when every queue with work is bounded by
    its limits, the sum of those bounds caps the replicas (scaling rule 8)."""
    if not per_queue:
        return None
    busy = [q for q in per_queue if q.backlog or q.in_flight or q.waiting_on_limit]
    capacities = [q.limit_capacity for q in busy]
    capacity = (None if not capacities or any(c is None for c in capacities)
                else sum(c or 0 for c in capacities))
    return Load(sum(q.backlog for q in per_queue if not q.paused),
                sum(q.in_flight for q in per_queue), capacity=capacity,
                waiting_on_limit=sum(q.waiting_on_limit for q in per_queue),
                next_fire_in=next_fire_in)


class NotLeading(Exception):
    """Leadership ended while a poll that began as the leader was running."""


@dataclass
class _Db:
    key: str
    db: Database
    # spec.database.directUrlSecretRef's URL: migrations run over it (a transaction pooler
    # cannot carry them); None: over the main one
    direct_url: str | None = None
    migrated: bool = False
    # the migration running in its own thread (index builds on a big table take minutes and
    # must not hold the poll, whose staleness the liveness probe watches)
    migration: Future[list[str]] | None = None
    # after a failed migration (a lock it could not take: each try makes writers wait up to
    # the lock timeout), no new try before this (monotonic)
    retry_at: float = 0.0


@dataclass(frozen=True)
class Ensured:
    """The ensure phase: the Deployment to scale (None: none exists), or why not."""

    deployment: dict[str, Any] | None
    stop: Stop | None = None
    rejected: str | None = None


class QueueController:
    def __init__(self, kube: Kube, settings: OperatorSettings, namespace: str, name: str,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kube = kube
        self.settings = settings
        self.namespace = namespace
        self.name = name
        self.clock = clock
        self.wall = wall
        self.history: History | None = None
        # the last decision's reason (a Limited event is posted when it starts), and the
        # seconds to the next schedule firing on our queues (scaling rule 9)
        self.last_reason = ""
        self.next_fire_in: float | None = None
        self.failures = 0  # consecutive polls without stats
        self.leading = False
        # Asked again right before every write: a poll takes several calls of up to
        # kube_timeout each, and leadership may be lost in the middle of one (handlers.py
        # points it at the Lease elector; the default is for a single replica).
        self.still_leading: Callable[[], bool] = lambda: True
        # (url, schema, queues) of the last successful read: what the NOTIFY listener follows.
        self.listen_target: tuple[str, str, tuple[str, ...]] | None = None
        # What the last poll saw, for the NOTIFY filter (handlers.notify_can_change).
        self.last_policy: Policy | None = None
        self.last_replicas: int | None = None
        self.all_paused = False
        self.paused_queues: frozenset[str] = frozenset()
        self._db: _Db | None = None
        self._last_warning: dict[str, float] = {}
        self._applied: str | None = None       # fingerprint of the template we last wrote
        self._written: dict[str, Any] | None = None
        self._written_at = -float("inf")
        self._paused_seen: bool | None = None
        self._takeover = False

    def close(self) -> None:
        if self._db is not None:
            self._db.db.close()
            self._db = None

    def condition_types(self) -> tuple[str, ...]:
        return cond.ORDER

    # -- helpers ----------------------------------------------------------------------------

    def _warn(self, body: dict[str, Any], reason: str, message: str) -> None:
        """A Warning event, repeated for the same reason at most every warning_repeat_seconds
        (an outage polled every few seconds must not flood the event store)."""
        if not self.leading:
            return
        now = self.clock()
        last = self._last_warning.get(reason)
        if last is not None and now - last < self.settings.warning_repeat_seconds:
            return
        self._last_warning[reason] = now
        self._event(body, "Warning", reason, message)

    def _may_write(self) -> None:
        """Raise NotLeading when this poll began as the leader but the Lease is no longer
        ours: the rest of the poll must not scale, write status or post events."""
        if self.leading and not self.still_leading():
            raise NotLeading(f"{self.namespace}/{self.name}: leadership lost during the poll")

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str, *,
               of_our_write: bool = False) -> None:
        """``of_our_write``: the event tells of a write this replica has just made, so it is
        posted even if the Lease was lost since (no other replica made that write or will tell
        of it; dropped, the write would go unexplained — CI saw a reverted drift with no event
        when the Lease renewal lapsed during the Deployment's replace)."""
        if not self.leading:  # only the leader speaks: two replicas must not double events
            return
        if not of_our_write:
            self._may_write()
        try:
            self.kube.event(body, type_, reason, message, instance=self.settings.identity)
        except (ApiException, Forbidden) as exc:  # best effort; the status says it all too
            log.warning("could not post event %s for %s/%s: %s", reason, self.namespace,
                        self.name, exc)

    def _clear_warning(self, *reasons: str) -> None:
        for reason in reasons:
            self._last_warning.pop(reason, None)

    def _error(self, reason: str) -> None:
        metrics.RECONCILE_ERRORS.labels(self.namespace, self.name, reason).inc()

    def _database(self, url: str, spec: JobQueueSpec, direct_url: str | None = None
                  ) -> Database:
        d = spec.database
        key = hashlib.sha256(
            f"{url}\0{direct_url}\0{d.pooler}\0{d.schema_name}\0{d.connect_timeout_seconds}"
            .encode()).hexdigest()
        if self._db is None or self._db.key != key:
            self.close()
            timeout = d.connect_timeout_seconds
            # connect_timeout and statement_timeout: no database call waits unbounded.
            self._db = _Db(key, Database(url, schema=d.schema_name, connect_timeout=timeout,
                                         statement_timeout=timeout, max_size=2,
                                         application_name="skiplock-operator",
                                         pooler=d.pooler == "transaction"),
                           direct_url=direct_url)
        if spec.database.migrate and not self._db.migrated and self.leading:
            self._migrate(self._db)
        return self._db.db

    def _migrate(self, db: _Db) -> None:
        """Start the migration in a thread of its own, or collect its outcome. While it runs
        the poll goes on: the transactional parts are quick, and the concurrent index builds
        after them block no read and no write. A failure is raised here (the poll reports it)
        and it is tried again after MIGRATION_RETRY."""
        if db.migration is None:
            if self.clock() < db.retry_at:
                return
            future: Future[list[str]] = Future()

            def run() -> None:
                try:
                    if db.direct_url is None:
                        future.set_result(db.db.migrate())
                        return
                    # its own Database for the one migration (migrate opens its own session
                    # connection anyway): the pooled one cannot carry it
                    with Database(db.direct_url, schema=db.db.schema,
                                  connect_timeout=db.db.connect_timeout,
                                  application_name="skiplock-operator-migrate") as direct:
                        future.set_result(direct.migrate())
                except BaseException as exc:
                    future.set_exception(exc)

            db.migration = future
            threading.Thread(target=run, name=f"migrate {self.namespace}/{self.name}",
                             daemon=True).start()
            # a small schema is done at once: wait briefly so the first poll sees it
            wait([future], timeout=MIGRATION_WAIT)
        if not db.migration.done():
            log.info("%s/%s: migration still running (building indexes concurrently)",
                     self.namespace, self.name)
            return
        future, db.migration = db.migration, None
        if future.exception() is not None:
            db.retry_at = self.clock() + MIGRATION_RETRY
        try:
            applied = future.result()  # raises what the migration raised
        except ConfigurationError as exc:
            if db.db.pooler and db.direct_url is None:  # a pooler found out on connecting
                raise ConfigurationError(
                    f"{exc} For a JobQueue: set spec.database.directUrlSecretRef to a Secret "
                    "with a direct URL, or spec.database.migrate: false") from None
            raise
        if applied:
            log.info("%s/%s: applied migrations %s", self.namespace, self.name, applied)
        db.migrated = True

    def _cap(self, policy: Policy) -> int:
        return max(self.settings.count_cap_floor,
                   policy.max_replicas * policy.jobs_per_replica + 1)

    # -- the poll -----------------------------------------------------------------------------

    def poll(self, body: dict[str, Any], leading: bool = True) -> float:
        """One reconcile; returns the seconds until the next one."""
        if leading and not self.leading:
            self._takeover = True
        if leading != self.leading:
            self._written, self._written_at = None, -float("inf")
        self.leading = leading
        status = dict(body.get("status") or {})
        generation = body["metadata"].get("generation")
        try:
            result, interval = self._phases(body, status)
        except NotLeading as exc:
            log.warning("%s; nothing more is written this poll", exc)
            self.leading = False
            self._written, self._written_at = None, -float("inf")
            return DEFAULT_POLL
        except Forbidden as exc:
            self._error(exc.reason)
            log.warning("%s/%s: %s", self.namespace, self.name, exc)
            result = PollResult(generation, self.wall(), stop=Stop(
                exc.reason, str(exc), "not scaling until the permission is granted"))
            interval = DEFAULT_POLL
        try:
            self._finish(body, status, result)
        except NotLeading as exc:
            log.warning("%s; status not written", exc)
            self.leading = False
            self._written, self._written_at = None, -float("inf")
        return interval

    def _phases(self, body: dict[str, Any], status: dict[str, Any]
                ) -> tuple[PollResult, float]:
        meta = body["metadata"]
        generation = meta.get("generation")
        try:
            spec = parse_spec(body.get("spec"))
        except InvalidSpec as exc:
            self._warn(body, "InvalidSpec", str(exc))
            self._error("InvalidSpec")
            return PollResult(generation, self.wall(), stop=Stop(
                "InvalidSpec", str(exc), "not scaling until the spec is fixed")), DEFAULT_POLL
        self._clear_warning("InvalidSpec")
        interval = spec.scaling.poll_interval_seconds
        policy = policy_of(spec)
        self.last_policy = policy

        secret = self._read_secret(body, spec)
        direct = self._read_direct(body, spec)
        if isinstance(direct, SecretProblem):
            secret = direct  # no stats, no migration: reported as the main Secret's would be
        elif direct is not None and isinstance(secret, SecretValue):
            # the workers read both (the direct one is their SKIPLOCK_LISTEN_URL): a change of
            # either rolls them
            secret = dataclasses.replace(secret, checksum=hashlib.sha256(
                f"{secret.checksum}\0{direct.checksum}".encode()).hexdigest()[:len(
                    secret.checksum)])
        dep_name = resources.deployment_name(self.name)
        ensured = self._ensure(body, spec, status, policy,
                               secret if isinstance(secret, SecretValue) else None)
        if ensured.stop is not None or ensured.deployment is None:
            stop = ensured.stop or Stop("DeploymentRejected", ensured.rejected or "",
                                        "no worker Deployment to scale")
            return PollResult(generation, self.wall(), stop=stop), interval
        existing = ensured.deployment
        current = int((existing.get("spec") or {}).get("replicas") or 0)
        self.last_replicas = current

        per_queue, source_problem = self._read_load(
            body, secret, spec, policy, direct if isinstance(direct, SecretValue) else None)
        load = load_of(per_queue, self.next_fire_in if per_queue else None)
        if per_queue:
            self.paused_queues = frozenset(q.queue for q in per_queue if q.paused)
        decision = self._decide(policy, load, current, bool(per_queue) and all(
            q.paused for q in per_queue))
        scaled_at, scale_problem = None, None
        if decision.desired != current and self.leading:
            scaled_at, scale_problem = self._apply(body, spec, dep_name, current, decision)
        elif self.leading:
            self.history = decision.history
        else:
            # a standby keeps its recommendations warm for a takeover, but records no
            # scale-up: it applied none, and phantom ones would eat the new leader's allowance
            prior = self.history.scale_ups if self.history else ()
            self.history = dataclasses.replace(decision.history, scale_ups=prior)
        if self.leading and decision.reason == "Limited" and self.last_reason != "Limited":
            # holding at the limits' cap: said once, with the numbers (scaling rule 8)
            self._event(body, "Normal", "Limited", decision.message)
        self.last_reason = decision.reason
        ready_problem = (("DeploymentRejected", ensured.rejected) if ensured.rejected
                         else scale_problem)
        return PollResult(
            generation, self.wall(), spec=spec, deployment_name=dep_name, deployment=existing,
            ready_problem=ready_problem, source_problem=source_problem, per_queue=per_queue,
            load=load, decision=decision, failures=self.failures,
            count_cap=self._cap(policy), scaled_at=scaled_at), interval

    # -- phase 1: the Secret and the Deployment -------------------------------------------------

    def _read_secret(self, body: dict[str, Any], spec: JobQueueSpec
                     ) -> SecretValue | SecretProblem:
        # The URL only lives in memory: never in status, events, logs or the Deployment.
        ref = spec.database.url_secret_ref
        try:
            value = self.kube.secret_value(self.namespace, ref.name, ref.key,
                                           salt=str(body["metadata"].get("uid", "")))
        except SecretProblem as exc:
            return exc
        self._clear_warning("SecretProblem")
        return value

    def _read_direct(self, body: dict[str, Any], spec: JobQueueSpec
                     ) -> SecretValue | SecretProblem | None:
        """spec.database.directUrlSecretRef's URL (None: not set)."""
        ref = spec.database.direct_url_secret_ref
        if ref is None:
            return None
        try:
            return self.kube.secret_value(self.namespace, ref.name, ref.key,
                                          salt=str(body["metadata"].get("uid", "")))
        except SecretProblem as exc:
            return exc

    def _ensure(self, body: dict[str, Any], spec: JobQueueSpec, status: dict[str, Any],
                policy: Policy, secret: SecretValue | None) -> Ensured:
        dep_name = resources.deployment_name(self.name)
        existing = self.kube.get_deployment(self.namespace, dep_name)
        if existing is not None and not resources.owned_by(existing,
                                                           body["metadata"].get("uid", "")):
            # Someone else's Deployment (or one left by a deleted JobQueue of the same name,
            # waiting for garbage collection): never take it over or scale it.
            message = (f"Deployment {self.namespace}/{dep_name} exists and is not owned by this "
                       "JobQueue; rename or delete it (a leftover of a deleted JobQueue goes "
                       "away with garbage collection)")
            self._warn(body, "DeploymentConflict", message)
            self._error("DeploymentConflict")
            return Ensured(None, stop=Stop("DeploymentConflict", message,
                                           "not scaling a Deployment this JobQueue does not "
                                           "own"))
        self._clear_warning("DeploymentConflict")
        # The Secret unreadable: keep the checksum the pods run with (rolling them would not
        # help; they read the same Secret).
        checksum = secret.checksum if secret is not None else str(
            resources.template_annotations(existing or {}).get(resources.SECRET_CHECKSUM, ""))
        desired = resources.deployment(body, spec, replicas=self._initial_replicas(
            status, policy), secret_checksum=checksum)
        if not self.leading:  # read-only: report what is there
            return Ensured(existing, stop=None if existing is not None else Stop(
                "Standby", "no worker Deployment yet", "not leading"))
        try:
            if existing is None:
                self._may_write()
                existing = self.kube.create_deployment(self.namespace, desired)
                self._applied = resources.template_fingerprint(existing)
                self._event(body, "Normal", "DeploymentCreated",
                            f"created Deployment {dep_name} with "
                            f"{desired['spec']['replicas']} replica(s)", of_our_write=True)
            elif resources.drifted(existing, desired, self._applied):
                spec_changed = ((existing["metadata"].get("annotations") or {})
                                .get(resources.SPEC_HASH)
                                != desired["metadata"]["annotations"][resources.SPEC_HASH])
                self._may_write()
                existing = self.kube.replace_deployment(
                    self.namespace, dep_name, resources.for_update(desired, existing))
                self._applied = resources.template_fingerprint(existing)
                if spec_changed:
                    self._event(body, "Normal", "DeploymentUpdated",
                                f"applied the JobQueue spec to Deployment {dep_name}",
                                of_our_write=True)
                else:
                    self._event(body, "Warning", "DeploymentDriftReverted",
                                f"Deployment {dep_name}'s pod template was changed outside "
                                "the JobQueue; put back (edit the JobQueue instead)",
                                of_our_write=True)
            else:
                self._applied = resources.template_fingerprint(existing)
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            # The schema cannot check everything in a podTemplate (a label's syntax, a
            # quantity); the API server's verdict on the Deployment is the user's answer.
            rejected = (f"the API server rejected Deployment {dep_name}: {api_message(exc)}; "
                        "fix spec.worker (podTemplate, env, resources)")
            self._warn(body, "DeploymentRejected", rejected)
            self._error("DeploymentRejected")
            return Ensured(existing, rejected=rejected)
        self._clear_warning("DeploymentRejected")
        return Ensured(existing)

    def _initial_replicas(self, status: dict[str, Any], policy: Policy) -> int:
        """Replicas for a Deployment created now: what we last decided (a deleted Deployment
        comes back at its old size), else the minimum."""
        last = status.get("desiredReplicas")
        base = int(last) if isinstance(last, int) else policy.min_replicas
        return max(policy.min_replicas, min(policy.max_replicas, base))

    # -- phase 2: the load ----------------------------------------------------------------------

    def _read_load(self, body: dict[str, Any], secret: SecretValue | SecretProblem,
                   spec: JobQueueSpec, policy: Policy, direct: SecretValue | None = None
                   ) -> tuple[list[inspection.QueueStats], tuple[str, str] | None]:
        labels = (self.namespace, self.name)
        if isinstance(secret, SecretProblem):
            self._warn(body, "SecretProblem", str(secret))
            self._error(secret.reason)
            metrics.DATABASE_UP.labels(*labels).set(0)
            return [], (secret.reason, str(secret))
        started = time.perf_counter()
        try:
            db = self._database(secret.value, spec, direct.value if direct else None)
            polled = inspection.poll(db, spec.queues, cap=self._cap(policy))  # one round trip
            per_queue, self.next_fire_in = polled.stats, polled.next_fire_in
        except SkiplockError as exc:
            # Scrubbed of the password at the database boundary, however the URL looks (a URL
            # libpq cannot parse is a ConfigurationError there, not a driver traceback here).
            reason = ("DatabaseUnavailable" if isinstance(exc, DatabaseUnavailable)
                      else "DatabaseUrlInvalid" if isinstance(exc, ConfigurationError)
                      else "QueryFailed")
            self._warn(body, reason, str(exc))
            self._error(reason)
            metrics.DATABASE_UP.labels(*labels).set(0)
            return [], (reason, str(exc))
        metrics.STATS_SECONDS.labels(*labels).observe(time.perf_counter() - started)
        metrics.DATABASE_UP.labels(*labels).set(1)
        # LISTEN needs a session: over the direct URL when there is one; through a
        # transaction pooler without one, none (the polls alone then)
        listen_url = direct.value if direct else None if db.pooler else secret.value
        self.listen_target = (None if listen_url is None else
                              (listen_url, spec.database.schema_name, tuple(spec.queues)))
        self._clear_warning("DatabaseUnavailable", "DatabaseUrlInvalid", "QueryFailed")
        if not per_queue:
            return [], ("QueryFailed", "the stats query returned no queue")
        return per_queue, None

    # -- phase 3: the decision (pure, scaling.decide) -------------------------------------------

    def _decide(self, policy: Policy, load: Load | None, current: int,
                all_paused: bool) -> Decision:
        now = self.clock()
        if self.history is None or self._takeover:
            # First poll since the operator (re)started or took the lead: act as if the
            # current count had just been recommended, so a restart or a handover never
            # scales down before a full window has passed.
            self.history = seed_on_takeover(self.history, now, current)
            self._takeover = False
        self.failures = 0 if load is not None else self.failures + 1
        self.all_paused = all_paused
        # With every queue paused the decision also never scales up (scaling.paused_load).
        return decide(policy, load, current, self.history, now, self.failures,
                      queues_paused=all_paused)

    # -- phase 4: apply -------------------------------------------------------------------------

    def _apply(self, body: dict[str, Any], spec: JobQueueSpec, dep_name: str, current: int,
               decision: Decision) -> tuple[str | None, tuple[str, str] | None]:
        """Scale; the history moves on only once the API server took the new count (a failed
        call must not count as a scale-up against the rate limit, nor start a window)."""
        if decision.desired < current:
            try:
                self._mark_idle_first(body, spec)
            except (Forbidden, ApiException) as exc:
                # best effort, like the busy-pods read: scale in anyway, without the marks
                log.warning("%s/%s: could not mark idle pods first (%s); scaling in without "
                            "marks", self.namespace, self.name, exc)
        try:
            self._may_write()
            self.kube.scale_deployment(self.namespace, dep_name, decision.desired)
        except Forbidden as exc:
            self._error(exc.reason)
            return None, (exc.reason, str(exc))
        self.history = decision.history
        self.last_replicas = decision.desired
        direction = "up" if decision.desired > current else "down"
        metrics.SCALE_EVENTS.labels(self.namespace, self.name, direction).inc()
        self._event(body, "Normal", decision.reason, decision.message)
        log.info("%s/%s: scaled %s", self.namespace, self.name, decision.message)
        return cond.timestamp(self.wall()), None

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
                self._may_write()
                self.kube.annotate_pod(self.namespace, pod_name, {resources.DELETION_COST: value})

    # -- phase 5: the status (status.build_status, pure) --------------------------------------

    def _finish(self, body: dict[str, Any], status: dict[str, Any], result: PollResult) -> None:
        labels = (self.namespace, self.name)
        new = build_status(status, result)
        for type_, value in condition_values(new).items():
            metrics.CONDITION.labels(*labels, type_).set(1 if value else 0)
        if result.decision is not None:
            metrics.DESIRED.labels(*labels).set(result.decision.desired)
            for gauge, key in ((metrics.REPLICAS, "replicas"),
                               (metrics.READY_REPLICAS, "readyReplicas"),
                               (metrics.AVAILABLE_REPLICAS, "availableReplicas")):
                gauge.labels(*labels).set(new.get(key, 0))
        if "paused" in new:
            metrics.PAUSED.labels(*labels).set(1 if new["paused"] else 0)
            for gauge, key in ((metrics.BACKLOG, "backlog"), (metrics.IN_FLIGHT, "inFlight"),
                               (metrics.DEAD, "dead")):
                gauge.labels(*labels).set(new[key])
            self._paused_event(body, status, new)
        if not self.leading:
            return
        base = self._written if self._written is not None else status
        now = self.clock()
        if not differs(base, new) and now - self._written_at < \
                self.settings.status_heartbeat_seconds:
            return
        try:
            self._may_write()
            self.kube.patch_status(self.namespace, self.name, new)
        except Forbidden as exc:  # nowhere to say it but the log and the metric
            self._error(exc.reason)
            log.warning("%s/%s: cannot write status: %s", self.namespace, self.name, exc)
            return
        self._written = {**(self._written or status), **new}
        self._written_at = now

    def _paused_event(self, body: dict[str, Any], status: dict[str, Any],
                      new: dict[str, Any]) -> None:
        """An event when "every queue paused" changes (the Paused condition says why)."""
        seen = self._paused_seen if self._paused_seen is not None else (
            status.get("paused") is True)
        now_paused = bool(new["paused"])
        self._paused_seen = now_paused
        if now_paused == seen:
            return
        message = next((c["message"] for c in new["conditions"] if c["type"] == cond.PAUSED), "")
        self._event(body, "Normal", "QueuesPaused" if now_paused else "QueuesResumed",
                    message if now_paused else f"workers claim again: {message}")


def seed_on_takeover(history: History | None, now: float, current: int) -> History:
    """The history a new leader starts from: what it saw while standing by, plus the current
    replicas as if just recommended (conservative: no scale-down before a full window)."""
    return with_seed(history, now, current) if history is not None else History.seeded(
        now, current)
