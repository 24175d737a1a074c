"""The dashboard's backlog charts plot at most so many points: runs of neighbouring samples,
the largest value of each, the newest sample on its own."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.api.history import QueueSeries, Sample, queue_series, sample_groups
from skiplock.inspection import QueueStats

T0 = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@given(st.integers(0, 2000), st.one_of(st.none(), st.integers(0, 400)))
def test_groups_cover_every_sample_once_in_order_and_keep_the_newest_alone(
        n: int, at_most: int | None) -> None:
    runs = sample_groups(n, at_most)
    assert all(len(r) >= 1 for r in runs)
    if at_most is not None:
        assert len(runs) == min(n, at_most)  # as many points as allowed, never fewer
    if at_most is not None and at_most < 2 <= n:  # none, or the newest alone
        assert runs == [range(n - 1, n)][:at_most]
        return
    assert [i for r in runs for i in r] == list(range(n))
    if n:
        assert runs[-1] == range(n - 1, n)
        older = {len(r) for r in runs[:-1]}
        assert not older or max(older) - min(older) <= 1


def test_every_sample_is_its_own_run_without_a_bound_or_below_it() -> None:
    assert sample_groups(5, None) == [range(i, i + 1) for i in range(5)]
    assert sample_groups(5, 5) == [range(i, i + 1) for i in range(5)]
    assert sample_groups(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert sample_groups(5, 1) == [range(4, 5)]
    assert sample_groups(5, 0) == []
    with pytest.raises(ValueError, match="at least 0"):
        sample_groups(5, -1)


def _stats(backlog: int, in_flight: int, stuck: int, dead: int) -> QueueStats:
    return QueueStats(queue="q", runnable=backlog, scheduled=0, in_flight=in_flight, stuck=stuck,
                      dead=dead, dead_last_hour=0, high_retry=0, oldest_runnable_age=None)


counts = st.tuples(*[st.integers(0, 10**6)] * 4)


def _points(h: QueueSeries) -> list[tuple[dt.datetime, int, int, int, int]]:
    return list(zip(h.at, h.backlog, h.in_flight, h.stuck, h.dead, strict=True))


@given(st.lists(st.one_of(st.none(), counts), max_size=400),
       st.one_of(st.none(), st.integers(2, 150)))
def test_thinning_keeps_every_spike_and_the_latest_value(
        rows: list[tuple[int, int, int, int] | None], at_most: int | None) -> None:
    # a None row is a sample taken while the queue had no jobs: the queue is not in it
    samples = [Sample(T0 + dt.timedelta(seconds=10 * i), {} if r is None else {"q": _stats(*r)})
               for i, r in enumerate(rows)]
    present = [(s.at, s.stats["q"]) for s in samples if "q" in s.stats]
    every = [(at, q.backlog, q.in_flight, q.stuck, q.dead) for at, q in present]
    points = _points(queue_series(samples, "q", at_most))
    if at_most is None or len(present) <= at_most:
        assert points == every
        return
    assert len(points) == at_most
    assert [p[0] for p in points] == sorted({p[0] for p in points})
    for field in range(1, 5):
        assert max(p[field] for p in points) == max(e[field] for e in every), field
    assert points[-1] == every[-1]  # the newest sample is its own point


def test_another_queues_samples_are_not_counted() -> None:
    samples = [Sample(T0, {"q": _stats(1, 0, 0, 0), "other": _stats(99, 99, 99, 99)}),
               Sample(T0 + dt.timedelta(seconds=10), {"other": _stats(5, 5, 5, 5)}),
               Sample(T0 + dt.timedelta(seconds=20), {"q": _stats(2, 0, 7, 0)}),
               Sample(T0 + dt.timedelta(seconds=30), {"q": _stats(3, 0, 0, 0)})]
    assert _points(queue_series(samples, "q", 2)) == [
        (T0 + dt.timedelta(seconds=20), 9, 0, 7, 0), (T0 + dt.timedelta(seconds=30), 3, 0, 0, 0)]
    assert _points(queue_series(samples, "absent", 2)) == []
