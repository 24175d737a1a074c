"""The replica decision: a pure function of the policy, what the database said, the current
replica count and a small history. No I/O, no clock: the caller passes ``now``.

The rules, in order:
1. paused: hold whatever runs now.
2. database unreadable (``load`` is None): hold the current replicas (clamped into [min, max]);
   never drop to zero because a number could not be read. With a fallback configured (KEDA's
   ``fallback``), after that many failed reads in a row raise to at least the fallback count
   (it never lowers: work may be piling up where it cannot be seen).
3. raw = clamp(ceil((backlog + in_flight) / jobs_per_replica), min, max). In-flight jobs count
   too: counting only waiting jobs would scale busy workers away.
4. activation: at zero replicas, stay at zero until backlog + in_flight exceeds the activation
   threshold; going to zero also needs the work to be at or below it and nothing in flight.
5. scale-up is rate limited per period: at most max(pods, percent of the replicas at the
   period's start) added.
6. scale-down is stabilized: the target is the highest recommendation seen during the window,
   so a dip shorter than the window changes nothing (no flapping). A fresh history (operator
   start) is seeded with the current replicas, so a restart never scales down at once.
7. every queue paused (``skiplock queue pause``): the same rules on ``paused_load``, which
   never asks for more replicas than run now; see there.
8. limits (docs/limits.md): jobs a concurrency or rate limit holds back are not in the
   backlog, and when all of the work is under task-wide concurrency limits the raw
   recommendation is capped at ceil(capacity / worker concurrency) (``limit_cap``): a
   replica runs up to its worker's concurrency, so more pods would sit idle. Holding fewer
   replicas than the held-back jobs would ask for is reported as ``Limited``.
9. a schedule due (``next_fire_in`` within ``schedule_lead_seconds``, or overdue): at least
   one replica, so a worker is up before the firing (workers fire the schedules, so at zero
   replicas nobody would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 0
    max_replicas: int = 10
    jobs_per_replica: int = 10
    activation_threshold: int = 0
    scale_up_pods: int = 4
    scale_up_percent: int = 100
    scale_up_period: float = 15.0
    scale_down_window: float = 300.0
    paused: bool = False
    fallback_failures: int = 0    # 0: no fallback, only hold
    fallback_replicas: int = 0
    # a replica this long before a schedule of the JobQueue's queues fires (rule 9)
    schedule_lead_seconds: float = 60.0
    # the jobs one replica runs at once (spec.worker.concurrency): what rule 8 divides by
    worker_concurrency: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 0 <= min_replicas <= max_replicas")
        if self.jobs_per_replica < 1 or self.scale_up_pods < 1:
            raise ValueError("jobs_per_replica and scale_up_pods must be >= 1")
        if self.worker_concurrency < 1:
            raise ValueError("worker_concurrency must be >= 1")


@dataclass(frozen=True)
class Load:
    backlog: int    # runnable + stuck (expired lease): work no live worker is doing
    in_flight: int  # running with a live lease
    # jobs at most running at once under the limits when all the work is limited (None: no
    # bound), and runnable jobs a limit holds back now (already left out of the backlog)
    capacity: int | None = None
    waiting_on_limit: int = 0
    # seconds until the next firing of a schedule on these queues (negative: overdue)
    next_fire_in: float | None = None

    @property
    def total(self) -> int:
        return self.backlog + self.in_flight


@dataclass(frozen=True)
class History:
    """What the decision remembers between polls (kept in memory by the operator)."""

    recommendations: tuple[tuple[float, int], ...] = ()   # (time, raw recommendation)
    scale_ups: tuple[tuple[float, int], ...] = ()         # (time, replicas added)

    @classmethod
    def seeded(cls, now: float, current: int) -> History:
        return cls(recommendations=((now, current),))


@dataclass(frozen=True)
class Decision:
    desired: int
    raw: int            # the clamped formula before activation, rate limit and stabilization
    reason: str         # CamelCase, used as condition and event reason
    message: str
    history: History = field(default_factory=History)

    @property
    def changes(self) -> bool:
        return self.reason in ("ScaledUp", "ScaledDown")


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def recommend(policy: Policy, load: Load, current: int) -> int:
    """Steps 3 and 4: the replicas the load asks for, within [min, max]."""
    total = load.total
    # At or below the activation threshold: zero, unless workers still run jobs (they would
    # be cut off) while replicas are up.
    if total <= policy.activation_threshold and (load.in_flight == 0 or current == 0):
        wanted = 0
    else:
        wanted = max(1, math.ceil(total / policy.jobs_per_replica)) if total > 0 else 0
    return clamp(wanted, policy.min_replicas, policy.max_replicas)


def limit_cap(policy: Policy, load: Load) -> int | None:
    """Rule 8: the most replicas the limits can keep busy (None: no cap), never below
    minReplicas nor above maxReplicas."""
    if load.capacity is None:
        return None
    # what the replicas can run, not jobsPerReplica (a target load, often below it)
    wanted = math.ceil(max(0, load.capacity) / policy.worker_concurrency)
    return clamp(wanted, policy.min_replicas, policy.max_replicas)


def schedule_due(policy: Policy, load: Load) -> bool:
    """Rule 9: a firing within the lead time (or overdue)."""
    return load.next_fire_in is not None and load.next_fire_in <= policy.schedule_lead_seconds


def paused_load(policy: Policy, load: Load, current: int) -> Load:
    """The load to size the replicas for while every queue is paused.

    Queued jobs are no work then: no worker may claim them, so the backlog counts as zero and
    nothing scales up for it. Running jobs finish, so in-flight still counts, but never as
    more than the replicas running now can hold (they cannot gain jobs). The replicas are not
    simply held: a pause may last hours (a downstream outage) and idle pods cost. Nor dropped
    at once to minReplicas: the pods running jobs stay, and the usual stabilization window
    means a short pause (a deploy, a quick fix) changes nothing, so resuming finds the
    workers still there. A long pause ends at minReplicas (or zero) like an empty queue.
    """
    return Load(backlog=0, in_flight=min(load.in_flight, current * policy.jobs_per_replica))


def decide(policy: Policy, load: Load | None, current: int, history: History,
           now: float, failures: int = 0, queues_paused: bool = False) -> Decision:
    """``failures``: consecutive failed reads before this one (``load`` None counts as one more
    only through the caller). ``queues_paused``: every queue of the JobQueue is paused (known
    only from a successful read, so it is ignored when ``load`` is None)."""
    if policy.paused:
        return Decision(current, current, "Paused",
                        f"scaling is paused; holding {current} replica(s)", history)
    if queues_paused and load is not None:
        d = decide(policy, paused_load(policy, load, current), current, history, now, failures)
        note = "every queue is paused: waiting jobs not counted, running ones finish"
        if d.changes:  # a scale-down, or up to a minReplicas floor: an event of its own
            return replace(d, message=f"{d.message} ({note})")
        return replace(d, reason="QueuesPaused", message=f"{note}; {d.message}")
    held = clamp(current, policy.min_replicas, policy.max_replicas)
    if load is None:
        if 0 < policy.fallback_failures <= failures:
            target = clamp(max(held, policy.fallback_replicas), policy.min_replicas,
                           policy.max_replicas)
            if target > current:
                return Decision(target, target, "ScaledUp",
                                f"{current} -> {target}: fallback after {failures} failed "
                                "stats reads", history)
            return Decision(held, held, "DatabaseUnavailable",
                            f"stats unavailable ({failures} failed reads); holding {held} "
                            f"replica(s) (fallback {policy.fallback_replicas})", history)
        return Decision(held, held, "DatabaseUnavailable",
                        f"stats unavailable; holding {held} replica(s)", history)

    raw = recommend(policy, load, current)
    cap = limit_cap(policy, load)
    if cap is not None:
        raw = min(raw, cap)
    # held back by the limits: counting the jobs they hold back (as a count-based autoscaler
    # would) asks for more than this
    limited = load.waiting_on_limit > 0 and recommend(
        policy, replace(load, backlog=load.backlog + load.waiting_on_limit), current) > raw
    due = raw == 0 and schedule_due(policy, load) and policy.max_replicas > 0
    if due:
        raw = 1
    window_start = now - policy.scale_down_window
    recs = (*(r for r in history.recommendations if r[0] > window_start), (now, raw))
    period_start = now - policy.scale_up_period
    ups = tuple(u for u in history.scale_ups if u[0] > period_start)
    numbers = (f"backlog={load.backlog} inFlight={load.in_flight} "
               f"jobsPerReplica={policy.jobs_per_replica} current={current} "
               f"recommended={raw}")
    if cap is not None:
        numbers += (f" waitingOnLimit={load.waiting_on_limit} limitCapacity={load.capacity}"
                    f" workerConcurrency={policy.worker_concurrency} limitCap={cap}")
    elif load.waiting_on_limit:
        numbers += f" waitingOnLimit={load.waiting_on_limit}"
    if due:
        numbers += f" scheduleDueIn={load.next_fire_in:.0f}s"

    if raw > current:
        base = max(0, current - sum(n for _, n in ups))
        allowed = max(policy.scale_up_pods, math.ceil(base * policy.scale_up_percent / 100))
        limit = base + allowed
        desired = max(current, min(raw, limit))
        if current < policy.min_replicas:
            desired = max(desired, policy.min_replicas)  # the spec's floor is not rate limited
        reason = "ScaledUp" if desired > current else "RateLimited"
        if limited:
            numbers += " (capped by the limits)"
        if desired < raw:
            numbers += f" rateLimit={limit}"
        if desired > current:
            ups = (*ups, (now, desired - current))
        new = History(recs, ups)
        return Decision(desired, raw, reason, f"{current} -> {desired}: {numbers}", new)

    if raw < current:
        highest = max(r for _, r in recs)
        desired = clamp(min(current, highest), policy.min_replicas, policy.max_replicas)
        new = History(recs, ups)
        if desired < current:
            return Decision(desired, raw, "ScaledDown", f"{current} -> {desired}: {numbers}", new)
        if limited:
            return Decision(current, raw, "Limited",
                            f"holding {current}: the limits allow no more work at once "
                            f"(stabilizing down to {raw}); {numbers}", new)
        return Decision(current, raw, "Stabilizing",
                        f"holding {current}: a recommendation of {highest} was seen within the "
                        f"{policy.scale_down_window:g}s window; {numbers}", new)

    if limited:
        return Decision(current, raw, "Limited",
                        f"holding {current}: the limits allow no more work at once; {numbers}",
                        History(recs, ups))
    return Decision(current, raw, "Steady", f"holding {current}: {numbers}", History(recs, ups))


def with_seed(history: History, now: float, current: int) -> History:
    """A history that has seen ``current`` at ``now`` (used after a restart or a re-create)."""
    return replace(history, recommendations=(*history.recommendations, (now, current)))


def notify_can_change(kind: str, queue: str, policy: Policy | None, current: int | None,
                      paused_queues: frozenset[str]) -> bool:
    """May a NOTIFY change the decision, so that it is worth an early poll?

    ``insert`` (jobs added to ``queue``) only ever adds load, so it cannot change anything
    when scaling is paused, the queue is paused in the database (its waiting jobs count for
    nothing), or the workers already run at maxReplicas. ``pause`` changes the Paused
    condition and the load: always worth it. Unknown state (no poll yet): yes.
    """
    if kind != "insert":
        return True
    if policy is None or current is None:
        return True
    if policy.paused or queue in paused_queues:
        return False
    return current < policy.max_replicas
