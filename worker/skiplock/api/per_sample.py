"""What the pages make from the backlog samples, made once per sample.

A queue's backlog chart on the queues page, and its thinned history in ``GET /v1/queues``, are
functions of the sampler's ring alone, which changes only when a sample is taken (every
``sample_interval``, 10 s by default), while an open queues page refreshes itself every 5 s
and every viewer asks for the same queues. With an hour of samples at 1,000 queues, thinning
360 samples to 120 points and drawing the chart cost ~0.4-0.5 ms per queue: ~20-27 ms of a
page of 50 charts, as much of an API page of 100 queues' series. So each is kept until the next
sample and shared by every view until then. A new sample drops everything kept: what a view
gets is never older than the samples it read.

The sampler also makes again, before it publishes a sample, the values views asked for since
the last one (``renew``): an open page then finds its charts made when it next refreshes,
instead of the first view after each sample paying for them.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from .history import Sample

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The largest page (service.OVERVIEW_PAGE_MAX): a page of 1,000 queues finds its own values
# again. Each value is at most ~10 kB (a chart at 120 points ~6 kB of markup, a series of at
# most 120 points ~9 kB measured: the API keeps no larger series), so ~10 MB per PerSample at
# most, whatever the number of queues (twice that while renew makes the next snapshot's).
KEEP = 1000


class PerSample(Generic[K, V]):
    """Values by key, each ``make(samples, key)`` once per snapshot of the samples
    (BacklogHistory.snapshot's count): kept until a newer snapshot, ``keep`` at most (the
    least recently used go). One PerSample serves one BacklogHistory: the counts of two
    histories are not comparable."""

    def __init__(self, make: Callable[[Sequence[Sample], K], V], keep: int = KEEP) -> None:
        self._make = make
        self._keep = keep
        self._lock = threading.Lock()
        self._taken = -1
        self._kept: collections.OrderedDict[K, V] = collections.OrderedDict()
        # keys views asked for at self._taken, least recently first: what renew makes again
        self._asked: collections.OrderedDict[K, None] = collections.OrderedDict()
        self.made = 0  # values views made (their misses), for tests and benchmarks
        self.renewed = 0  # values the sampler made ahead of views

    def get(self, taken: int, samples: Sequence[Sample], key: K) -> V:
        """The value for ``key`` from snapshot ``taken`` (whose samples are ``samples``):
        kept, or made now."""
        with self._lock:
            if taken > self._taken:  # a new sample: what is kept is out of date
                self._start(taken, {})
            if taken == self._taken:
                _touch(self._asked, key, None, self._keep)
                if key in self._kept:
                    self._kept.move_to_end(key)
                    return self._kept[key]
        # Made outside the lock: views making other keys do not wait on this one. A view
        # holding an older snapshot than what is kept makes its own and keeps none.
        value = self._make(samples, key)
        with self._lock:
            self.made += 1
            if taken == self._taken:
                _touch(self._kept, key, value, self._keep)
        return value

    def renew(self, taken: int, samples: Sequence[Sample]) -> None:
        """Before snapshot ``taken`` is published (BacklogHistory.sample_once): make from its
        ``samples`` the values views asked for at the snapshot before, and keep them for it.
        Views meanwhile still get what is kept for theirs. A key nobody asks for again is made
        once more at most. A key whose make raises is skipped (its views make their own and
        see the error), the others are kept, and the first error is raised at the end."""
        with self._lock:
            if taken <= self._taken:
                return
            keys = list(self._asked)
        made: dict[K, V] = {}
        failed: Exception | None = None
        for key in keys:  # outside the lock, as in get
            try:
                made[key] = self._make(samples, key)
            except Exception as exc:
                failed = failed or exc
        with self._lock:
            if taken > self._taken:
                self.renewed += len(made)
                self._start(taken, made)
        if failed is not None:
            raise failed

    def _start(self, taken: int, made: dict[K, V]) -> None:
        """Keep ``made`` for snapshot ``taken``, and nothing older (the lock is held)."""
        self._taken = taken
        self._kept = collections.OrderedDict(made)
        self._asked = collections.OrderedDict()


def _touch(kept: collections.OrderedDict[K, V], key: K, value: V, keep: int) -> None:
    """``key`` is now the most recently used, with ``value``; the least recently used beyond
    ``keep`` go."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > keep:
        kept.popitem(last=False)
