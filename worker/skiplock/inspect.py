"""Old name of skiplock.inspection, kept only so that importers not yet changed still work.

It shadows the standard library's ``inspect`` for anything run from this directory; delete it
once nothing imports ``skiplock.inspect`` (the operator: controller.py, status.py; metrics.py's
TYPE_CHECKING import; benchmarks/backlog_query.py, benchmarks/run.py).
"""

from __future__ import annotations

from .inspection import (
    DEFAULT_COUNT_CAP,
    HIGH_RETRY_ATTEMPTS,
    QueueStats,
    busy_pods,
    pod_of,
    queue_stats,
    totals,
)

__all__ = [
    "DEFAULT_COUNT_CAP",
    "HIGH_RETRY_ATTEMPTS",
    "QueueStats",
    "busy_pods",
    "pod_of",
    "queue_stats",
    "totals",
]
