"""JobSchedule resources into the schedules table of their JobQueue's database.

One pass (``ScheduleReconciler.run``, synchronous: the kubernetes client and the Database are)
lists the JobSchedules and JobQueues (every namespace, or the operator's namespaces), and for
each database the JobQueues reach:

- writes each valid JobSchedule's row (name ``<namespace>/<name>``, source
  ``crd:<namespace>/<name>``) with its first fire time, computed here from the database's
  now(): with minReplicas 0 no worker runs to compute it, and the operator scales up ahead of
  that very time;
- deletes the rows of JobSchedules that are gone (source ``crd:<namespace>/...`` of a
  namespace it looked at, no longer listed). The operator keeps no finalizer on them (one
  would hang a JobSchedule in Terminating while the operator is down), so a delete it missed
  is found on the next pass instead. A JobSchedule whose spec became invalid keeps its row
  (the last good definition goes on firing, as a Deployment keeps its last good pods);
- then writes each JobSchedule's status: the Ready condition (reason Synced, InvalidSpec,
  JobQueueNotFound, SecretNotFound, DatabaseUnavailable, NameTaken), the row's name, queue,
  next and last fire times.

Only the leader writes: the caller passes ``still_leading``, asked before every write. The
database URL lives in memory only: statuses carry the redacted errors of skiplock.db.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from skiplock.catalogue import validate_args
from skiplock.db import Database
from skiplock.errors import DataRefused, InvalidArguments, SkiplockError
from skiplock.schedules import Schedule, ScheduleError, make_schedule, schedule_params

from . import conditions as cond
from .kube import Kube, SecretProblem
from .models import InvalidSpec, JobQueueSpec, parse_schedule_spec, parse_spec
from .resources import GROUP, VERSION
from .resources import PLURAL as JOBQUEUES

log = logging.getLogger("skiplock.operator")
PLURAL = "jobschedules"
KIND = "JobSchedule"
# schedules.name holds 256 characters; a namespace (63) and a name (253) can make more
MAX_ROW_NAME = 256


def row_name(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def source_of(namespace: str, name: str) -> str:
    return f"crd:{namespace}/{name}"


@dataclass(frozen=True)
class Outcome:
    """What a pass found for one JobSchedule (pure data, turned into its status)."""

    ready: bool
    reason: str
    message: str
    schedule: str | None = None
    queue: str | None = None
    next_fire_at: dt.datetime | None = None
    last_fire_at: dt.datetime | None = None


@dataclass
class Target:
    """One database and the JobSchedules whose rows it should hold."""

    url: str
    spec: JobQueueSpec
    wanted: list[tuple[dict[str, Any], Schedule]] = field(default_factory=list)


def _time(t: dt.datetime | None) -> str | None:
    return cond.timestamp(t.astimezone(dt.UTC)) if t is not None else None


def status_of(body: dict[str, Any], outcome: Outcome, now: dt.datetime) -> dict[str, Any]:
    """The JobSchedule's status for ``outcome`` (pure; lastTransitionTime moves only when the
    Ready status flips)."""
    old = dict(body.get("status") or {})
    generation = body["metadata"].get("generation")
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": cond.set_condition(old.get("conditions") or [], cond.READY,
                                         outcome.ready, outcome.reason, outcome.message,
                                         generation, now),
    }
    # what is known stays when this pass could not look (the database is down)
    for key, value in (("schedule", outcome.schedule), ("queue", outcome.queue),
                       ("nextFireTime", _time(outcome.next_fire_at)),
                       ("lastFireTime", _time(outcome.last_fire_at))):
        status[key] = value if value is not None or outcome.ready else old.get(key)
    return status


def differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    return {k: v for k, v in old.items() if v is not None} != {
        k: v for k, v in new.items() if v is not None}


def _key(url: str, spec: JobQueueSpec) -> str:
    """The database a JobQueue reaches: its URL and schema, nothing else. Two JobQueues on
    one database with other connection settings (a timeout) are one target: as two, the one
    with no JobSchedules would sweep the other's rows away."""
    return hashlib.sha256(f"{url}\0{spec.database.schema_name}".encode()).hexdigest()


