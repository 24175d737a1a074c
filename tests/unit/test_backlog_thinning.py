"""The dashboard's backlog charts plot at most so many points: runs of neighbouring samples,
the largest value of each, the newest sample on its own."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.api.history import Sample, sample_groups
from skiplock.api.service import _backlog_points
from skiplock.inspection import QueueStats

T0 = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


@given(st.integers(0, 2000), st.one_of(st.none(), st.integers(2, 400)))
def test_groups_cover_every_sample_once_in_order_and_keep_the_newest_alone(
        n: int, at_most: int | None) -> None:
    runs = sample_groups(n, at_most)
    assert [i for r in runs for i in r] == list(range(n))
    assert all(len(r) >= 1 for r in runs)
    if at_most is not None:
        assert len(runs) <= at_most
        if n >= at_most:
            assert len(runs) == at_most  # as many points as allowed, never fewer
    if n:
        assert runs[-1] == range(n - 1, n)
        older = {len(r) for r in runs[:-1]}
        assert not older or max(older) - min(older) <= 1


def test_every_sample_is_its_own_run_without_a_bound_or_below_it() -> None:
    assert sample_groups(5, None) == [range(i, i + 1) for i in range(5)]
    assert sample_groups(5, 5) == [range(i, i + 1) for i in range(5)]
    assert sample_groups(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    with pytest.raises(ValueError, match="at least 2"):
        sample_groups(5, 1)


def _stats(backlog: int, in_flight: int, stuck: int, dead: int) -> QueueStats:
    return QueueStats(queue="q", runnable=backlog, scheduled=0, in_flight=in_flight, stuck=stuck,
                      dead=dead, dead_last_hour=0, high_retry=0, oldest_runnable_age=None)


counts = st.tuples(*[st.integers(0, 10**6)] * 4)


@given(st.lists(st.one_of(st.none(), counts), max_size=400),
       st.one_of(st.none(), st.integers(2, 150)))
def test_thinning_keeps_every_spike_and_the_latest_value(
        rows: list[tuple[int, int, int, int] | None], at_most: int | None) -> None:
    # a None row is a sample taken while the queue had no jobs: the queue is not in it
    samples = [Sample(T0 + dt.timedelta(seconds=10 * i),
                      {} if r is None else {"q": _stats(*r)})
               for i, r in enumerate(rows)]
    present = [(s.at, s.stats["q"]) for s in samples if "q" in s.stats]
    points = _backlog_points(samples, sample_groups(len(samples), at_most), "q")
    if at_most is not None:
        assert len(points) <= at_most
    else:
        assert [(p.at, p.backlog, p.in_flight, p.stuck, p.dead) for p in points] == [
            (at, q.backlog, q.in_flight, q.stuck, q.dead) for at, q in present]
    assert [p.at for p in points] == sorted({p.at for p in points})
    if not present:
        assert points == []
        return
    for field in ("backlog", "in_flight", "stuck", "dead"):
        assert max(getattr(p, field) for p in points) == max(getattr(q, field)
                                                             for _, q in present), field
    if "q" in samples[-1].stats:
        last = samples[-1].stats["q"]
        assert (points[-1].at, points[-1].backlog, points[-1].stuck) == (
            samples[-1].at, last.backlog, last.stuck)


def test_another_queues_samples_are_not_counted() -> None:
    samples = [Sample(T0, {"q": _stats(1, 0, 0, 0), "other": _stats(99, 99, 99, 99)}),
               Sample(T0 + dt.timedelta(seconds=10), {"other": _stats(5, 5, 5, 5)}),
               Sample(T0 + dt.timedelta(seconds=20), {"q": _stats(2, 0, 0, 0)})]
    points = _backlog_points(samples, sample_groups(3, 2), "q")
    assert [(p.at, p.backlog) for p in points] == [(T0 + dt.timedelta(seconds=10), 1),
                                                   (T0 + dt.timedelta(seconds=20), 2)]
