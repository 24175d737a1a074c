"""The pure parts around the poll: the status builder, the change test, the NOTIFY filter
and the liveness rule."""

from __future__ import annotations

import datetime as dt

from skiplock_operator.handlers import PollClock, allowed_staleness, stale_polls
from skiplock_operator.models import parse_spec
from skiplock_operator.scaling import Decision, Load, Policy, notify_can_change
from skiplock_operator.settings import OperatorSettings
from skiplock_operator.status import PollResult, Stop, build_status, differs
from tests.unit.operator_fakes import body, stats

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def result(**kw: object) -> PollResult:
    spec = parse_spec(body()["spec"])
    base: dict[str, object] = dict(
        generation=3, now=NOW, spec=spec, deployment_name="jq-worker",
        deployment={"spec": {"replicas": 2}, "status": {"replicas": 3, "readyReplicas": 1,
                                                        "availableReplicas": 1}},
        per_queue=[stats(runnable=7)], load=Load(7, 0),
        decision=Decision(2, 1, "Stabilizing", "holding 2"), count_cap=1000)
    base.update(kw)
    return PollResult(**base)  # type: ignore[arg-type]


def test_replicas_are_the_deployments_own() -> None:
    st = build_status({}, result())
    assert (st["desiredReplicas"], st["replicas"], st["readyReplicas"],
            st["availableReplicas"]) == (2, 3, 1, 1)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "1 ready" in ready["message"]
    assert [c["type"] for c in st["conditions"]] == ["Ready", "DatabaseReachable", "Scaling",
                                                     "Active", "Fallback", "Paused"]
    assert all(c["observedGeneration"] == 3 for c in st["conditions"])


def test_a_stop_sets_ready_and_scaling_only() -> None:
    st = build_status({}, PollResult(3, NOW, stop=Stop("Forbidden", "may not get secrets",
                                                       "not scaling")))
    assert {c["type"]: c["reason"] for c in st["conditions"]} == {
        "Ready": "Forbidden", "Scaling": "Forbidden"}
    assert "desiredReplicas" not in st


def test_differs_ignores_the_heartbeat_only() -> None:
    st = build_status({}, result())
    later = build_status(st, result(now=NOW + dt.timedelta(seconds=5)))
    assert later["lastPollTime"] != st["lastPollTime"]
    assert not differs(st, later)
    assert differs(st, build_status(st, result(per_queue=[stats(runnable=8)])))
    # a condition keeps its transition time while its status holds
    assert later["conditions"] == st["conditions"]


def test_notify_filter() -> None:
    p = Policy(max_replicas=5)
    assert notify_can_change("insert", "q", p, 4, frozenset())
    assert not notify_can_change("insert", "q", p, 5, frozenset())       # at max already
    assert not notify_can_change("insert", "q", p, 1, frozenset({"q"}))  # queue paused
    assert not notify_can_change("insert", "q", Policy(paused=True), 0, frozenset())
    assert notify_can_change("pause", "q", p, 5, frozenset())
    assert notify_can_change("insert", "q", None, None, frozenset())    # nothing known yet


def test_liveness_rule() -> None:
    s = OperatorSettings(identity="x")
    assert allowed_staleness(s, 1) == 60 and allowed_staleness(s, 30) == 90
    polls = {"a/x": PollClock(100, 60), "b/y": PollClock(30, 60)}
    assert stale_polls(polls, 100) == ["b/y"]
    assert stale_polls(polls, 90) == []


def test_the_oldest_jobs_age_alone_is_no_reason_to_write() -> None:
    from skiplock import inspection

    def aged(age: float) -> inspection.QueueStats:
        return inspection.QueueStats(queue="default", runnable=7, scheduled=0, in_flight=0,
                                     stuck=0, dead=0, dead_last_hour=0, high_retry=0,
                                     oldest_runnable_age=age)

    st = build_status({}, result(per_queue=[aged(1.0)]))
    later = build_status(st, result(per_queue=[aged(9.0)]))
    assert later["oldestRunnableAgeSeconds"] == 9.0 and not differs(st, later)
