"""Independent reads of one request, run at once on connections of their own.

The overview's reads (the open throughput buckets, the page's names, the page's counts, the
lease holders) each wait on the database for 3-18 ms at 1,000 queues, and one after another
they were most of a dashboard page. Run side by side they cost about the longest of them. Each
read takes its own pool connection and gives it back when done; the request's thread waits
holding none, so requests waiting on each other's reads cannot starve the pool.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
log = logging.getLogger("skiplock.api")


class Reads(Protocol):
    """How a caller runs its independent reads: SideBySide, or ONE_BY_ONE inline."""

    def start(self, read: Callable[[], T]) -> Future[T]: ...

    def close(self) -> None: ...


class SideBySide:
    """Runs reads in threads of its own. Each runs in a copy of the caller's context, so the
    request's QueryScope (read pool, cancel at the deadline) covers it as it covers the
    caller's own reads."""

    def __init__(self, threads: int) -> None:
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="skiplock-read")

    def start(self, read: Callable[[], T]) -> Future[T]:
        return self._threads.submit(contextvars.copy_context().run, read)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class OneByOne:
    """Each read at once in the caller's thread, when started: for callers that have no
    threads to spare (a script, a test of one read)."""

    def start(self, read: Callable[[], T]) -> Future[T]:
        done: Future[T] = Future()
        try:
            done.set_result(read())
        except Exception as exc:  # handed to whoever asks for the result, as a thread does
            done.set_exception(exc)
        return done

    def close(self) -> None:
        pass


ONE_BY_ONE = OneByOne()


def discard(*reads: Future[Any] | None) -> None:
    """Reads whose result is not wanted (a guess that missed, or the request failed): those not
    yet running never start; a failure of one that ran is logged, not lost."""
    for read in reads:
        if read is not None and not read.cancel():
            read.add_done_callback(_log_failure)


def _log_failure(read: Future[Any]) -> None:
    if not read.cancelled() and (exc := read.exception()) is not None:
        log.debug("a read whose result was not wanted failed: %s", exc)
