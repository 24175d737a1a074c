"""Job ids a producer takes from ``jobs_id_seq`` ahead of its single enqueues (issue 15).

With its id known before the INSERT is sent, a job without a unique_key goes out in one round
trip: the INSERT alone, autocommit. It took two, COMMIT waiting for the
INSERT's answer, so that a connection lost before COMMIT was known to have stored nothing.
With the id known the outcome stays knowable however the connection is lost: the same INSERT
sent again with the same id on a fresh connection stores the job, or finds the row the first
try committed (the primary key stops a second one; a first try not yet committed makes it wait
for that transaction). See Database.enqueue and ``enqueue_with_id`` in queries.sql.

Ids are taken ``RESERVE`` at a time, the next block on the trip of the enqueue that takes
the last one or finds its block older than ``REFRESH_SECONDS``; a block older than
``MAX_AGE_SECONDS`` is not used (the next enqueue takes a fresh one first, in a round trip of
its own). So an id is at most a second older than its insert, whatever the producer's pace: a
job enqueued at most ~1 s after another may have a lower id. What that touches:

- claims order by (priority, run_at, id), run_at being the insert's own now(): unchanged;
- listings newest first (``id DESC``) may show jobs of the same second a few places apart;
- a bulk action walks ids downwards from the newest at its start (sql/bulk.sql), so a job
  enqueued within about a second of its first batch may be reached (before, only one whose
  transaction was in flight at that instant could be).

What the id cannot tell: a try whose answer was lost and whose job was deleted before the
next try arrives (within seconds: a retention of 0 with prune running, a bulk delete) is
stored again by it; and after an asynchronous failover that lost transactions and set the
sequence back, another producer may be given the same id, which the next try then reads as
this job's when task, queue and arguments are the same. A unique_key closes both.

Ids not used are a gap, as a rolled-back insert leaves one (a producer at 10 enqueues a second
uses 5 of each 16). A forked child starts with no ids (it would share its parent's).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable

# Small: few ids go unused, and a block costs nothing measurable (it rides on an enqueue).
RESERVE = 16
# A block is refreshed on an enqueue's own trip once this old, and not used once MAX_AGE old:
# a producer enqueueing twice a second or more never waits for a block.
REFRESH_SECONDS = 0.5
MAX_AGE_SECONDS = 1.0


class ReservedIds:
    """The ids one Database (or AsyncDatabase) has taken and not used yet; shared by the
    threads that use it (an id is handed out once)."""

    def __init__(self) -> None:
        self._ids: deque[int] = deque()
        self._since = 0.0  # time.monotonic() when the block was taken
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _drop(ref))

    def take(self) -> int | None:
        """The next id, or None when none is left or the block is too old (reserve first)."""
        with self._lock:
            if self._ids and time.monotonic() - self._since > MAX_AGE_SECONDS:
                self._ids.clear()
            return self._ids.popleft() if self._ids else None

    def running_out(self) -> bool:
        """The enqueue that asks (after its take) reserves the next block on its own trip."""
        return not self._ids or time.monotonic() - self._since > REFRESH_SECONDS

    def add(self, ids: Iterable[int]) -> None:
        """A fresh block, in place of what is left of the last one."""
        block = deque(ids)
        with self._lock:
            self._ids, self._since = block, time.monotonic()

    def drop(self) -> None:
        """Forget every id not yet used: after a lost connection (perhaps a failover, whose
        new primary may not have seen the block taken on the old one), a read-only server,
        or an id found taken, the next block is taken afresh."""
        with self._lock:
            self._ids.clear()


def _drop(ref: weakref.ref[ReservedIds]) -> None:
    """In a forked child: no ids, and a new lock (another thread may have held the old one
    at the fork, and no thread of the child would ever release it)."""
    ids = ref()
    if ids is not None:
        ids._lock, ids._ids = threading.Lock(), deque()
