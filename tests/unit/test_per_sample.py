"""PerSample keeps a value until the next sample: whatever order views with which snapshots
come in, each gets what its own snapshot makes, and a repeat makes nothing."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.api.history import BacklogHistory, Sample
from skiplock.api.per_sample import PerSample
from skiplock.inspection import QueueStats

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _samples(taken: int) -> list[Sample]:
    """The samples of snapshot ``taken`` (one, told apart by its time)."""
    return [Sample(EPOCH + dt.timedelta(seconds=taken), {})]


def _made(taken: int, key: str) -> str:
    """What ``_make`` makes from snapshot ``taken``'s samples."""
    return f"{taken}:{key}"


def _make(samples: Sequence[Sample], key: str) -> str:
    return _made(int((samples[-1].at - EPOCH).total_seconds()), key)


KEYS = st.sampled_from(["a", "b", "<c>", "d" * 128])
# a view of (snapshot, key), or the sampler renewing ahead of a snapshot (key None)
calls = st.lists(st.tuples(st.integers(0, 4), st.none() | KEYS), max_size=60)


@given(calls, st.integers(1, 3))
def test_every_view_gets_its_own_snapshots_value_and_a_repeat_makes_nothing(
        steps: list[tuple[int, str | None]], keep: int) -> None:
    kept_values: PerSample[str, str] = PerSample(_make, keep=keep)
    newest = -1
    kept: list[str] = []  # the model: keys kept for the newest snapshot, least recent first
    asked: list[str] = []  # keys views asked for at the newest snapshot, least recent first
    for taken, key in steps:
        made, renewed = kept_values.made, kept_values.renewed
        if key is None:
            kept_values.renew(taken, _samples(taken))
            if taken > newest:  # what was asked is made again for the new snapshot
                assert kept_values.renewed == renewed + len(asked)
                newest, kept, asked = taken, asked, []
            else:  # a snapshot views already have: nothing to make ahead
                assert kept_values.renewed == renewed
            assert kept_values.made == made
            continue
        assert kept_values.get(taken, _samples(taken), key) == _made(taken, key)
        if taken > newest:
            newest, kept, asked = taken, [], []
        hit = taken == newest and key in kept
        assert kept_values.made == made + (0 if hit else 1)
        assert kept_values.renewed == renewed
        if taken == newest:
            kept = [*(k for k in kept if k != key), key][-keep:]
            asked = [*(k for k in asked if k != key), key][-keep:]


def test_views_at_once_each_get_their_value() -> None:
    kept_values: PerSample[str, str] = PerSample(_make)
    start = threading.Barrier(8)
    wrong: list[str] = []

    def view(i: int) -> None:
        start.wait()
        for n in range(200):
            taken, key = (i + n) % 3, f"q{n % 7}"
            if i == 0 and n % 10 == 0:  # the sampler, renewing among the views
                kept_values.renew(taken + 1, _samples(taken + 1))
            if kept_values.get(taken, _samples(taken), key) != _made(taken, key):
                wrong.append(_made(taken, key))

    threads = [threading.Thread(target=view, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_sample_is_made_ahead_before_it_is_published_and_a_failure_only_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    """What renew makes, it makes from the samples snapshot() gives once it is published,
    before any view can see them; one that raises is logged and the sample is still taken."""
    history = BacklogHistory(lambda: [], interval=3600, size=3)
    seen: list[tuple[int, list[Sample], tuple[int, list[Sample]]]] = []
    history.before_publish(lambda taken, samples: seen.append(
        (taken, samples, history.snapshot())))

    def broken(taken: int, samples: list[Sample]) -> None:
        raise RuntimeError("a bug in a chart")

    history.before_publish(broken)
    with caplog.at_level(logging.ERROR, logger="skiplock.api.history"):
        for _ in range(5):
            history.sample_once()
    assert [taken for taken, _, _ in seen] == [1, 2, 3, 4, 5]
    for taken, samples, published in seen:
        assert published[0] == taken - 1  # not yet published while it was made
        assert len(samples) == min(taken, 3)
    assert history.snapshot() == (5, seen[-1][1])  # what was made ahead is what is published
    failed = [r for r in caplog.records if "ahead of views failed" in r.getMessage()]
    assert len(failed) == 5 and "a bug in a chart" in caplog.text


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
