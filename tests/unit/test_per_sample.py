"""PerSample keeps a value until the next sample: whatever order views with which snapshots
come in, each gets what its own snapshot makes, and a repeat makes nothing."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.api.history import BacklogHistory
from skiplock.api.per_sample import PerSample
from skiplock.inspection import QueueStats


def _make(taken: int, key: str) -> str:
    return f"{taken}:{key}"


views = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "<c>", "d" * 128])),
                 max_size=60)


@given(views, st.integers(1, 3))
def test_every_view_gets_its_own_snapshots_value_and_a_repeat_makes_nothing(
        calls: list[tuple[int, str]], keep: int) -> None:
    kept_values: PerSample[str, str] = PerSample(keep=keep)
    newest = -1
    kept: list[str] = []  # the model: keys kept for the newest snapshot, oldest first
    for taken, key in calls:
        before = kept_values.made
        assert kept_values.get(taken, key, lambda t=taken, k=key: _make(t, k)) == _make(taken, key)
        if taken > newest:
            newest, kept = taken, []
        hit = taken == newest and key in kept
        assert kept_values.made == before + (0 if hit else 1)
        if taken == newest:
            kept = [*(k for k in kept if k != key), key][-keep:]


def test_views_at_once_each_get_their_value() -> None:
    kept_values: PerSample[str, str] = PerSample()
    start = threading.Barrier(8)
    wrong: list[str] = []

    def view(i: int) -> None:
        start.wait()
        for n in range(200):
            taken, key = (i + n) % 3, f"q{n % 7}"
            if kept_values.get(taken, key, lambda t=taken, k=key: _make(t, k)) != _make(taken, key):
                wrong.append(_make(taken, key))

    threads = [threading.Thread(target=view, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_the_sampler_survives_an_unexpected_error_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one sample (not an outage: no SkiplockError) is logged and the next interval
    samples again; the thread does not die silently, freezing every chart."""
    calls: list[int] = []

    def sample() -> list[QueueStats]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return []

    history = BacklogHistory(sample, interval=0.01, size=5)
    with caplog.at_level(logging.ERROR, logger="skiplock.api.history"):
        history.start()
        try:
            deadline = time.monotonic() + 10
            while history.snapshot()[0] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            history.stop()
    assert history.snapshot()[0] >= 2, "the sampler stopped after the error"
    assert "unexpected error" in caplog.text and "a bug" in caplog.text
