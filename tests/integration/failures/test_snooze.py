"""Snooze: a handler raises ``Snooze(seconds)`` and the job goes back to queued at the
database's now() + seconds (never the worker's clock), without counting an attempt, at most
``max_snoozes`` times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from skiplock import Client, Snooze
from tests.control_tasks import events
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.integration.failures.test_clock_skew import HOUR, skewed
from tests.support.chaos import audit, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

Sql = Any
APP = "tests.control_tasks:app"


@pytest.mark.parametrize("offset", [HOUR, -HOUR], ids=["clock-ahead", "clock-behind"])
def test_snooze_counts_no_attempt_and_uses_database_time(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path, offset: int) -> None:
    spawn_worker(APP, *WORKER_ARGS, env=skewed(offset), name="skewed")
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        job = c.enqueue("snoozer", {"marker": str(marker), "times": 2, "seconds": 1.0})
        wait_until(lambda: state_of(audited, job)[0] == "succeeded", 30, "the job to succeed")
        result = c.get_job(job)
    assert result is not None
    # Two snoozes, then one counted attempt.
    assert result["result"] == {"snoozes": 2, "attempt": 1}
    assert (result["attempts"], result["snoozes"]) == (1, 2)
    trail = audit(audited, job)
    assert [(t[1], t[2]) for t in trail] == [
        ("queued", 0), ("running", 1), ("queued", 0), ("running", 1), ("queued", 0),
        ("running", 1), ("succeeded", 1)]
    # Each snooze's run_at is the database's time of the snooze + 1 s, and the next run starts
    # then (not an hour early or late, as the worker's own clock would have it).
    for snoozed, rerun in ((trail[2], trail[3]), (trail[4], trail[5])):
        wait = (snoozed[3] - snoozed[6]).total_seconds()
        assert 0.9 <= wait <= 1.1, wait
        assert 0 <= (rerun[6] - snoozed[3]).total_seconds() < 3
    assert len([e for e in events(marker) if e[0] == "start"]) == 3
    assert_invariants(audited, [job], expected_states={job: "succeeded"})


def test_snoozing_past_max_snoozes_is_dead(database_url: str, audited: Sql,
                                           spawn_worker: Any, marker: Path) -> None:
    spawn_worker(APP, *WORKER_ARGS)
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        job = c.enqueue("snoozer", {"marker": str(marker), "times": 99, "seconds": 0})
        wait_until(lambda: state_of(audited, job)[0] == "dead", 30, "the job to go dead")
    (row,) = audited("SELECT attempts, snoozes, last_error FROM jobs WHERE id = %s", job)
    assert row[:2] == (1, 3), row
    assert "snoozed 3 times: the task allows max_snoozes=3" in row[2]
    assert len([e for e in events(marker) if e[0] == "start"]) == 4
    assert_invariants(audited, [job], expected_states={job: "dead"})


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 10 ** 9, True, "1", None])
def test_snooze_refuses_what_is_not_a_delay(bad: Any) -> None:
    with pytest.raises(ValueError, match="Snooze"):
        Snooze(bad)
