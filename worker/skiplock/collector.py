"""The garbage collector, where Skiplock's own work makes its cyclic passes costly.

CPython's cyclic collector runs a young-generation pass every 700 net allocations of
container objects, and every tenth pass walks the older generations too. Two places in
Skiplock allocate at that rate while holding many objects alive, so each pass walks them:

- a busy worker makes a few containers per job (an asyncio Task, its run, its context, its
  outcome) and frees nearly all of them by reference counting; the passes they trigger walk
  everything start-up made (modules, the app, settings), which lives as long as the process.
  Measured on a no-op job (docs/benchmarks.md, "The worker's own CPU per job"): freezing
  start-up's objects took the worker's CPU from 17.9 to 16.2 µs per job, and a young
  generation of 10,000 to 15.4 (settle_for_work);
- a bulk enqueue holds every job of the call (its dict, its arguments, its prepared row)
  until the call returns: 10,000 jobs are ~30,000 containers, promoted and walked again and
  again. No cyclic pass during the call (``paused``) took enqueue_many of 10,000-job chunks
  from 191k to 210k jobs/s.

Reference counting frees what it always frees in both cases; only garbage in reference
cycles waits longer for its pass. The library changes a process's collector settings only
in the CLI's worker (a process Skiplock owns); ``paused`` restores what it found.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

# Young-generation threshold of a worker process: a pass per 10,000 net allocations, not 700.
YOUNG_THRESHOLD = 10_000

_lock = threading.Lock()
_pauses = 0  # paused() blocks open now, in every thread and task
_resume = False  # the collector was enabled when the first of them began


def settle_for_work() -> None:
    """Call once start-up is done, before the worker runs: start-up's objects leave the
    generations the collector walks (gc.freeze), and young passes come less often."""
    gc.collect()  # start-up's own garbage first: a frozen object is never collected
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (a bulk enqueue). Blocks may overlap, in
    threads or in tasks: the collector is enabled again when the last one ends, if it was
    enabled when the first began (code that disables it meanwhile sees it enabled then)."""
    global _pauses, _resume
    with _lock:
        if _pauses == 0:
            _resume = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()