# A sweep-only database (no JobSchedule wants it) that could not be swept is tried again
# after this long.
SWEEP_RETRY = dt.timedelta(minutes=5)
# Seconds of sweeping (databases no JobSchedule wants) per pass at most.
SWEEP_BUDGET = 5.0


class ScheduleReconciler:
    def __init__(self, kube: Kube, namespaces: Iterable[str] = (),
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kube = kube
        # empty: every namespace (the ClusterRole); else the namespaces the operator watches
        self.namespaces = list(namespaces)
        self.wall = wall
        self._dbs: dict[str, Database] = {}
        self._swept: set[str] = set()  # databases swept since the start
        self._written: set[str] = set()  # databases holding rows this operator wrote
        # sweep-only databases whose last sweep failed, and when (an unreachable one is
        # tried again after SWEEP_RETRY, not on every pass: each try may wait out a timeout)
        self._sweep_failed: dict[str, dt.datetime] = {}
        self.still_leading: Callable[[], bool] = lambda: True

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    # -- reads ----------------------------------------------------------------------------

    def _list(self, plural: str) -> list[dict[str, Any]]:
        """Every resource of ``plural``; none when its CRD is not installed (an older chart
        without the JobSchedule CRD: the rest of the operator works on)."""
        try:
            return self._list_all(plural)
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise

    def _list_all(self, plural: str) -> list[dict[str, Any]]:
        c = self.kube.custom
        if not self.namespaces:
            found = cast(dict[str, Any], self.kube.call(
                "list", plural, "", c.list_cluster_custom_object, GROUP, VERSION, plural))
            return list(found.get("items") or [])
        items: list[dict[str, Any]] = []
        for ns in self.namespaces:
            listed = cast(dict[str, Any], self.kube.call(
                "list", plural, ns, c.list_namespaced_custom_object, GROUP, VERSION, ns, plural))
            items.extend(listed.get("items") or [])
        return items

    def _database(self, url: str, spec: JobQueueSpec) -> Database:
        key = _key(url, spec)
        if key not in self._dbs:
            timeout = spec.database.connect_timeout_seconds
            self._dbs[key] = Database(url, schema=spec.database.schema_name,
                                      connect_timeout=timeout, statement_timeout=timeout,
                                      max_size=1, application_name="skiplock-operator-schedules")
        return self._dbs[key]

    # -- the pass ---------------------------------------------------------------------------

    def run(self) -> dict[str, Outcome]:
        """One pass over every JobSchedule; returns the outcome per ``namespace/name``."""
        if not self.still_leading():
            return {}
        schedules = self._list(PLURAL)
        queues = {(q["metadata"]["namespace"], q["metadata"]["name"]): q
                  for q in self._list(JOBQUEUES)}
        outcomes: dict[str, Outcome] = {}
        targets: dict[str, Target] = {}
        # namespace -> database keys its JobQueues reach (swept for deleted JobSchedules)
        reach: dict[str, set[str]] = {}
        placed: dict[str, str] = {}  # source -> the database key its row belongs in
        secrets: dict[tuple[str, str, str], str | SecretProblem] = {}

        def url_of(ns: str, spec: JobQueueSpec, uid: str) -> str | SecretProblem:
            ref = spec.database.url_secret_ref
            k = (ns, ref.name, ref.key)
            if k not in secrets:
                try:
                    secrets[k] = self.kube.secret_value(ns, ref.name, ref.key, salt=uid).value
                except SecretProblem as exc:
                    secrets[k] = exc
            return secrets[k]

        for (ns, _name), q in queues.items():
            try:
                spec = parse_spec(q.get("spec"))
            except InvalidSpec:
                continue
            url = url_of(ns, spec, str(q["metadata"].get("uid", "")))
            if isinstance(url, str):
                key = _key(url, spec)
                targets.setdefault(key, Target(url, spec))
                reach.setdefault(ns, set()).add(key)

        for body in schedules:
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            where = row_name(ns, name)
            found = self._resolve(body, queues, url_of)
            if isinstance(found, Outcome):
                outcomes[where] = found
                continue
            url, spec, schedule = found
            key = _key(url, spec)
            targets.setdefault(key, Target(url, spec)).wanted.append((body, schedule))
            reach.setdefault(ns, set()).add(key)
            placed[source_of(ns, name)] = key

        everyone = {source_of(b["metadata"]["namespace"], b["metadata"]["name"])
                    for b in schedules}
        reported = False
        sweep_until: float | None = None
        # the databases JobSchedules want first, and their statuses written, before the
        # sweep-only ones: one unreachable JobQueue database (a connect timeout each) must not
        # hold every JobSchedule's row and status back; and the sweeps of one pass stop after
        # SWEEP_BUDGET (the rest are swept on the next passes), so a pass stays short however
        # many JobQueue databases there are
        for key, target in sorted(targets.items(), key=lambda kv: not kv[1].wanted):
            if not target.wanted:
                if not reported:
                    self._report(schedules, outcomes)
                    reported = True
                if sweep_until is None:
                    sweep_until = time.monotonic() + SWEEP_BUDGET
                elif time.monotonic() > sweep_until:
                    break
            # A database no JobSchedule wants is swept once after a start (deletes missed
            # while the operator was down) and once after its last row's JobSchedule went;
            # not on every pass, which would hold a connection to every JobQueue's database.
            if not target.wanted and key in self._swept and key not in self._written:
                continue
            failed_at = self._sweep_failed.get(key)
            if not target.wanted and failed_at is not None and \
                    self.wall() - failed_at < SWEEP_RETRY:
                continue
            keep = sorted(s for s in everyone if placed.get(s, key) == key)
            prefixes = [f"crd:{ns}/" for ns, keys in reach.items() if key in keys]
            written, ok = self._write(target, keep, prefixes)
            outcomes.update(written)
            if not ok and not target.wanted:
                self._sweep_failed[key] = self.wall()
                failed = self._dbs.pop(key, None)
                if failed is not None:  # its pool would keep reconnecting in the background
                    failed.close()
            if ok:
                self._sweep_failed.pop(key, None)
                self._swept.add(key)
                if target.wanted:
                    self._written.add(key)
                else:
                    self._written.discard(key)
                    self._dbs.pop(key).close()
        # connections to databases no JobQueue reaches any more (its URL changed, it went)
        for key in [k for k in self._dbs if k not in targets]:
            self._dbs.pop(key).close()
        if not reported:
            self._report(schedules, outcomes)
        return outcomes

    def _report(self, schedules: list[dict[str, Any]], outcomes: dict[str, Outcome]) -> None:
        for body in schedules:
            where = row_name(body["metadata"]["namespace"], body["metadata"]["name"])
            if where in outcomes:
                self._status(body, outcomes[where])

    def _resolve(self, body: dict[str, Any],
                 queues: dict[tuple[str, str], dict[str, Any]],
                 url_of: Callable[[str, JobQueueSpec, str], str | SecretProblem],
                 ) -> Outcome | tuple[str, JobQueueSpec, Schedule]:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        try:
            spec = parse_schedule_spec(body.get("spec"))
        except InvalidSpec as exc:
            return Outcome(False, "InvalidSpec", str(exc))
        queue_body = queues.get((ns, spec.job_queue_ref))
        if queue_body is None:
            return Outcome(False, "JobQueueNotFound",
                           f"JobQueue {ns}/{spec.job_queue_ref} (spec.jobQueueRef) does not "
                           "exist: its database is where the schedule goes")
        try:
            queue_spec = parse_spec(queue_body.get("spec"))
        except InvalidSpec:
            return Outcome(False, "JobQueueInvalid",
                           f"JobQueue {ns}/{spec.job_queue_ref} has an invalid spec (see its "
                           "status)")
        queue = spec.queue or queue_spec.queues[0]
        if queue not in queue_spec.queues:
            return Outcome(False, "InvalidSpec",
                           f"spec.queue {queue!r} is not one of JobQueue "
                           f"{spec.job_queue_ref}'s queues {queue_spec.queues}: no worker of "
                           "it would run the jobs")
        if len(row_name(ns, name)) > MAX_ROW_NAME:
            return Outcome(False, "InvalidSpec",
                           f"the schedule's name in the database, <namespace>/<name>, would be "
                           f"{len(row_name(ns, name))} characters long; at most {MAX_ROW_NAME}: "
                           "give the JobSchedule a shorter name")
        try:
            schedule = make_schedule(
                name=row_name(ns, name), task=spec.task, queue=queue, cron=spec.cron,
                every=spec.every_seconds, timezone=spec.timezone, args=spec.args,
                missed=spec.missed, backfill=spec.backfill if spec.missed == "backfill"
                else None, grace=spec.grace_seconds, jitter=spec.jitter_seconds,
                priority=spec.priority, paused=spec.paused)
        except ScheduleError as exc:
            return Outcome(False, "InvalidSpec", str(exc))
        url = url_of(ns, queue_spec, str(queue_body["metadata"].get("uid", "")))
        if isinstance(url, SecretProblem):
            return Outcome(False, url.reason, f"{url} (the JobQueue's database Secret)")
        return url, queue_spec, schedule

    def _write(self, target: Target, keep: list[str], prefixes: list[str]
               ) -> tuple[dict[str, Outcome], bool]:
        """This database's rows: the wanted ones written, the deleted ones removed; and
        whether all of it was done."""
        out: dict[str, Outcome] = {}
        try:
            # inside: a malformed URL is this database's problem, not the pass's
            db = self._database(target.url, target.spec)
            now = db.now()
            tasks = db.list_tasks() if target.wanted else {}
            for body, schedule in target.wanted:
                if not self.still_leading():
                    return {}, False
                meta = body["metadata"]
                source = source_of(meta["namespace"], meta["name"])
                bad = _args_problem(schedule, tasks)
                if bad:
                    out[schedule.name] = Outcome(False, "InvalidSpec", bad)
                    continue
                try:
                    row = db.upsert_crd_schedule({
                        **schedule_params(schedule), "source": source,
                        "next_fire_at": schedule.cadence.next_after(now)})
                except DataRefused as exc:  # this row's problem: the others are written
                    out[schedule.name] = Outcome(False, "InvalidSpec", str(exc))
                    continue
                if row is None:
                    owner = db.schedule_owner(schedule.name) or "?"
                    out[schedule.name] = Outcome(
                        False, "NameTaken", f"the schedule name {schedule.name!r} belongs to "
                        f"{owner} in this database; rename this JobSchedule")
                    continue
                out[schedule.name] = Outcome(
                    True, "Synced", f"in the database as {schedule.name!r}, "
                    f"{schedule.cadence.describe()}, queue {schedule.queue}",
                    schedule.name, schedule.queue, row["next_fire_at"], row["last_fire_at"])
            for prefix in prefixes:
                if not self.still_leading():
                    return out, False
                for name in db.remove_crd_schedules(prefix, keep):
                    log.info("schedule %r removed: its JobSchedule is gone", name)
        except SkiplockError as exc:
            for _body, schedule in target.wanted:
                out.setdefault(schedule.name, Outcome(False, "DatabaseUnavailable", str(exc)))
            return out, False
        return out, True

    def _status(self, body: dict[str, Any], outcome: Outcome) -> None:
        old = dict(body.get("status") or {})
        new = status_of(body, outcome, self.wall())
        if not differs(old, new) or not self.still_leading():
            return
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        try:
            self.kube.call("patch", f"{PLURAL}/status", ns,
                           self.kube.custom.patch_namespaced_custom_object_status, GROUP,
                           VERSION, ns, PLURAL, name, {"status": new})
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to say
                raise


def _args_problem(schedule: Schedule, tasks: dict[str, Any]) -> str | None:
    """Why the schedule's args do not fit its task's parameters, as a worker registered them
    (the check a Client's enqueue makes); None when they fit or no worker registered the task
    yet (it is checked again on a later pass)."""
    entry = tasks.get(schedule.task)
    if entry is None:
        return None
    try:
        validate_args(schedule.task, entry["params"] or {}, schedule.args)
    except InvalidArguments as exc:
        return f"spec.args: {exc}"
    return None
