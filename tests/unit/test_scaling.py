"""The replica decision: table-driven cases and properties (pure logic, no I/O)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock_operator.scaling import History, Load, Policy, decide, recommend

P = Policy(min_replicas=0, max_replicas=10, jobs_per_replica=10, activation_threshold=0,
           scale_up_pods=4, scale_up_percent=100, scale_up_period=15, scale_down_window=300)


@pytest.mark.parametrize(
    ("policy", "backlog", "in_flight", "current", "expected", "reason"),
    [
        # the formula: ceil((backlog + in_flight) / jobsPerReplica)
        (P, 30, 0, 3, 3, "Steady"),
        (P, 31, 0, 3, 4, "ScaledUp"),
        # in-flight jobs count: busy workers are not scaled away
        (P, 0, 30, 3, 3, "Steady"),
        (P, 10, 20, 3, 3, "Steady"),
        # clamped to max
        (P, 10_000, 0, 10, 10, "Steady"),
        # clamped to min
        (Policy(min_replicas=2, max_replicas=5), 0, 0, 2, 2, "Steady"),
        # a spec whose min rose above current: brought up at once
        (Policy(min_replicas=3, max_replicas=5), 0, 0, 0, 3, "ScaledUp"),
        # a spec whose max fell below current: brought down at once (no window)
        (Policy(min_replicas=0, max_replicas=2), 100, 0, 6, 2, "ScaledDown"),
        # activation: 0 -> 1 only above the threshold
        (Policy(activation_threshold=5), 5, 0, 0, 0, "Steady"),
        (Policy(activation_threshold=5), 6, 0, 0, 1, "ScaledUp"),
        # scale from zero on a single job
        (P, 1, 0, 0, 1, "ScaledUp"),
        # rate limit: from 0, +4 pods (percent of 0 is 0)
        (P, 1000, 0, 0, 4, "ScaledUp"),
        # rate limit: from 6, +100 % = +6
        (Policy(max_replicas=50), 1000, 0, 6, 12, "ScaledUp"),
        # scale down blocked by the seeded history (the window has not passed)
        (P, 0, 0, 5, 5, "Stabilizing"),
    ],
)
def test_table(policy: Policy, backlog: int, in_flight: int, current: int, expected: int,
               reason: str) -> None:
    d = decide(policy, Load(backlog, in_flight), current, History.seeded(0.0, current), now=1.0)
    assert (d.desired, d.reason) == (expected, reason), d.message


def test_paused_holds_even_outside_bounds() -> None:
    d = decide(Policy(max_replicas=3, paused=True), Load(1000, 0), 7, History(), now=0)
    assert (d.desired, d.reason) == (7, "Paused")


def test_database_error_holds_and_never_drops_to_zero() -> None:
    d = decide(P, None, 4, History.seeded(0, 4), now=10_000)
    assert (d.desired, d.reason) == (4, "DatabaseUnavailable")


def test_stabilization_window_then_scale_down() -> None:
    policy = Policy(scale_down_window=60, jobs_per_replica=10)
    h = History.seeded(0, 5)
    seen = []
    for t in range(0, 121, 10):
        d = decide(policy, Load(0, 0), 5 if not seen else seen[-1], h, now=float(t))
        h = d.history
        seen.append(d.desired)
    # held at 5 while a recommendation of 5 lies within the last 60 s, then straight to 0
    assert seen[:6] == [5] * 6
    assert seen[-1] == 0
    first_zero = seen.index(0)
    assert first_zero * 10 >= 60


def test_short_dip_does_not_flap() -> None:
    policy = Policy(scale_down_window=60)
    h = History.seeded(0, 5)
    loads = [50, 50, 0, 0, 50, 50, 0, 50]
    current = 5
    for i, backlog in enumerate(loads):
        d = decide(policy, Load(backlog, 0), current, h, now=float(i * 5))
        h, current = d.history, d.desired
        assert current == 5, (i, d.message)


def test_rate_limit_counts_recent_scale_ups() -> None:
    policy = Policy(max_replicas=100, scale_up_pods=2, scale_up_percent=0, scale_up_period=30)
    h, current = History(), 0
    steps = []
    for t in (0, 5, 10, 31, 36):
        d = decide(policy, Load(10_000, 0), current, h, now=float(t))
        h, current = d.history, d.desired
        steps.append(current)
    # +2 per 30 s period: the second and third polls in the first period add nothing
    assert steps == [2, 2, 2, 4, 4]


def test_never_to_zero_with_jobs_in_flight() -> None:
    policy = Policy(activation_threshold=100, scale_down_window=0)
    d = decide(policy, Load(0, 3), 2, History(), now=0)
    assert d.desired == 1


def test_messages_carry_the_numbers() -> None:
    d = decide(P, Load(45, 5), 1, History(), now=0)
    assert "backlog=45" in d.message and "inFlight=5" in d.message and "1 -> 5" in d.message


policies = st.builds(
    lambda lo, span, jpr, act, pods, pct, period, window: Policy(
        min_replicas=lo, max_replicas=lo + span, jobs_per_replica=jpr, activation_threshold=act,
        scale_up_pods=pods, scale_up_percent=pct, scale_up_period=period,
        scale_down_window=window),
    st.integers(0, 5), st.integers(0, 20), st.integers(1, 50), st.integers(0, 20),
    st.integers(1, 10), st.integers(0, 300), st.floats(1, 120), st.floats(0, 600),
)
loads = st.builds(Load, st.integers(0, 5000), st.integers(0, 500))
histories = st.builds(
    History,
    st.lists(st.tuples(st.floats(-1000, 0), st.integers(0, 30)), max_size=6).map(tuple),
    st.lists(st.tuples(st.floats(-1000, 0), st.integers(1, 10)), max_size=4).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(policies, st.one_of(st.none(), loads), st.integers(0, 40), histories)
def test_never_outside_bounds(policy: Policy, load: Load | None, current: int,
                              history: History) -> None:
    d = decide(policy, load, current, history, now=0.0)
    assert policy.min_replicas <= d.desired <= policy.max_replicas


@settings(max_examples=300, deadline=None)
@given(policies, loads, st.integers(0, 5000), st.integers(0, 40), histories)
def test_monotone_in_backlog(policy: Policy, load: Load, more: int, current: int,
                             history: History) -> None:
    a = decide(policy, load, current, history, now=0.0)
    b = decide(policy, Load(load.backlog + more, load.in_flight), current, history, now=0.0)
    assert a.desired <= b.desired
    assert recommend(policy, load, current) <= recommend(
        policy, Load(load.backlog + more, load.in_flight), current)


@settings(max_examples=300, deadline=None)
@given(policies, loads, st.integers(0, 40), st.floats(0, 600))
def test_no_scale_down_within_window(policy: Policy, load: Load, current: int,
                                     elapsed: float) -> None:
    """A replica count seen `elapsed` seconds ago blocks any scale-down below it until the
    window has passed (bounds aside)."""
    history = History.seeded(0.0, current)
    d = decide(policy, load, current, history, now=elapsed)
    floor = min(current, policy.max_replicas)
    if elapsed < policy.scale_down_window:
        assert d.desired >= floor
    else:
        assert d.desired >= min(recommend(policy, load, current), floor)


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 40), histories, st.floats(0, 10_000))
def test_holds_on_error(policy: Policy, current: int, history: History, now: float) -> None:
    d = decide(policy, None, current, history, now=now)
    assert d.desired == max(policy.min_replicas, min(policy.max_replicas, current))
    assert d.history == history  # a failed read teaches the history nothing


@settings(max_examples=200, deadline=None)
@given(policies, loads, st.integers(0, 40), histories)
def test_scale_up_rate_limited(policy: Policy, load: Load, current: int,
                               history: History) -> None:
    d = decide(policy, load, current, history, now=0.0)
    if d.desired > max(current, policy.min_replicas):
        recent = sum(n for t, n in history.scale_ups if t > -policy.scale_up_period)
        base = max(0, current - recent)
        assert d.desired <= base + max(policy.scale_up_pods,
                                       -(-base * policy.scale_up_percent // 100))


def test_fallback_raises_after_threshold_and_never_lowers() -> None:
    policy = Policy(max_replicas=10, fallback_failures=3, fallback_replicas=4)
    h = History.seeded(0, 1)
    assert decide(policy, None, 1, h, now=1, failures=2).desired == 1
    d = decide(policy, None, 1, h, now=1, failures=3)
    assert (d.desired, d.reason) == (4, "ScaledUp") and "fallback" in d.message
    assert decide(policy, None, 7, h, now=1, failures=9).desired == 7


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 40), st.integers(0, 20), st.integers(0, 20), st.integers(1, 5))
def test_error_never_lowers_replicas_below_held(policy: Policy, current: int, fb: int,
                                                failures: int, threshold: int) -> None:
    p = Policy(**{**policy.__dict__, "fallback_failures": threshold, "fallback_replicas": fb})
    d = decide(p, None, current, History(), now=0, failures=failures)
    held = max(p.min_replicas, min(p.max_replicas, current))
    assert p.min_replicas <= d.desired <= p.max_replicas
    assert d.desired >= held


# -- every queue paused (skiplock queue pause) ----------------------------------------------


def test_queues_paused_never_scales_up_for_the_backlog() -> None:
    d = decide(P, Load(10_000, 0), 2, History.seeded(0, 2), now=1, queues_paused=True)
    assert (d.desired, d.reason) == (2, "QueuesPaused"), d.message
    assert d.message.startswith("every queue is paused: waiting jobs not counted")
    # from zero it stays at zero: nobody could claim the jobs a new pod would be started for
    d = decide(P, Load(500, 0), 0, History(), now=1, queues_paused=True)
    assert (d.desired, d.reason) == (0, "QueuesPaused"), d.message


def test_queues_paused_keeps_pods_of_running_jobs_then_goes_down_after_the_window() -> None:
    policy = Policy(scale_down_window=60, jobs_per_replica=10)
    h, current, seen = History.seeded(0, 5), 5, []
    for t in range(0, 121, 10):
        d = decide(policy, Load(900, 12), current, h, now=float(t), queues_paused=True)
        h, current = d.history, d.desired
        seen.append((d.desired, d.reason))
    # a pause shorter than the window changes nothing; then down to what the running jobs
    # need (ceil(12 / 10) = 2), never below it while they run
    assert seen[:6] == [(5, "QueuesPaused")] * 6
    assert (2, "ScaledDown") in seen
    assert seen[-1] == (2, "QueuesPaused")


def test_queues_paused_in_flight_never_asks_for_more_than_runs_now() -> None:
    # 40 running jobs on 2 pods (concurrency above jobsPerReplica): the formula would ask
    # for 4, but paused pods cannot gain jobs
    d = decide(P, Load(0, 40), 2, History.seeded(0, 2), now=1, queues_paused=True)
    assert d.desired == 2


def test_queues_paused_still_honours_the_spec_bounds() -> None:
    up = decide(Policy(min_replicas=3, max_replicas=5), Load(100, 0), 1, History(), now=0,
                queues_paused=True)
    assert (up.desired, up.reason) == (3, "ScaledUp") and "every queue is paused" in up.message
    # a max lowered below current applies at once (the window holds only within the bounds)
    down = decide(Policy(max_replicas=2), Load(100, 0), 6, History.seeded(0, 6), now=1,
                  queues_paused=True)
    assert (down.desired, down.reason) == (2, "ScaledDown")


def test_spec_pause_and_unreadable_stats_come_first() -> None:
    d = decide(Policy(paused=True), Load(0, 0), 4, History(), now=0, queues_paused=True)
    assert (d.desired, d.reason) == (4, "Paused")
    d = decide(P, None, 4, History(), now=0, queues_paused=True)
    assert (d.desired, d.reason) == (4, "DatabaseUnavailable")


@settings(max_examples=300, deadline=None)
@given(policies, loads, st.integers(0, 40), histories)
def test_queues_paused_never_above_current_or_the_floor(policy: Policy, load: Load,
                                                        current: int, history: History) -> None:
    d = decide(policy, load, current, history, now=0.0, queues_paused=True)
    assert policy.min_replicas <= d.desired <= policy.max_replicas
    assert d.desired <= max(current, policy.min_replicas)
    # and never above what the same jobs would get with the queues open
    assert d.desired <= max(decide(policy, load, current, history, now=0.0).desired,
                            policy.min_replicas)
