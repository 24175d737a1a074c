"""Pure parts of job control: the stop signal a handler sees, deadline and snooze checks, and
the health rule for abandoned handlers."""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock import InvalidArguments, JobCancelled, JobContext, Snooze
from skiplock.app import StopSignal
from skiplock.preparation import MAX_TIMEOUT, check_timeout
from skiplock.worker.health import assess

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12))


@given(numbers)
def test_check_timeout_accepts_exactly_positive_finite_seconds_up_to_a_year(value: float) -> None:
    ok = math.isfinite(value) and 0 < value <= MAX_TIMEOUT
    if ok:
        assert check_timeout(value) == float(value)
    else:
        with pytest.raises(InvalidArguments, match="timeout must be"):
            check_timeout(value)


@given(numbers)
def test_snooze_accepts_exactly_zero_to_a_year(value: float) -> None:
    if math.isfinite(value) and 0 <= value <= Snooze.MAX_SECONDS:
        assert Snooze(value).seconds == float(value)
    else:
        with pytest.raises(ValueError, match="Snooze"):
            Snooze(value)


@pytest.mark.parametrize("bad", [True, "5", [1]])
def test_neither_takes_what_is_not_a_number(bad: object) -> None:
    with pytest.raises(InvalidArguments):
        check_timeout(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Snooze(bad)  # type: ignore[arg-type]


def test_no_timeout_means_none_but_snooze_needs_seconds() -> None:
    assert check_timeout(None) is None
    with pytest.raises(ValueError):
        Snooze(None)  # type: ignore[arg-type]


def _ctx() -> JobContext:
    return JobContext(1, 1, 3, "default", "t", "w")


def test_a_context_says_nothing_until_stopped_then_raises_with_the_reason() -> None:
    ctx = _ctx()
    assert not ctx.cancelled and ctx.stop_reason == ""
    ctx.raise_if_cancelled()  # no-op
    ctx.stop.set("cancelled by ops")
    assert ctx.cancelled and ctx.stop_reason == "cancelled by ops"
    with pytest.raises(JobCancelled, match="cancelled by ops"):
        ctx.raise_if_cancelled()
    started = time.monotonic()
    assert ctx.sleep(30) is True  # already stopped: returns at once
    assert time.monotonic() - started < 1


def test_sleep_wakes_when_the_stop_comes_from_another_thread() -> None:
    ctx = _ctx()
    threading.Timer(0.1, ctx.stop.set, args=("timed out after 1s",)).start()
    started = time.monotonic()
    assert ctx.sleep(30) is True
    assert time.monotonic() - started < 5
    assert ctx.sleep(0) is True


def test_sleep_without_a_stop_sleeps_and_says_so() -> None:
    assert _ctx().sleep(0.05) is False


def test_the_stop_is_never_lost_between_threads() -> None:
    """set() and the lazy creation of the event in wait() racing: every waiter wakes."""
    for _ in range(200):
        signal = StopSignal()
        woke: list[bool] = []
        waiters = [threading.Thread(target=lambda: woke.append(signal.wait(5)))
                   for _ in range(3)]
        for w in waiters:
            w.start()
        signal.set("go")
        for w in waiters:
            w.join(10)
        assert woke == [True, True, True]


def test_every_slot_abandoned_is_a_health_problem() -> None:
    assert assess([], 0, None, 30, 0.0, abandoned=3, concurrency=4).healthy
    h = assess([], 0, None, 30, 0.0, abandoned=4, concurrency=4)
    assert not h.healthy and "all 4 slots hold handlers that did not stop" in h.problems[0]
