"""The garbage collector's settings of a process that runs a worker (``skiplock worker``).

A busy worker makes a few container objects per job (an asyncio Task, its run, its context,
its outcome) and frees nearly all of them by reference counting; the cyclic collector still
runs a young-generation pass every 700 such allocations, and every tenth pass walks the older
generations: everything start-up made (modules, the app, settings) that lives as long as the
process. Measured on a no-op job (docs/benchmarks.md, "The worker's own CPU"): freezing
start-up's objects took the worker's CPU from 17.9 to 16.2 µs per job, and a young generation
of 10,000 to 15.4.

The library never changes a process's collector by itself: only the CLI's worker (a process
Skiplock owns) calls this. A program that embeds a Worker can call it too.
"""

from __future__ import annotations

import gc

# Young-generation threshold: a pass per 10,000 net allocations instead of 700. Garbage
# in reference cycles (a caught exception's traceback, say) waits a little longer for its pass.
YOUNG_THRESHOLD = 10_000


def settle_for_work() -> None:
    """Call once start-up is done, before the worker runs: start-up's objects leave the
    generations the collector walks (gc.freeze), and young passes come less often."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
