import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.retry import Backoff, backoff_delay, reconnect_delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (10, 512.0), (13, 3600.0), (500, 3600.0)],
)
def test_exponential_without_jitter(attempt: int, expected: float) -> None:
    assert backoff_delay(Backoff(jitter=0), attempt) == expected


@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=2**32))
def test_jitter_stays_within_bounds_and_cap(attempt: int, seed: int) -> None:
    policy = Backoff(base=0.5, factor=3, cap=120, jitter=0.25)
    raw = min(policy.cap, policy.base * policy.factor ** min(attempt - 1, 64))
    delay = backoff_delay(policy, attempt, random.Random(seed))
    assert 0 <= delay <= policy.cap
    assert raw * 0.75 - 1e-9 <= delay <= raw * 1.25 + 1e-9


@given(st.integers(min_value=1, max_value=200))
def test_never_shrinks_without_jitter(attempt: int) -> None:
    p = Backoff(base=0.1, factor=2, cap=1000, jitter=0)
    assert backoff_delay(p, attempt + 1) >= backoff_delay(p, attempt)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="attempt numbers start at 1"):
        backoff_delay(Backoff(), 0)
    with pytest.raises(ValueError, match="factor"):
        Backoff(factor=0.5)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)


def test_reconnect_delay_is_capped() -> None:
    assert reconnect_delay(0) == 0
    assert reconnect_delay(1) == pytest.approx(0.2)
    assert reconnect_delay(100) == 10.0
