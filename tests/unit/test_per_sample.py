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


def test_views_at_once_with_the_sampler_renewing_each_get_their_snapshots_value() -> None:
    """Views read the newest published snapshot, as the pages do, while the sampler renews
    the next one and then publishes it; makes are slow enough that views and renews overlap
    inside them. Every view gets what its own snapshot makes."""
    kept_values: PerSample[str, str] = PerSample(
        lambda samples, key: (time.sleep(0.0005), _make(samples, key))[1])
    published = [0]
    done = threading.Event()
    wrong: list[str] = []

    def sampler() -> None:
        for taken in range(1, 40):
            kept_values.renew(taken, _samples(taken))
            published[0] = taken
            time.sleep(0.005)
        done.set()

    def view(i: int) -> None:
        n = 0
        while not done.is_set() and n < 20_000:  # bounded in count as well as in time
            taken, key = published[0], f"q{(i + n) % 5}"
            if (got := kept_values.get(taken, _samples(taken), key)) != _made(taken, key):
                wrong.append(f"{got} for {_made(taken, key)}")
            n += 1

    threads = [threading.Thread(target=view, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert wrong == []
    assert kept_values.renewed > 0  # views asked, and the sampler made ahead for them


def test_one_key_that_fails_to_make_does_not_stop_the_others_being_made_ahead() -> None:
    def make(samples: Sequence[Sample], key: str) -> str:
        if key == "broken":
            raise ValueError("cannot draw this one")
        return _make(samples, key)

    kept_values: PerSample[str, str] = PerSample(make)
    kept_values.get(0, _samples(0), "a")
    with pytest.raises(ValueError, match="cannot draw"):
        kept_values.get(0, _samples(0), "broken")
    kept_values.get(0, _samples(0), "b")
    with pytest.raises(ValueError, match="cannot draw"):
        kept_values.renew(1, _samples(1))
    made = kept_values.made
    assert [kept_values.get(1, _samples(1), k) for k in "ab"] == [_made(1, k) for k in "ab"]
    assert kept_values.made == made and kept_values.renewed == 2


def test_samples_are_taken_one_at_a_time_so_a_count_names_one_list() -> None:
    """A test or benchmark may sample beside the sampler's thread: the second sample waits
    for the first to be published, so no two snapshots share a count."""
    history = BacklogHistory(lambda: [], interval=3600, size=5)
    held, entered = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def renew(taken: int, samples: list[Sample]) -> None:
        seen.append((taken, len(samples)))
        if taken == 1:
            entered.set()
            held.wait(10)

    history.before_publish("a hook", renew)
    first = threading.Thread(target=history.sample_once)
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=history.sample_once)
    second.start()
    second.join(0.3)
    assert seen == [(1, 1)], "a second sample went ahead while the first was not published"
    held.set()
    first.join(10)
    second.join(10)
    assert seen == [(1, 1), (2, 2)] and history.snapshot()[0] == 2


def test_a_sample_is_made_ahead_before_it_is_published_and_a_failure_only_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    """What renew makes, it makes from the samples snapshot() gives once it is published,
    before any view can see them; one that raises is logged, the hooks after it still run and
    the sample is still taken."""
    history = BacklogHistory(lambda: [], interval=3600, size=3)
    seen: list[tuple[int, list[Sample], tuple[int, list[Sample]]]] = []

    def broken(taken: int, samples: list[Sample]) -> None:
        raise RuntimeError("a bug in a chart")

    history.before_publish("the broken charts", broken)
    history.before_publish("the seen samples", lambda taken, samples: seen.append(
        (taken, samples, history.snapshot())))
    with caplog.at_level(logging.ERROR, logger="skiplock.api.history"):
        for _ in range(5):
            history.sample_once()
    assert [taken for taken, _, _ in seen] == [1, 2, 3, 4, 5]
    for taken, samples, published in seen:
        assert published[0] == taken - 1  # not yet published while it was made
        assert len(samples) == min(taken, 3)
    assert history.snapshot() == (5, seen[-1][1])  # what was made ahead is what is published
    failed = [r for r in caplog.records
              if "making the broken charts ahead of views failed" in r.getMessage()]
    assert len(failed) == 5 and "a bug in a chart" in caplog.text


def test_a_hook_that_escapes_still_leaves_the_sample_published() -> None:
    """A hook may already keep values for the new count when something it calls raises past
    the sampler's catch (a KeyboardInterrupt in a benchmark's own sample_once): the sample
    is published all the same, so the count never names another list of samples."""
    history = BacklogHistory(lambda: [], interval=3600, size=3)

    def interrupted(taken: int, samples: list[Sample]) -> None:
        raise KeyboardInterrupt

    history.before_publish("an interrupted hook", interrupted)
    with pytest.raises(KeyboardInterrupt):
        history.sample_once()
    taken, samples = history.snapshot()
    assert taken == 1 and len(samples) == 1


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
