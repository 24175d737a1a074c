"""Status conditions in the Kubernetes form (type, status, reason, message,
observedGeneration, lastTransitionTime)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

READY = "Ready"
DATABASE_REACHABLE = "DatabaseReachable"
SCALING = "Scaling"
# True while there is work: backlog + in-flight above the activation threshold (KEDA's Active)
ACTIVE = "Active"
# True while the replicas come from spec.scaling.fallback (too many failed stats reads)
FALLBACK = "Fallback"
# True when every queue of the JobQueue is paused (skiplock queue pause): nothing is claimed
PAUSED = "Paused"
ORDER = (READY, DATABASE_REACHABLE, SCALING, ACTIVE, FALLBACK, PAUSED)


def timestamp(now: dt.datetime | None = None) -> str:
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_timestamp(now: dt.datetime | None = None) -> str:
    """Milliseconds, for lastPollTime: two polls within one second must still differ."""
    return (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def set_condition(conditions: Sequence[dict[str, Any]], type_: str, status: bool | None,
                  reason: str, message: str, generation: int | None,
                  now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """A new list with ``type_`` set (``None``: Unknown); lastTransitionTime moves only when
    the status flips, so watchers can tell how long a condition has held."""
    value = "Unknown" if status is None else "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed_at = (old.get("lastTransitionTime") if old and old.get("status") == value
                  else None) or timestamp(now)
    new = {"type": type_, "status": value, "reason": reason, "message": message[:32768],
           "lastTransitionTime": changed_at}
    if generation is not None:
        new["observedGeneration"] = generation
    rest = [dict(c) for c in conditions if c.get("type") != type_]
    out = [*rest, new]
    return sorted(out, key=lambda c: ORDER.index(c["type"]) if c["type"] in ORDER else len(ORDER))


def get(conditions: Sequence[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((dict(c) for c in conditions if c.get("type") == type_), None)
