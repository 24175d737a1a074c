"""The pure parts of limits: the declaration's checks, the key of a job, the operator's cap
on replicas and the schedule lead rule (scaling.decide)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock import App, JobContext
from skiplock.inspection import QueueLimits, QueueStats, limit_counts
from skiplock.limits import KEY_FUNCTIONS, KeyProblem, Rate, key_for
from skiplock_operator.controller import load_of
from skiplock_operator.scaling import History, Load, Policy, decide, limit_cap


def _handler(ctx: JobContext, tenant: str, n: int = 0) -> None:
    return None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"concurrency_limit": 0}, "concurrency_limit must be an int from 1"),
    ({"concurrency_limit": True}, "concurrency_limit must be an int"),
    ({"concurrency_limit": 2.5}, "concurrency_limit must be an int"),
    ({"key_limit": 2}, "key_limit needs a concurrency_key"),
    ({"concurrency_key": "tenant"}, "a key alone limits nothing"),
    ({"concurrency_key": "nope", "key_limit": 1}, "names no argument"),
    ({"concurrency_key": 5, "key_limit": 1}, "must name an argument or be a function"),
    ({"concurrency_limit": 1, "concurrency_key": "tenant", "key_limit": 2},
     "above concurrency_limit"),
    ({"rate_limit": (0, 1)}, "rate_limit's limit must be an int"),
    ({"rate_limit": (1, 0)}, "period must be > 0"),
    ({"rate_limit": (1, float("inf"))}, "period must be > 0"),
    ({"rate_limit": 5}, "rate_limit must be Rate"),
    ({"rate_limit": Rate(1, 1, per_key=True)}, "per-key rate_limit needs a concurrency_key"),
])
def test_bad_limits_are_refused_at_import(kwargs: dict[str, Any], message: str) -> None:
    app = App()
    with pytest.raises(ValueError, match=message):
        app.task(name="t", **kwargs)(_handler)
    assert "t" not in app.tasks


def test_limits_as_stored() -> None:
    app = App()
    app.task(name="t", concurrency_limit=5, concurrency_key="tenant", key_limit=2,
             rate_limit=Rate(10, per=60, per_key=True))(_handler)
    assert app.tasks["t"].limits.as_json() == {
        "concurrency_limit": 5, "key_limit": 2, "key": "arg:tenant", "rate_limit": 10,
        "rate_period": 60.0, "rate_per_key": True}
    app.task(name="plain")(_handler)
    assert app.tasks["plain"].limits.as_json() is None


def test_keys() -> None:
    assert key_for("t", None, {"tenant": "a"}) is None  # unlimited: the plain claim
    assert key_for("t", {"key": None}, {"tenant": "a"}) == ""  # limited as a whole
    arg = {"key": "arg:tenant"}
    assert key_for("t", arg, {"tenant": "acme"}) == "acme"
    # canonical JSON, numbers as jsonb keeps them (the workers' adoption reads them back)
    assert key_for("t", arg, {"tenant": 7}) == "7"
    assert key_for("t", arg, {"tenant": True}) == "true"
    assert key_for("t", arg, {"tenant": 1e20}) == "100000000000000000000"
    assert key_for("t", arg, {"tenant": {"b": 1, "a": "é"}}) == '{"a":"é","b":1}'
    assert key_for("t", arg, {}) == ""
    with pytest.raises(KeyProblem, match="over 200"):
        key_for("t", arg, {"tenant": "x" * 201})


def test_key_functions() -> None:
    app = App()
    app.task(name="by_fn", concurrency_key=lambda tenant, **_: tenant[:1], key_limit=1)(_handler)
    fn = {"key": "function"}
    assert KEY_FUNCTIONS["by_fn"] is app.tasks["by_fn"].limits.key_func
    assert key_for("by_fn", fn, {"tenant": "acme"}) == "a"
    with pytest.raises(KeyProblem, match="function failed: TypeError"):
        key_for("by_fn", fn, {"other": 1})
    with pytest.raises(KeyProblem, match="imports the task's module"):
        key_for("unknown_fn", fn, {"tenant": "a"})


def _stats(**kw: Any) -> QueueStats:
    base: dict[str, Any] = {"queue": "q", "runnable": 0, "scheduled": 0, "in_flight": 0,
                            "stuck": 0, "dead": 0, "dead_last_hour": 0, "high_retry": 0,
                            "oldest_runnable_age": None}
    return QueueStats(**{**base, **kw})


def test_backlog_leaves_out_jobs_a_limit_holds_back() -> None:
    s = _stats(runnable=10_000, stuck=2, waiting_on_limit=9_995)
    assert s.backlog == 7


def test_queue_capacity() -> None:
    rows = [{"queue": "q", "task": "a", "runnable": 100, "startable": 3, "running": 2,
             "running_here": 2, "capacity": 5},
            {"queue": "q", "task": "b", "runnable": 10, "startable": 10, "running": 0,
             "running_here": 0, "capacity": 4}]
    q = limit_counts(rows)["q"]
    assert q == QueueLimits(runnable=110, waiting=97, running=2, capacity=9)
    # all runnable work limited; 1 unlimited job running keeps its slot
    assert q.capacity_for(runnable=110, in_flight=3) == 10
    # unlimited jobs wait too: no bound
    assert q.capacity_for(runnable=111, in_flight=3) is None
    # a per-key-only task has no task-wide bound
    rows.append({"queue": "q", "task": "c", "runnable": 1, "startable": 1, "running": 0,
                 "running_here": 0, "capacity": None})
    assert limit_counts(rows)["q"].capacity_for(runnable=111, in_flight=2) is None


def test_load_sums_capacity_over_busy_queues_only() -> None:
    load = load_of([_stats(queue="a", runnable=100, waiting_on_limit=95, limit_capacity=5),
                    _stats(queue="idle")])
    assert load == Load(backlog=5, in_flight=0, capacity=5, waiting_on_limit=95)
    unbounded = load_of([_stats(queue="a", runnable=100, waiting_on_limit=95,
                                limit_capacity=5), _stats(queue="b", runnable=1)])
    assert unbounded is not None and unbounded.capacity is None


def test_a_limited_queue_with_a_big_backlog_is_capped_and_says_so() -> None:
    # jobsPerReplica 1 would ask for 5 replicas; workers of concurrency 2 run the limit of 5
    # on 3 (the cap divides by what a replica runs, not by the target load)
    policy = Policy(max_replicas=50, jobs_per_replica=1, worker_concurrency=2)
    # 10,000 waiting under a limit of 5: backlog is what can start (5 - running)
    load = Load(backlog=3, in_flight=2, capacity=5, waiting_on_limit=9_995)
    d = decide(policy, load, 3, History.seeded(0, 3), now=1)
    assert d.desired == 3 == math.ceil(5 / 2)
    assert d.reason == "Limited"
    assert "waitingOnLimit=9995" in d.message and "limitCap=3" in d.message
    # without the limit the same 10,000 would ask for maxReplicas
    up = decide(policy, Load(backlog=10_000, in_flight=0), 3, History.seeded(0, 3), now=1)
    assert up.reason == "ScaledUp"


policies = st.builds(
    Policy, min_replicas=st.integers(0, 3), max_replicas=st.integers(3, 40),
    jobs_per_replica=st.integers(1, 20), worker_concurrency=st.integers(1, 50),
    scale_up_pods=st.integers(1, 10),
    scale_up_percent=st.integers(0, 300), scale_down_window=st.floats(0, 600))
loads = st.builds(Load, backlog=st.integers(0, 100_000), in_flight=st.integers(0, 1000),
                  capacity=st.one_of(st.none(), st.integers(1, 500)),
                  waiting_on_limit=st.integers(0, 100_000))


@settings(max_examples=50, deadline=None)
@given(policy=policies, load=loads, current=st.integers(0, 40),
       steps=st.lists(st.floats(0.1, 120), min_size=1, max_size=6))
def test_the_cap_is_never_exceeded(policy: Policy, load: Load, current: int,
                                   steps: list[float]) -> None:
    cap = limit_cap(policy, load)
    history, now = History.seeded(0, current), 0.0
    for dt_ in steps:
        now += dt_
        d = decide(policy, load, current, history, now)
        if cap is not None:
            # never scaled up past the cap; a scale-down to it may wait out the window
            assert d.desired <= max(cap, current)
            if d.desired > current:
                assert d.desired <= cap
        current, history = d.desired, d.history


@settings(max_examples=50, deadline=None)
@given(policy=policies, backlog=st.integers(0, 100_000), in_flight=st.integers(0, 1000),
       current=st.integers(0, 40), now=st.floats(1, 1000))
def test_no_limit_is_todays_decision(policy: Policy, backlog: int, in_flight: int,
                                     current: int, now: float) -> None:
    history = History.seeded(0, current)
    with_fields = decide(policy, Load(backlog, in_flight, capacity=None, waiting_on_limit=0,
                                      next_fire_in=None), current, history, now)
    plain = decide(policy, Load(backlog, in_flight), current, history, now)
    assert with_fields == plain
    assert "limitCap" not in plain.message


@settings(max_examples=50, deadline=None)
@given(lead=st.floats(0, 600), next_in=st.floats(-600, 1200), policy=policies)
def test_scale_from_zero_ahead_of_a_schedule(lead: float, next_in: float,
                                             policy: Policy) -> None:
    p = Policy(**{**policy.__dict__, "schedule_lead_seconds": lead})
    d = decide(p, Load(0, 0, next_fire_in=next_in), 0, History.seeded(0, 0), now=1)
    if next_in <= lead:
        assert d.desired >= 1
        if p.min_replicas == 0:  # else a replica runs anyway
            assert "scheduleDueIn" in d.message
    else:
        assert d.desired == p.min_replicas
    assert decide(p, Load(0, 0), 0, History.seeded(0, 0), now=1).desired == p.min_replicas


@pytest.mark.parametrize("value", ["a\x00b", "lone \ud800 surrogate", "\udfff"])
def test_a_key_postgres_cannot_store_is_refused_at_enqueue(value: str) -> None:
    with pytest.raises(KeyProblem, match="NUL character or a lone surrogate"):
        key_for("t", {"key": "arg:tenant"}, {"tenant": value})
