"""What the overview's last pages listed, to start their next reads before the names are known.

An overview page reads in a chain: the open throughput buckets say which queues finished jobs
in the window, those names go into the query that picks the page's queues, and the page's
queues into the query that counts them. Refreshed, a page nearly always lists what it listed
before, so the overview starts all three reads at once with the names the same page had last
time, and reads again only what turns out to differ (``still_to_count``). Every figure on the
page is still read during the request; a stale guess costs a read, never a stale answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

# Pages remembered (a key is one list's queues, cursor and size): past it the oldest goes.
# One page is at most service.OVERVIEW_PAGE_MAX names.
PAGES_KEPT = 32
WINDOWS_KEPT = 8
K = TypeVar("K", bound=Hashable)


class LastPages:
    """Per page (queues named, cursor, size, window): the queues it listed last; per window:
    the queues that had finished jobs in it."""

    def __init__(self, pages: int = PAGES_KEPT, windows: int = WINDOWS_KEPT) -> None:
        self._pages: OrderedDict[Hashable, tuple[str, ...]] = OrderedDict()
        self._finished: OrderedDict[int, tuple[str, ...]] = OrderedDict()
        self._limits = (pages, windows)
        self._lock = threading.Lock()

    def page(self, key: Hashable) -> tuple[str, ...] | None:
        with self._lock:
            return self._pages.get(key)

    def finished(self, window_minutes: int) -> tuple[str, ...] | None:
        with self._lock:
            return self._finished.get(window_minutes)

    def remember(self, key: Hashable, page: Sequence[str], window_minutes: int,
                 finished: Sequence[str] | None) -> None:
        """``finished``: None when the page did not read it (its queues were named)."""
        with self._lock:
            _put(self._pages, key, tuple(page), self._limits[0])
            if finished is not None:
                _put(self._finished, window_minutes, tuple(finished), self._limits[1])


def _put(kept: OrderedDict[K, tuple[str, ...]], key: K, value: tuple[str, ...],
         limit: int) -> None:
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > limit:
        kept.popitem(last=False)


def still_to_count(page: Sequence[str], counted: Iterable[str]) -> list[str]:
    """The queues of ``page`` that a read started on a guess did not count, in page order."""
    have = set(counted)
    return [q for q in page if q not in have]
