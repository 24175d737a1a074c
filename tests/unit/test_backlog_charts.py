"""BacklogCharts keeps a queue's chart until the next sample: whatever order views with
which snapshots come in, each gets what its own samples draw."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup

from skiplock.api.backlog_charts import BacklogCharts
from skiplock.api.history import Sample


def _samples(taken: int) -> list[Sample]:
    """A stand-in ring: snapshot ``taken`` is told apart by its length."""
    return [Sample(at=None, stats={}) for _ in range(taken)]  # type: ignore[arg-type]


def _draw(samples: Sequence[Sample], queue: str) -> Markup:
    return Markup(f"{len(samples)}:{queue}")


views = st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["a", "b", "<c>", "d" * 128])),
                 max_size=60)


@given(views, st.integers(1, 3))
def test_every_view_gets_its_own_samples_chart_and_a_repeat_draws_nothing(
        calls: list[tuple[int, str]], keep: int) -> None:
    charts = BacklogCharts(_draw, keep=keep)
    newest = -1
    kept: list[str] = []  # the model: queues kept for the newest snapshot, oldest first
    for taken, queue in calls:
        before = charts.drawn
        assert charts.chart(taken, _samples(taken), queue) == _draw(_samples(taken), queue)
        if taken > newest:
            newest, kept = taken, []
        hit = taken == newest and queue in kept
        assert charts.drawn == before + (0 if hit else 1)
        if taken == newest:
            kept = [*(q for q in kept if q != queue), queue][-keep:]


def test_views_at_once_each_get_their_chart() -> None:
    charts = BacklogCharts(_draw)
    start = threading.Barrier(8)
    wrong: list[str] = []

    def view(i: int) -> None:
        start.wait()
        for n in range(200):
            taken, queue = (i + n) % 3, f"q{n % 7}"
            if charts.chart(taken, _samples(taken), queue) != f"{taken}:{queue}":
                wrong.append(f"{taken}:{queue}")

    threads = [threading.Thread(target=view, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
