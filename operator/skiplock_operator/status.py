"""The JobQueue's status, built by one pure function from what a poll saw and decided.

The controller gathers a ``PollResult`` (its phases: ensure the Deployment, read the load,
decide, apply) and ``build_status`` turns it, with the status as it stands, into the status to
write. ``differs`` says whether writing it would change anything but the heartbeat.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from skiplock import inspection

from . import conditions as cond
from .models import JobQueueSpec
from .scaling import Decision, Load

# Written on every write but never a reason to write: lastPollTime only shows the operator
# is alive, and the oldest job's age moves with the clock alone (with it, a queue with a
# waiting job would cost a status write on every poll); both are at most a heartbeat old.
HEARTBEAT_FIELDS = ("lastPollTime", "oldestRunnableAgeSeconds")


@dataclass(frozen=True)
class Stop:
    """The poll ended before a decision: nothing was scaled."""

    reason: str
    message: str           # Ready=False's message
    scaling_message: str   # Scaling=False's message


@dataclass(frozen=True)
class PollResult:
    generation: int | None
    now: dt.datetime
    stop: Stop | None = None
    spec: JobQueueSpec | None = None
    deployment_name: str = ""
    deployment: dict[str, Any] | None = None  # as read at the start of the poll
    # Ready=False while scaling goes on (a rejected template update, a refused scale call).
    ready_problem: tuple[str, str] | None = None
    # DatabaseReachable=False (Secret missing, database down, query failed).
    source_problem: tuple[str, str] | None = None
    per_queue: Sequence[inspection.QueueStats] = field(default_factory=tuple)
    load: Load | None = None
    decision: Decision | None = None
    failures: int = 0
    count_cap: int = 0
    scaled_at: str | None = None


def deployment_replicas(dep: dict[str, Any] | None) -> dict[str, int]:
    """What the Deployment controller reports: the truth, not what we asked for."""
    st = (dep or {}).get("status") or {}
    return {k: int(st.get(k) or 0) for k in
            ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas")}


def paused_condition(per_queue: Sequence[inspection.QueueStats]) -> tuple[bool, str, str]:
    """(every queue paused, reason, message) for the Paused condition."""
    paused = [q for q in per_queue if q.paused]
    said = "; ".join(f"{q.queue} since {cond.timestamp(q.paused_at)} by {q.paused_by or '?'}"
                     for q in paused)
    if paused and len(paused) == len(per_queue):
        return True, "AllQueuesPaused", (
            f"every queue is paused ({said}): no worker claims from them, running jobs "
            "finish, and the workers are not scaled up; resume with "
            "`skiplock queue resume QUEUE`")
    if paused:
        return False, "SomeQueuesPaused", (
            f"{len(paused)} of {len(per_queue)} queue(s) paused ({said}): their waiting jobs "
            "are not counted for scaling; the others are served as usual")
    return False, "NoQueuePaused", "no queue is paused"


def build_status(old: dict[str, Any], r: PollResult) -> dict[str, Any]:
    """The status fields to write (a merge patch over ``old``), conditions included."""
    g = r.generation
    conds: list[dict[str, Any]] = [dict(c) for c in old.get("conditions") or []]

    def put(type_: str, status: bool | None, reason: str, message: str) -> None:
        nonlocal conds
        conds = cond.set_condition(conds, type_, status, reason, message, g, r.now)

    if r.stop is not None or r.spec is None or r.decision is None:
        stop = r.stop or Stop("Unknown", "the poll ended early", "not scaling")
        put(cond.READY, False, stop.reason, stop.message)
        put(cond.SCALING, False, stop.reason, stop.scaling_message)
        return {"conditions": conds, "observedGeneration": g,
                "lastPollTime": cond.precise_timestamp(r.now)}

    spec, d = r.spec, r.decision
    s = spec.scaling
    stats = inspection.totals(list(r.per_queue)) if r.per_queue else None
    reachable = r.source_problem is None and stats is not None
    actual = deployment_replicas(r.deployment)

    if r.source_problem is not None:
        put(cond.DATABASE_REACHABLE, False, *r.source_problem)
    else:
        put(cond.DATABASE_REACHABLE, True, "StatsRead",
            f"read stats for queue(s) {', '.join(spec.queues)}")

    if s.paused:
        put(cond.SCALING, False, "Paused", d.message)
    else:
        put(cond.SCALING, r.load is not None, d.reason, d.message)

    if r.load is None:
        put(cond.ACTIVE, None, "StatsUnavailable", "the load is unknown until the database "
            "can be read")
    elif r.load.total > s.activation_threshold:
        put(cond.ACTIVE, True, "WorkPending",
            f"backlog + in-flight = {r.load.total} > activationThreshold "
            f"{s.activation_threshold}")
    else:
        put(cond.ACTIVE, False, "NoWork",
            f"backlog + in-flight = {r.load.total} <= activationThreshold "
            f"{s.activation_threshold}")

    if s.fallback is None:
        put(cond.FALLBACK, False, "NotConfigured", "spec.scaling.fallback is not set")
    elif r.load is None and r.failures >= s.fallback.failure_threshold:
        put(cond.FALLBACK, True, "FallbackActive",
            f"{r.failures} failed stats reads in a row (threshold "
            f"{s.fallback.failure_threshold}): running at least {s.fallback.replicas} "
            "replica(s)")
    else:
        put(cond.FALLBACK, False, "BelowThreshold" if r.load is None else "StatsRead",
            f"{r.failures} failed stats read(s) in a row (threshold "
            f"{s.fallback.failure_threshold})")

    if stats is not None:
        put(cond.PAUSED, *paused_condition(r.per_queue))

    if r.ready_problem is not None:
        put(cond.READY, False, *r.ready_problem)
    elif reachable:
        put(cond.READY, True, "Reconciled",
            f"Deployment {r.deployment_name}: {d.desired} desired, {actual['replicas']} "
            f"running, {actual['readyReplicas']} ready, {actual['availableReplicas']} "
            "available")
    else:
        put(cond.READY, False, "DatabaseUnreachable",
            f"holding {d.desired} replica(s) until the database can be read")

    out: dict[str, Any] = {
        "queues": ",".join(spec.queues),
        "deployment": r.deployment_name,
        "desiredReplicas": d.desired,
        "recommendedReplicas": d.raw,
        **actual,
        "conditions": conds,
        "observedGeneration": g,
        "lastPollTime": cond.precise_timestamp(r.now),
    }
    if r.scaled_at:
        out["lastScaleTime"] = r.scaled_at
    if stats is not None:
        out.update({
            "backlog": stats.backlog, "inFlight": stats.in_flight, "dead": stats.dead,
            "stuck": stats.stuck, "scheduled": stats.scheduled,
            "oldestRunnableAgeSeconds": (round(stats.oldest_runnable_age, 3)
                                         if stats.oldest_runnable_age is not None else None),
            "countCap": r.count_cap,
            # unknown while stats are not read, so then the last value stays
            "paused": stats.paused,
            "pausedQueues": ",".join(q.queue for q in r.per_queue if q.paused),
            # runnable jobs a concurrency or rate limit holds back (not in backlog)
            "waitingOnLimit": stats.waiting_on_limit,
        })
    return out


def differs(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """True if writing ``new`` over ``old`` changes more than the heartbeat."""
    return any(old.get(k) != v for k, v in new.items() if k not in HEARTBEAT_FIELDS)


def condition_values(status: dict[str, Any]) -> dict[str, bool]:
    """Condition type -> is True (for the per-condition metric)."""
    return {c["type"]: c.get("status") == "True" for c in status.get("conditions") or []}
