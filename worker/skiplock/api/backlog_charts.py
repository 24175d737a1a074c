"""The dashboard's backlog charts, each drawn once per sample.

A queue's backlog chart is a function of the sampler's ring alone, which changes only when a
sample is taken (every ``sample_interval``, 10 s by default), while an open queues page
refreshes itself every 5 s and every viewer draws the same charts. At 1,000 queues with an
hour of samples the 50 charts of a page cost ~15 ms of its time (thinning 360 samples to 120
points per queue, then the markup), so a chart is kept until the next sample and shared by
every view until then. A new sample drops every kept chart: a kept chart is never older than
the samples the page was read with.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

from markupsafe import Markup

from .history import Sample

Draw = Callable[[Sequence[Sample], str], Markup]

# Ten pages of 50 queues (~5 kB each at 120 points): a few MB at most, whatever the queues.
KEEP = 500


class BacklogCharts:
    def __init__(self, draw: Draw, keep: int = KEEP) -> None:
        self._draw = draw
        self._keep = keep
        self._lock = threading.Lock()
        self._taken = -1
        self._charts: collections.OrderedDict[str, Markup] = collections.OrderedDict()
        self.drawn = 0  # charts drawn (the misses), for tests and benchmarks

    def chart(self, taken: int, samples: Sequence[Sample], queue: str) -> Markup:
        """``queue``'s chart from ``samples``, the history's snapshot number ``taken``."""
        with self._lock:
            if taken > self._taken:  # a new sample: what is kept is out of date
                self._charts.clear()
                self._taken = taken
            kept = self._charts.get(queue) if taken == self._taken else None
            if kept is not None:
                self._charts.move_to_end(queue)
                return kept
        # Drawn outside the lock: pages drawing other queues do not wait on this one. A
        # view holding an older snapshot than the kept charts' draws its own and keeps none.
        markup = self._draw(samples, queue)
        with self._lock:
            self.drawn += 1
            if taken == self._taken:
                self._charts[queue] = markup
                while len(self._charts) > self._keep:
                    self._charts.popitem(last=False)
        return markup
