"""Whether a worker is alive in the sense that matters: its jobs' outcomes reach the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Health:
    problems: tuple[str, ...]
    pending_outcomes: int
    oldest_pending_seconds: float | None
    at: float  # monotonic time of the snapshot

    @property
    def healthy(self) -> bool:
        return not self.problems


def assess(
    service_problems: Sequence[str],
    pending_outcomes: int,
    oldest_pending_seconds: float | None,
    lease_seconds: float,
    at: float,
    abandoned: int = 0,
    concurrency: int = 0,
) -> Health:
    """A worker is failing when a service is down, when its oldest outcome has waited more
    than half a lease (by then its jobs' leases are renewed for outcomes that may never land),
    or when every slot holds a handler abandoned after a cancel or deadline (threads cannot be
    killed: only a restart gets those slots back)."""
    problems = list(service_problems)
    if concurrency and abandoned >= concurrency:
        problems.append(
            f"all {concurrency} slots hold handlers that did not stop after a cancel or "
            "deadline; restart the worker to get them back"
        )
    if oldest_pending_seconds is not None and oldest_pending_seconds > lease_seconds / 2:
        problems.append(
            f"{pending_outcomes} outcome(s) not written; the oldest has waited "
            f"{oldest_pending_seconds:.1f}s (more than half the {lease_seconds:.0f}s lease)"
        )
    return Health(tuple(problems), pending_outcomes, oldest_pending_seconds, at)


def stale(health: Health, now: float, max_age: float) -> Health:
    """The snapshot as the probe should report it: an old snapshot means the event loop (or
    the monitor) is stuck, which is a failure of its own."""
    age = now - health.at
    if age <= max_age:
        return health
    return Health(
        (*health.problems, f"health snapshot is {age:.0f}s old: the worker's event loop is stuck"),
        health.pending_outcomes,
        health.oldest_pending_seconds,
        health.at,
    )
