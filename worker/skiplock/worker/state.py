"""What the worker's services share: the runs it holds and the outcomes waiting to be written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .. import metrics
from ..app import StopSignal
from ..db import ClaimedJob, Failure, Peer

log = logging.getLogger("skiplock.worker")


class Kind(Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # handed back without counting an attempt: a live peer can run it (a rolling deploy)
    HANDED_BACK = "handed back"
    # handed back without counting an attempt: nobody can run it yet; looked at again later
    DEFERRED = "deferred"
    # the handler raised Snooze: queued again at database time + delay, no attempt counted
    SNOOZED = "snoozed"


@dataclass(eq=False, slots=True)
class Run:
    """One claimed run of a job (compared by identity: a job may be claimed again)."""

    job: ClaimedJob
    started: float
    lost: bool = False
    # True while the handler runs; False once its outcome waits in the buffer
    executing: bool = True
    # set once the run must stop: "cancel" or "timeout", and what the handler was told
    stop: str | None = None
    stop_message: str = ""
    # the handler is told through this (ctx.cancelled); None until it starts
    signal: StopSignal | None = None
    # this run's task was cancelled by stop_run (an async handler), not by the shutdown
    task_cancelled: bool = False
    # the handler did not stop within the grace: the outcome was written without it, and its
    # thread (or task) is abandoned, holding its slot until it returns
    abandoned: bool = False
    # timers for the deadline and the grace (cancelled when the run ends)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    # the asyncio task running it (set by Executor.start_all)
    task: asyncio.Task[None] | None = None


@dataclass(eq=False, slots=True)
class Outcome:
    """What a run ended with, waiting to be written; one per run, mutated in place when the
    database refuses it (a refused result becomes a permanent failure of that job)."""

    run: Run
    kind: Kind
    result_json: str = "null"
    failure: Failure | None = None
    reason: str = ""
    delay: float = 0.0
    since: float = field(default_factory=time.monotonic)
    done: bool = False
    # the failure's own text was refused once and replaced by a plain one
    text_replaced: bool = False


class OutcomeBuffer:
    """Outcomes waiting for the completer, oldest first; those taken for a write still count
    as waiting until they are settled or put back."""

    def __init__(self) -> None:
        self._items: list[Outcome] = []
        self._in_flight: list[Outcome] = []
        self.ready = asyncio.Event()

    def add(self, outcome: Outcome) -> None:
        self._items.append(outcome)
        self.ready.set()

    def take(self) -> list[Outcome]:
        items, self._items = self._items, []
        self._in_flight.extend(items)
        return items

    def settled(self, items: Iterable[Outcome]) -> None:
        gone = {id(o) for o in items}
        # the usual case: the whole batch was written
        if len(gone) == len(self._in_flight) and all(id(o) in gone for o in self._in_flight):
            self._in_flight = []
            return
        self._in_flight = [o for o in self._in_flight if id(o) not in gone]

    def put_back(self, items: Iterable[Outcome]) -> None:
        items = list(items)
        self.settled(items)
        self._items[:0] = [o for o in items if not o.done]

    def oldest_age(self, now: float | None = None) -> float | None:
        waiting = self._items + self._in_flight
        if not waiting:
            return None
        return (now if now is not None else time.monotonic()) - min(o.since for o in waiting)

    def __len__(self) -> int:
        return len(self._items) + len(self._in_flight)

    def __bool__(self) -> bool:  # something the completer can take now
        return bool(self._items)


# (task, queue, args, this worker's params for the task) of a job left to a peer
Skipped = tuple[str, str, dict[str, Any], dict[str, Any] | None]


class SkipList:
    """Job ids this worker's version cannot run while a live peer can: a bounded memory (the
    oldest are forgotten first, so it never grows without limit in a long rollout)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._ids: OrderedDict[int, Skipped] = OrderedDict()

    def add(self, job_id: int, job: Skipped) -> None:
        self._ids[job_id] = job
        self._ids.move_to_end(job_id)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def keep(self, still_skipped: Callable[[Skipped], bool]) -> None:
        """Forget the ids no live peer can run any more: they must be judged again (and go
        dead after the grace if nobody can), not be skipped for ever."""
        for job_id in [i for i, job in self._ids.items() if not still_skipped(job)]:
            del self._ids[job_id]

    def ids(self) -> list[int]:
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class WorkerState:
    """The mutable state the services share (they all run on one event loop)."""

    worker_id: str
    concurrency: int
    lease_seconds: float
    owned: dict[int, Run] = field(default_factory=dict)
    executing: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    outcomes: OutcomeBuffer = field(default_factory=OutcomeBuffer)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # each live peer's queues and {task: params}, from the last registry heartbeat
    peers: dict[str, Peer] = field(default_factory=dict)
    # tasks this worker does not know and a live peer does: left to that peer by the claim
    skip_tasks: frozenset[str] = frozenset()
    skip_ids: SkipList = field(default_factory=SkipList)
    # limited tasks (tasks.limits, read by the registry heartbeat): every one is left out of
    # the plain claim; those this worker runs are claimed by claim_limited (sql/limits.sql)
    limited_everywhere: frozenset[str] = frozenset()
    limited_here: tuple[str, ...] = ()
    more_waiting: bool = False
    processed: int = 0
    # LISTEN is in place: cancel requests arrive by NOTIFY (else they are polled for)
    listening: bool = False
    # runs given up on whose handler still runs (their slots stay taken until it returns)
    abandoned: set[Run] = field(default_factory=set)
    # how a run whose lease was lost is stopped: set by the Claimer to the executor's
    # stop_run (the claimer starts the runs), called by the LeaseRenewer. Its slot is free in
    # the database from the moment the lease expired, so the handler must not keep running
    # beside the worker that took the slot (docs/limits.md).
    stop_lost: Callable[[Run], object] = field(default=lambda run: None)

    @property
    def outcome_limit(self) -> int:
        """Backpressure: outcomes waiting past this many take slots away from claiming."""
        return self.concurrency

    def free_slots(self) -> int:
        """Slots to claim into: free handler slots, less the outcomes waiting beyond the limit.

        So the runs a worker holds (running + waiting to be written) never exceed twice its
        concurrency, while the usual batch of outcomes being written (up to one per slot)
        does not stop claiming: claims and writes overlap, as throughput needs.
        """
        over = max(0, len(self.outcomes) - self.outcome_limit)
        # abandoned handlers still hold their thread (or task) until they return
        return max(0, self.concurrency - len(self.executing) - len(self.abandoned) - over)

    def holds(self, job: ClaimedJob) -> bool:
        """Whether ``job`` is the run this worker holds for its id (by identity)."""
        run = self.owned.get(job.id)
        return run is not None and run.job is job

    def forget(self, job: ClaimedJob) -> None:
        """Forget this run only: a newer claim of the same job keeps its heartbeat."""
        if self.holds(job):
            del self.owned[job.id]

    def still_ours(self, job: ClaimedJob) -> bool:
        """False when this run's outcome must be dropped: the run was released at shutdown or
        already settled, or this worker claimed the same job again meanwhile. The last happens
        only when the database lost our claim (claims commit without waiting for the WAL
        flush, so a server crash can drop one): the same worker id then gets the same attempt
        number, which the fence cannot tell apart, so the older run steps aside here."""
        if self.holds(job):
            return True
        metrics.STALE_WRITES.inc()
        why = (
            "released at shutdown or already settled"
            if job.id not in self.owned
            else "claimed again (the database lost this run's claim in a crash)"
        )
        log.warning(
            "job %d attempt %d: outcome discarded, the job was %s", job.id, job.attempt, why
        )
        return False
