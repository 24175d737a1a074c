"""What to do with a job this worker's version cannot run (pure: a rolling deploy's decision).

During a rollout, old and new worker versions share a queue: a job for a task only the new
version has, or with arguments only one version's handler accepts, must be left to a worker
that can run it, not killed. Only when no live worker can run it for a grace period does it
end dead, with the message that says why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..catalogue import validate_args
from ..db import Peer
from ..errors import InvalidArguments

# How long a job nobody can run waits between looks (capped by what is left of the grace).
RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Unfit:
    """The decision for one job: hand it to a peer, wait, or fail it as dead."""

    action: Literal["hand_back", "defer", "dead"]
    message: str
    delay: float = 0.0


def capable_peers(
    task: str,
    args: Mapping[str, Any],
    queue: str,
    peers: Mapping[str, Peer],
    own_params: Mapping[str, Any] | None,
) -> list[str]:
    """Live peers that serve ``queue`` and whose registered version of ``task`` accepts
    ``args``. A peer registered with exactly our own version does not count: whatever made
    this worker refuse the job makes that one refuse it too (else two workers of one version
    would hand it to each other for ever)."""
    found = []
    for worker_id, peer in peers.items():
        params = peer.tasks.get(task)
        if params is None or queue not in peer.queues or params == own_params:
            continue
        # A row from a version whose params are shaped differently (KeyError, TypeError…)
        # is not capable either; it must not fail the executor.
        with contextlib.suppress(InvalidArguments, LookupError, TypeError, AttributeError):
            validate_args(task, params, args)
            found.append(worker_id)
    return sorted(found)


def decide_unfit(
    why: str,
    task: str,
    args: Mapping[str, Any],
    queue: str,
    peers: Mapping[str, Peer],
    own_params: Mapping[str, Any] | None,
    unrunnable_for: float | None,
    grace: float,
) -> Unfit:
    """``why`` says what this worker found ("unknown task 'x': this worker runs a, b").

    ``unrunnable_for`` is how long (database time) the job has been known to have no worker
    that can run it; None when nobody found that before.
    """
    peers_ok = capable_peers(task, args, queue, peers, own_params)
    if peers_ok:
        return Unfit("hand_back", f"{why}; handed back for {peers_ok[0]}, which can run it")
    waited = float(unrunnable_for or 0.0)
    if waited >= grace:
        waited_text = f" for {waited:.0f}s" if grace > 0 else ""
        return Unfit("dead", f"{why}; no live worker can run it{waited_text}")
    left = grace - waited
    return Unfit(
        "defer",
        f"{why}; waiting for a worker that can run it (dead if none does within {left:.0f}s)",
        delay=min(RECHECK_SECONDS, left),
    )
