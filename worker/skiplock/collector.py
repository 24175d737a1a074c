"""The garbage collector, where Skiplock's own work makes its cyclic passes costly.

CPython's cyclic collector runs a young-generation pass every 700 net allocations of
container objects, and every tenth pass walks the older generations too. Two places in
Skiplock allocate at that rate while holding many objects alive, so each pass walks them:

- a busy worker makes a few containers per job (an asyncio Task, its run, its context, its
  outcome) and frees nearly all of them by reference counting; the passes they trigger walk
  everything start-up made (modules, the app, settings), which lives as long as the process.
  Freezing start-up's objects (``settle_for_work``) took a no-op job's worker CPU from 17.9
  to 16.2 µs (docs/benchmarks.md, "The worker's own CPU per job"). The pass frequency is
  left as it is: a young generation of 10,000 took 0.8 µs more off, but a handler whose
  garbage is in cycles (an exception kept with its traceback, a document with parent links)
  would hold ~14 times as much of it between passes, and a pod's memory limit is the worse
  surprise;
- a bulk enqueue holds every job of the call (its dict, its arguments, its prepared row)
  until the call returns: 10,000 jobs are ~30,000 containers, promoted and walked again and
  again. No cyclic pass during the call (``paused``) took enqueue_many of 10,000-job chunks
  from 191k to 210k jobs/s. The pass that came due meanwhile runs when the call ends.

Reference counting frees what it always frees in both cases. The library changes a
process's collector settings only in the CLI's worker (a process Skiplock owns); ``paused``
restores what it found.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_pauses = 0  # paused() blocks open now, in every thread and task
_resume = False  # the collector was enabled when the first of them began


def settle_for_work() -> None:
    """Call once start-up is done, before the worker runs: start-up's objects leave the
    generations the collector walks (gc.freeze)."""
    gc.collect()  # start-up's own garbage first: a frozen object is never collected
    gc.freeze()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """No automatic cyclic pass inside the block (a bulk enqueue). Blocks may overlap, in
    threads or in tasks: the collector is enabled again when the last one ends, if it was
    enabled when the first began (code that disables it meanwhile sees it enabled then).
    Each block's end runs the pass that came due while it ran (when the collector was
    enabled before the pauses): producers whose calls overlap without a gap keep it
    disabled, and garbage in cycles, theirs or anyone's, must not pile up meanwhile."""
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
            catch_up = _resume
            if _pauses == 0 and _resume:
                gc.enable()
        if catch_up:
            _collect_due()


def _after_fork_in_child() -> None:
    # a fork while another thread was in a paused() block: that block never ends in the child
    global _pauses
    if _pauses:
        _pauses = 0
        if _resume:
            gc.enable()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _collect_due() -> None:
    """The pass the automatic collector would have run by now, of the young or the middle
    generation: whichever count passed its threshold (a young pass per call, at most, where
    the call's own allocations would have triggered dozens). Never the oldest: the automatic
    collector skips most of those passes (until long-lived objects grew by a quarter), and
    it decides them again once no call is paused."""
    counts, limits = gc.get_count(), gc.get_threshold()
    for generation in (1, 0):
        if limits[generation] and counts[generation] > limits[generation]:
            gc.collect(generation)
            return
