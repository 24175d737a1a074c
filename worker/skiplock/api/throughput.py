"""Finished jobs per queue and time bucket for the overview, each closed bucket read once.

Read from the jobs table on every page, the overview's throughput cost followed the window's
rows, that is throughput times window: at 1,000 queues and 88,000 jobs finished in 30 minutes, two
passes over them were 60-90 ms of a page's SQL, and a busier queue or the 24-hour window costs
more still. A bucket that has ended stops changing: jobs finish with ``finished_at = now()``,
the start of their transaction, and those transactions are bounded by statement_timeout, so
once a bucket ended ``grace`` seconds ago (at least twice the statement timeout) every job
finished in it has committed. Each API process therefore reads a closed bucket once, for every
queue, and keeps its counts for ``ttl`` seconds; a page reads only the buckets still open (or
kept too long) in one range scan of jobs_finished_idx.

What this gives up, by design:
- a job whose finishing transaction became visible more than ``grace`` after it began (a
  synchronous standby that stopped confirming, a database clock stepped back) is missed by a
  bucket read meanwhile, until that bucket is read again;
- a prune, a bulk delete or a copy of old jobs shows within ``ttl``, not at once; a queue whose
  finished jobs were all deleted stays listed (with nothing to count) as long;
- the kept buckets are all read at once on a process's first page, so they expire together:
  one page in each ``ttl`` reads the whole window again, as does a page of a fifth window
  length in use at once (SIZES_KEPT), or any page once the counts kept pass MAX_ENTRIES.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

# queue -> (succeeded, dead) in one bucket; a queue whose only finished jobs were cancelled
# is kept with (0, 0): it finished jobs within the window, so the overview lists it.
Counts = Mapping[str, tuple[int, int]]
# (bucket start, queue, succeeded, dead) rows for the buckets from a start on
Reader = Callable[[dt.datetime], Sequence[tuple[dt.datetime, str, int, int]]]

GRACE_SECONDS = 120.0
TTL_SECONDS = 600.0
# Bucket sizes kept at once (one per window length in use): a client stepping through every
# window cannot make the process hold every size.
SIZES_KEPT = 4
# Queue-bucket counts kept in all (~100 bytes each): 1,000 busy queues over a 60-bucket window
# of each of 4 sizes is 240,000. Past it, the oldest sizes go; a size that alone passes it is
# read whole on each page, as before the cache.
MAX_ENTRIES = 300_000


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


def group(rows: Sequence[tuple[dt.datetime, str, int, int]]
          ) -> dict[dt.datetime, dict[str, tuple[int, int]]]:
    """Rows by bucket start in UTC: the database answers in its session's time zone, and two
    datetimes of one instant in the repeated hour of a DST change neither compare nor hash
    equal to the UTC start the overview looks up."""
    out: dict[dt.datetime, dict[str, tuple[int, int]]] = {}
    for start, queue, ok, dead in rows:
        out.setdefault(start.astimezone(dt.UTC), {})[queue] = (int(ok), int(dead))
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
        out: dict[dt.datetime, Counts] = {s: kept[s].counts for s in starts if s < since}
        # read-only views: a caller that changed one would change what later pages see
        out.update({s: MappingProxyType(fresh.get(s, {})) for s in starts if s >= since})
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
            while len(self._sizes) > SIZES_KEPT or (
                    self.entries() > MAX_ENTRIES and self._sizes):
                self._sizes.popitem(last=False)
        return out

    def entries(self) -> int:
        """Queue-bucket counts kept, over every size."""
        return sum(len(k.counts) for size in self._sizes.values() for k in size.values())
