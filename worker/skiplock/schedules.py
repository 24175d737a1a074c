"""Periodic jobs: what a schedule is, and what one scheduler pass does with a due one (pure).

A schedule lives in the ``schedules`` table, declared by ``@app.periodic`` (source ``app``)
or by a JobSchedule custom resource (source ``crd:<namespace>/<name>``). Every worker's
scheduler service (worker/scheduler.py) reads the due ones with the database's now() and
calls ``plan``; the database then takes the plan only from the worker that still sees the
next_fire_at it planned from (see sql/schedules.sql), so each firing is enqueued once.

Missed firings. A firing is on time when a pass finds it due within ``grace`` seconds of its
fire time; one found later was missed (every worker was down, the database was). The policy:

- ``skip``: missed firings are dropped; only on-time ones run;
- ``once``: the missed firings of a pass collapse into one job (for the latest of them);
- ``backfill``: the latest ``backfill`` missed firings run, one job each, oldest first.

On-time firings always run. Jitter: each job's run_at is its fire time plus a random
0..jitter seconds (the firing's key stays the nominal fire time).
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .cron import Cadence, CadenceError
from .names import queue_problem, task_problem
from .outcomes import NotStorable, storable_result

Missed = Literal["skip", "once", "backfill"]
MISSED_POLICIES: tuple[Missed, ...] = ("skip", "once", "backfill")
MAX_BACKFILL = 1000
# the most on-time firings one pass enqueues for a schedule
MAX_PER_PASS = 1000
MAX_ARGS_BYTES = 16384
# How many missed firings a pass counts (cron steps, each a few microseconds) before it says
# "at least": a pass runs on the worker's event loop, every worker at once, so a per-minute
# cron after a long outage must not walk 100,000 steps. (every= is counted arithmetically.)
COUNT_CAP = 1000


class ScheduleError(ValueError):
    """A schedule that cannot be declared; the message says which field and why."""


@dataclass(frozen=True)
class Schedule:
    name: str
    task: str
    queue: str
    cadence: Cadence
    args: Mapping[str, Any] = field(default_factory=dict)
    missed: Missed = "once"
    backfill: int = 0
    grace: float = 60.0
    jitter: float = 0.0
    priority: int = 0
    paused: bool = False


def make_schedule(
    *,
    name: str,
    task: str,
    queue: str,
    cron: str | None = None,
    every: int | None = None,
    timezone: str = "UTC",
    args: Mapping[str, Any] | None = None,
    missed: str = "once",
    backfill: int | None = None,
    grace: float = 60.0,
    jitter: float = 0.0,
    priority: int = 0,
    paused: bool = False,
) -> Schedule:
    """A validated Schedule, or ScheduleError saying what is wrong (pure).

    ``missed`` may be "skip", "once", "backfill" (then ``backfill`` >= 1 is required) or
    "backfill:N" as a shorthand."""
    where = f"schedule {name[:80]!r}" if isinstance(name, str) else "schedule"
    if not isinstance(name, str) or not 1 <= len(name) <= 256 or not name.isprintable():
        raise ScheduleError(f"{where}: name must be 1 to 256 printable characters")
    problem = task_problem(task) or queue_problem(queue)
    if problem:
        raise ScheduleError(f"{where}: {problem}")
    if isinstance(missed, str) and missed.startswith("backfill:"):
        count = missed.partition(":")[2]
        if not count.isdigit():
            raise ScheduleError(f"{where}: missed {missed!r}: expected backfill:N")
        missed, backfill = "backfill", int(count)
    if missed not in MISSED_POLICIES:
        raise ScheduleError(f"{where}: missed must be one of skip, once, backfill "
                            f"(or backfill:N), got {missed!r}")
    if missed == "backfill":
        if isinstance(backfill, bool) or not isinstance(backfill, int) or not (
                1 <= backfill <= MAX_BACKFILL):
            raise ScheduleError(f"{where}: missed='backfill' needs backfill=N, a whole number "
                                f"from 1 to {MAX_BACKFILL}, got {backfill!r}")
    elif backfill not in (None, 0):
        raise ScheduleError(f"{where}: backfill={backfill!r} is only for missed='backfill'")
    for label, value, high in (("grace", grace, 31_536_000.0), ("jitter", jitter, 86_400.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and 0 <= value <= high):
            raise ScheduleError(f"{where}: {label} must be seconds from 0 to {high:.0f}, "
                                f"got {value!r}")
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
            -32768 <= priority <= 32767):
        raise ScheduleError(f"{where}: priority must be a smallint, got {priority!r}")
    if not isinstance(paused, bool):
        raise ScheduleError(f"{where}: paused must be true or false, got {paused!r}")
    if args is not None and not isinstance(args, Mapping):
        raise ScheduleError(f"{where}: args must be a JSON object, got {type(args).__name__}")
    args = dict(args or {})
    if not all(isinstance(k, str) for k in args):
        raise ScheduleError(f"{where}: args must be a JSON object: argument names are text")
    try:
        # the check a job's result passes before it is stored (outcomes.py): jsonb refuses
        # what json.dumps accepts (NUL, lone surrogates, deep nesting), and a refused row
        # would fail every worker's registration, or the operator's write, over and over
        encoded = storable_result(args, max_bytes=2**62)  # the size is checked below
    except NotStorable as exc:
        problem = str(exc).removeprefix("result is not storable: ")
        raise ScheduleError(f"{where}: args must be a JSON object PostgreSQL can store: "
                            f"{problem}") from None
    if len(encoded.encode()) > MAX_ARGS_BYTES:
        raise ScheduleError(f"{where}: args are larger than {MAX_ARGS_BYTES} bytes as JSON")
    try:
        cadence = Cadence(cron=cron, every=every, timezone=timezone)
    except CadenceError as exc:
        raise ScheduleError(f"{where}: {exc}") from None
    return Schedule(name=name, task=task, queue=queue, cadence=cadence, args=args,
                    missed=missed, backfill=backfill or 0, grace=float(grace),
                    jitter=float(jitter), priority=priority, paused=paused)


@dataclass(frozen=True)
class Firing:
    fire_at: dt.datetime  # the nominal fire time: the firing's key
    run_at: dt.datetime  # fire_at plus jitter
    late: bool  # let through by the missed policy


@dataclass(frozen=True)
class Plan:
    firings: tuple[Firing, ...]
    next_fire_at: dt.datetime
    missed: int  # firings dropped by the policy (at most COUNT_CAP counted)


def plan(cadence: Cadence, *, next_fire_at: dt.datetime, now: dt.datetime, missed: Missed,
         backfill: int, grace: float, jitter: float, paused: bool,
         rng: random.Random | None = None) -> Plan | None:
    """What a pass at database time ``now`` does with a schedule whose next unhandled fire time
    is ``next_fire_at``: None when it is not due yet (pure but for ``rng``, the jitter).

    A paused schedule only moves on: its firings are dropped (counted as missed), so that
    resuming it does not replay the pause."""
    if next_fire_at > now:
        return None
    following = cadence.next_after(now)
    due_from = next_fire_at
    cutoff = now - dt.timedelta(seconds=grace)
    # on time: fire times in [max(next_fire_at, now - grace), now]
    on_time_from = max(due_from, cutoff)
    # at most MAX_PER_PASS on-time firings (a per-second schedule with a grace of a day, after
    # an outage): the latest ones; the others count as missed
    on_time = [] if paused else cadence.latest(on_time_from, now, MAX_PER_PASS)
    crowded = (cadence.count(on_time_from, now, COUNT_CAP) - len(on_time)
               if len(on_time) == MAX_PER_PASS else 0)
    # missed: fire times in [next_fire_at, now - grace)
    missed_until = min(now, cutoff - dt.timedelta(microseconds=1))
    keep = {"skip": 0, "once": 1, "backfill": backfill}[missed] if not paused else 0
    late = cadence.latest(due_from, missed_until, keep) if missed_until >= due_from else []
    missed_count = (cadence.count(due_from, missed_until, COUNT_CAP)
                    if missed_until >= due_from else 0)
    if paused:
        missed_count += cadence.count(on_time_from, now, COUNT_CAP)
    chooser = rng or random.Random()  # noqa: S311 (jitter spreads load; no secret)

    def firing(t: dt.datetime, is_late: bool) -> Firing:
        offset = chooser.uniform(0, jitter) if jitter > 0 else 0.0
        return Firing(t, t + dt.timedelta(seconds=offset), is_late)

    firings = tuple([firing(t, True) for t in late] + [firing(t, False) for t in on_time])
    return Plan(firings, following, max(0, missed_count - len(late)) + crowded)


def put_off(cadence: Cadence | None, expected: dt.datetime | None, now: dt.datetime,
            seconds: float) -> tuple[dt.datetime, int]:
    """A schedule that cannot fire is moved to ``now + seconds``, firing nothing: that time,
    and how many firings the move skips (those in [expected, then), at most COUNT_CAP for a
    cron), which count as missed like any other dropped firing. None are counted when the
    cadence cannot be read (nothing can count them) or the schedule had no fire time."""
    later = now + dt.timedelta(seconds=seconds)
    if cadence is None or expected is None or expected >= later:
        return later, 0
    return later, cadence.count(expected, later - dt.timedelta(microseconds=1), COUNT_CAP)


def first_fire_at(cadence: Cadence, now: dt.datetime) -> dt.datetime:
    """A new (or redefined) schedule's first fire time: the first one after now."""
    return cadence.next_after(now)


def schedule_params(s: Schedule) -> dict[str, Any]:
    """The schedule's columns as query parameters (sql/schedules.sql)."""
    return {"name": s.name, "task": s.task, "queue": s.queue, "cron": s.cadence.cron,
            "every": s.cadence.every, "timezone": s.cadence.timezone, "args": dict(s.args),
            "missed": s.missed, "backfill": s.backfill, "grace": s.grace, "jitter": s.jitter,
            "priority": s.priority, "paused": s.paused}


def cadence_of(row: Mapping[str, Any]) -> Cadence:
    """A stored schedule's cadence (raises CadenceError for one written wrong by hand)."""
    return Cadence(cron=row["cron"], every=row["every_seconds"], timezone=row["timezone"])
