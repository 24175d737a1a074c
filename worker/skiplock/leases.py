"""Which runs lost their lease: a pure decision over what a heartbeat sent and got back."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TypeVar

Run = TypeVar("Run")


def runs_that_lost_their_lease(
    sent: Mapping[int, Run], renewed: Collection[int], held_now: Mapping[int, Run]
) -> list[Run]:
    """The runs whose renewal the database refused and which this worker still holds.

    A run is judged by identity, not by (job id, attempt): after a server crash drops a claim,
    the same worker can claim the same job again under the same attempt number while a renewal
    for the old run is in flight. The refusal is about the old run only; marking the new one
    lost would stop its heartbeat, let its lease expire and run the job once more.
    """
    return [
        run
        for job_id, run in sent.items()
        if job_id not in renewed and held_now.get(job_id) is run
    ]
