"""Finished jobs per queue and time bucket for the overview, each closed bucket read once.

Read from the jobs table on every page, the overview's throughput cost followed the window's
rows, that is throughput times window: at 1,000 queues and 88,000 jobs finished in 30 minutes, two
passes over them were 60-90 ms of a page's SQL, and a busier queue or the 24-hour window costs
more still. A bucket that has ended stops changing: a completion writes ``finished_at = now()``,
its own short transaction's start, so once a bucket ended ``grace`` seconds ago every job
finished in it has committed. Each API process therefore reads a closed bucket once, for every
queue, and keeps its counts for ``ttl`` seconds; a page reads only the buckets still open (or
kept too long) in one range scan of jobs_finished_idx.

What this gives up, by design: a job whose completion transaction stayed open longer than
``grace`` is missed by a bucket read in between, and a prune, a bulk delete or a copy of old
jobs shows in the chart within ``ttl``, not at once.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# queue -> (succeeded, dead) in one bucket; a queue whose only finished jobs were cancelled
# is kept with (0, 0): it finished jobs within the window, so the overview lists it.
Counts = dict[str, tuple[int, int]]
# (bucket start, queue, succeeded, dead) rows for the buckets from a start on
Reader = Callable[[dt.datetime], Sequence[tuple[dt.datetime, str, int, int]]]

GRACE_SECONDS = 120.0
TTL_SECONDS = 600.0
# Bucket sizes kept at once (one per window length in use): a client stepping through every
# window cannot make the process hold every size.
SIZES_KEPT = 4


@dataclass(frozen=True)
class Kept:
    counts: Counts
    read_at: float  # the process clock when it was read


def is_closed(start: dt.datetime, bucket_seconds: int, now: dt.datetime, grace: float) -> bool:
    """Whether every job finished in the bucket starting at ``start`` has committed by now."""
    return start + dt.timedelta(seconds=bucket_seconds + grace) <= now


def first_to_read(starts: Sequence[dt.datetime], kept: Mapping[dt.datetime, Kept],
                  bucket_seconds: int, now: dt.datetime, clock: float, grace: float,
                  ttl: float) -> dt.datetime:
    """The earliest of ``starts`` (in order) not usable from ``kept``: never read, read while
    still open, or read more than ``ttl`` ago. The last bucket is always open, so one is."""
    for start in starts:
        k = kept.get(start)
        if k is None or clock - k.read_at > ttl or not is_closed(
                start, bucket_seconds, now, grace):
            return start
    return starts[-1]


def group(rows: Sequence[tuple[dt.datetime, str, int, int]]) -> dict[dt.datetime, Counts]:
    out: dict[dt.datetime, Counts] = {}
    for start, queue, ok, dead in rows:
        out.setdefault(start, {})[queue] = (int(ok), int(dead))
    return out


class ThroughputCache:
    """The closed buckets' counts of one process, per bucket size."""

    def __init__(self, grace: float = GRACE_SECONDS, ttl: float = TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self.ttl = ttl
        self._clock = clock
        self._sizes: OrderedDict[int, dict[dt.datetime, Kept]] = OrderedDict()
        self._lock = threading.Lock()

    def counts(self, read: Reader, now: dt.datetime, starts: Sequence[dt.datetime],
               bucket_seconds: int) -> dict[dt.datetime, Counts]:
        """Per bucket start in ``starts`` (ascending, ``bucket_seconds`` apart, the last one
        holding ``now``): the counts of every queue that finished jobs in it."""
        clock = self._clock()
        with self._lock:
            kept = dict(self._sizes.get(bucket_seconds, {}))
        since = first_to_read(starts, kept, bucket_seconds, now, clock, self.grace, self.ttl)
        fresh = group(read(since))  # outside the lock: a slow read holds up no other page
        out = {s: kept[s].counts for s in starts if s < since}
        out.update({s: fresh.get(s, {}) for s in starts if s >= since})
        with self._lock:
            size = self._sizes.setdefault(bucket_seconds, {})
            self._sizes.move_to_end(bucket_seconds)
            for s in starts:
                if s >= since and is_closed(s, bucket_seconds, now, self.grace):
                    size[s] = Kept(out[s], clock)
            # no window asks for more than 60 buckets of its size (service.bucket_seconds_for)
            oldest = now - dt.timedelta(seconds=60 * bucket_seconds)
            for s in [s for s in size if s < oldest]:
                del size[s]
            while len(self._sizes) > SIZES_KEPT:
                self._sizes.popitem(last=False)
        return out
