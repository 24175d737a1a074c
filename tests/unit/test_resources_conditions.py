"""Status conditions in the Kubernetes form (pure logic)."""

from __future__ import annotations

import datetime as dt

from skiplock_operator import conditions as cond

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_transition_time_moves_only_when_status_flips() -> None:
    c = cond.set_condition([], cond.DATABASE_REACHABLE, True, "StatsRead", "ok", 3, now=T0)
    same = cond.set_condition(c, cond.DATABASE_REACHABLE, True, "StatsRead", "still ok", 4,
                              now=T1)
    got = cond.get(same, cond.DATABASE_REACHABLE)
    assert got is not None
    assert got["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert (got["message"], got["observedGeneration"]) == ("still ok", 4)
    flipped = cond.set_condition(same, cond.DATABASE_REACHABLE, False, "DatabaseUnavailable",
                                 "down", 4, now=T1)
    got = cond.get(flipped, cond.DATABASE_REACHABLE)
    assert got is not None
    assert (got["status"], got["lastTransitionTime"]) == ("False", "2026-01-01T12:05:00Z")


def test_one_entry_per_type_in_a_stable_order() -> None:
    c: list[dict[str, object]] = []
    for type_ in (cond.SCALING, cond.DATABASE_REACHABLE, cond.READY, cond.SCALING):
        c = cond.set_condition(c, type_, True, "R", "m", 1, now=T0)
    assert [x["type"] for x in c] == ["Ready", "DatabaseReachable", "Scaling"]
