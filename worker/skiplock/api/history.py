"""Backlog over time: the jobs table keeps no history of its queue lengths, so this process
samples the shared queue stats at a fixed interval into a bounded ring."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import SkiplockError
from ..inspection import QueueStats

log = logging.getLogger("skiplock.api.history")


@dataclass(frozen=True)
class Sample:
    at: dt.datetime
    stats: dict[str, QueueStats]


class BacklogHistory:
    def __init__(self, sample: Callable[[], Sequence[QueueStats]], interval: float,
                 size: int) -> None:
        self._sample = sample
        self.interval = interval
        self._ring: collections.deque[Sample] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self._taken = 0  # samples appended so far: what a chart drawn from them depends on
        # one sample at a time (the thread's, or a test's or benchmark's own), so a count
        # names one list of samples
        self._sampling = threading.Lock()
        self._before_publish: list[tuple[str, Callable[[int, list[Sample]], None]]] = []

    def before_publish(self, what: str, renew: Callable[[int, list[Sample]], None]) -> None:
        """Call ``renew(taken, samples)`` with each new snapshot before views can see it (in
        the sampler's thread): ``what`` it makes from them is ready when they do."""
        self._before_publish.append((what, renew))

    def sample_once(self) -> None:
        with self._sampling:
            self._sample_once()

    def _sample_once(self) -> None:
        try:
            stats = self._sample()
        except SkiplockError as exc:
            if not self._failing:  # one line per outage, not one per interval
                log.warning("backlog sampling paused: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("backlog sampling resumed")
        self._failing = False
        new = Sample(dt.datetime.now(dt.UTC), {s.queue: s for s in stats})
        with self._lock:
            ring = collections.deque(self._ring, maxlen=self._ring.maxlen)
            taken = self._taken + 1
        ring.append(new)
        samples = list(ring)  # what snapshot() will give once it is published
        try:
            for what, renew in self._before_publish:
                if self._stop.is_set():  # stopping: the views (if any) make their own
                    break
                try:
                    renew(taken, samples)
                except Exception:  # the views make their own; the sample is still published
                    log.exception("backlog sampling: making %s ahead of views failed", what)
        finally:
            # Published whatever a hook did: a hook may already keep values for this count,
            # so the count must name these samples and no others.
            with self._lock:
                self._ring.append(new)
                self._taken = taken

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception:  # a bug, not an outage: said, and tried again next interval
                # (a sampler thread that died would leave every chart frozen, silently)
                log.exception("backlog sampling: unexpected error; trying again in %gs",
                              self.interval)
            self._stop.wait(self.interval)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="skiplock-backlog-sampler",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def samples(self) -> list[Sample]:
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, list[Sample]]:
        """The samples, oldest first, with how many were ever taken: two snapshots with the
        same count hold the same samples (the ring only changes by an append)."""
        with self._lock:
            return self._taken, list(self._ring)


def sample_groups(n: int, at_most: int | None) -> list[range]:
    """Split ``n`` samples, oldest first, into at most ``at_most`` runs of neighbours for a
    chart that plots one point per run (the largest value of each). The newest sample is a
    run of its own, so a chart's last point is the latest value and not a maximum over the
    last few (and ``at_most=1`` keeps only the newest). ``None`` keeps every sample as its own
    run."""
    if n <= 0 or at_most == 0:
        return []
    if at_most is None or n <= at_most:
        return [range(i, i + 1) for i in range(n)]
    if at_most < 0:
        raise ValueError(f"at_most must be at least 0, got {at_most}")
    if at_most == 1:
        return [range(n - 1, n)]
    older, runs = n - 1, at_most - 1
    # runs of as equal a length as integers allow, the longer ones first
    size, extra = divmod(older, runs)
    out, start = [], 0
    for i in range(runs):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    out.append(range(n - 1, n))
    return out


@dataclass(frozen=True)
class QueueSeries:
    """One queue's backlog history as columns, oldest first."""

    at: list[dt.datetime]
    backlog: list[int]
    in_flight: list[int]
    stuck: list[int]
    dead: list[int]


def queue_series(samples: Sequence[Sample], name: str, at_most: int | None) -> QueueSeries:
    """A queue's backlog, in-flight, stuck and dead over the samples that have it (a sample
    taken while it had no jobs has not), at most ``at_most`` points: per run of neighbouring
    samples (sample_groups) the largest of each count, so a spike of stuck jobs between two
    points stays on the chart, at the time of the run's last sample."""
    rows = [(x.at, q.backlog, q.in_flight, q.stuck, q.dead)
            for x in samples if (q := x.stats.get(name)) is not None]
    if not rows:
        return QueueSeries([], [], [], [], [])
    at = [r[0] for r in rows]
    backlog, in_flight = [r[1] for r in rows], [r[2] for r in rows]
    stuck, dead = [r[3] for r in rows], [r[4] for r in rows]
    if at_most is None or len(rows) <= at_most:
        return QueueSeries(at, backlog, in_flight, stuck, dead)
    runs = sample_groups(len(rows), at_most)

    def peaks(column: list[int]) -> list[int]:
        return [max(column[r.start:r.stop]) for r in runs]

    return QueueSeries([at[r.stop - 1] for r in runs], peaks(backlog), peaks(in_flight),
                       peaks(stuck), peaks(dead))
