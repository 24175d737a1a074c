"""The invariants every chaos and recovery test ends on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Sql = Callable[..., list[tuple[Any, ...]]]


def assert_all_terminal(sql: Sql, expected_jobs: int | None = None) -> None:
    """Every job terminal, one result per succeeded job, none stuck, none lost."""
    not_terminal = sql(
        "SELECT id, state::text FROM jobs WHERE state NOT IN ('succeeded', 'dead', 'cancelled')"
    )
    assert not_terminal == [], f"jobs not terminal: {not_terminal[:10]}"
    missing = sql(
        "SELECT j.id FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
        "WHERE j.state = 'succeeded' AND r.job_id IS NULL"
    )
    assert missing == [], f"succeeded without a result: {missing[:10]}"
    extra = sql(
        "SELECT r.job_id FROM results r JOIN jobs j ON j.id = r.job_id WHERE j.state <> 'succeeded'"
    )
    assert extra == [], f"results for jobs that did not succeed: {extra[:10]}"
    stuck = sql("SELECT id FROM jobs WHERE state = 'running' AND locked_until < now()")
    assert stuck == [], f"stuck jobs: {stuck}"
    if expected_jobs is not None:
        assert sql("SELECT count(*) FROM jobs") == [(expected_jobs,)], "jobs lost or duplicated"
