"""The queues page draws a queue's backlog chart once per sample, and GET /v1/queues thins its
backlog history once per sample (api/per_sample.py): a view before the next sample shows what
the last one made, a new sample makes it again, and what is shown is always what the same
samples make afresh (real Postgres, a real server)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from skiplock.api import dashboard, service
from skiplock.api.config import ApiSettings
from skiplock.api.deps import ApiState
from skiplock.api.history import queue_series
from tests.integration.api.conftest import READ, READ_TOKEN, settings
from tests.integration.api.server import client, serve_app
from tests.integration.api.test_api_queue_pages import only_queues
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]
HOSTILE = "<script>alert(1)</script>&\"'"
NAMES = ["busy", HOSTILE, "q" * 128]  # the longest name a queue may have
INTERVAL = 3600.0  # the sampler's first sample only: the test takes the others itself


def _backlog_figures(page: str) -> dict[str, str]:
    """Each queue's backlog chart (its figure's second svg)."""
    return {html.unescape(q): re.findall(r"<svg.*?</svg>", f, re.S)[1] for q, f in re.findall(
        r'<figure class="queue-charts" data-queue="([^"]*)">(.*?)</figure>', page, re.S)}


@pytest.fixture
def served(database_url: str, sql: Sql) -> Iterator[tuple[httpx.Client, ApiState]]:
    """A real server over the NAMES queues, with its state (the sampler's first sample)."""
    only_queues(sql, NAMES)
    with serve_app(settings(database_url), ApiSettings(read_token=SecretStr(READ_TOKEN),
                                                       sample_interval=INTERVAL)) as (url, app), \
            client(url) as c:
        c.headers.update(READ)
        st: ApiState = app.state.skiplock
        # the sampler takes its first sample in its own thread once the server is up
        wait_until(lambda: st.history.snapshot()[0] >= 1, message="the first sample")
        yield c, st


def test_a_backlog_chart_is_drawn_once_per_sample_and_is_what_the_samples_draw(
        served: tuple[httpx.Client, ApiState], sql: Sql) -> None:
    c, st = served

    def view() -> dict[str, str]:
        r = c.get("/ui/")
        assert r.status_code == 200, r.text
        assert HOSTILE not in r.text  # escaped in the chart's title as everywhere
        charts = _backlog_figures(r.text)
        samples = st.history.samples()
        # what this view's samples draw, never older
        assert charts == {q: str(dashboard.backlog_chart(samples, q, INTERVAL))
                          for q in NAMES}, r.text[:3000]
        return charts

    first = view()
    assert st.backlog_charts.made == len(NAMES)
    sql("INSERT INTO jobs (task, queue) SELECT 'task1', 'busy' FROM generate_series(1, 9)")
    again = c.get("/ui/").text
    # the counts are read live (9 queued), the chart waits for the next sample
    row = re.search(r'<tr data-queue="busy".*?data-col="backlog">9<', again, re.S)
    assert row, again[:3000]
    assert _backlog_figures(again) == first and st.backlog_charts.made == len(NAMES)
    # the sampler draws again, before it publishes a sample, the charts viewed since the
    # last one: the next view draws none
    st.history.sample_once()
    assert st.backlog_charts.renewed == len(NAMES)
    second = view()
    assert st.backlog_charts.made == len(NAMES)
    assert second["busy"] != first["busy"] and "latest 9" in second["busy"]
    assert view() == second and st.backlog_charts.made == len(NAMES)
    # a page nobody viewed in the last interval is not drawn ahead: its first view draws it
    sql("DELETE FROM jobs WHERE queue = 'busy'")
    st.history.sample_once()
    st.history.sample_once()
    assert st.backlog_charts.renewed == 2 * len(NAMES)
    third = view()
    assert st.backlog_charts.made == 2 * len(NAMES) and "latest 0" in third["busy"]


def test_the_apis_backlog_history_is_thinned_once_per_sample_and_is_what_the_samples_give(
        served: tuple[httpx.Client, ApiState], sql: Sql) -> None:
    c, st = served

    def history(points: int | None) -> dict[str, list[dict[str, Any]]]:
        params = {} if points is None else {"backlog_points": points}
        r = c.get("/v1/queues", params=params)
        assert r.status_code == 200, r.text
        got = {q["queue"]: q["backlog_history"] for q in r.json()["queues"]}
        samples = st.history.samples()
        fresh = {q: [p.model_dump(mode="json") for p in service.backlog_points_of(
            queue_series(samples, q, service.BACKLOG_POINTS if points is None else points))]
            for q in NAMES}
        assert got == fresh
        return got

    for _ in range(4):  # samples enough for 2 points to thin them
        st.history.sample_once()
    sql("INSERT INTO jobs (task, queue) SELECT 'task1', 'busy' FROM generate_series(1, 9)")
    made = st.backlog_series.made
    first = history(None)
    assert st.backlog_series.made == made + len(NAMES)
    assert history(None) == first and st.backlog_series.made == made + len(NAMES)
    assert [p["backlog"] for p in first["busy"]] == [0] * 5  # the jobs are not sampled yet
    two = history(2)  # another number of points is kept apart
    assert len(two["busy"]) == 2 and st.backlog_series.made == made + 2 * len(NAMES)
    assert history(0) == {q: [] for q in NAMES}  # none: nothing to make
    assert st.backlog_series.made == made + 2 * len(NAMES)
    # more points than the default are thinned on every call, never kept
    assert len(history(service.BACKLOG_POINTS + 1)["busy"]) == 5
    assert st.backlog_series.made == made + 2 * len(NAMES)
    renewed = st.backlog_series.renewed
    st.history.sample_once()
    # both kept numbers of points were asked for since the last sample: thinned ahead
    assert st.backlog_series.renewed == renewed + 2 * len(NAMES)
    after = history(None)
    assert [p["backlog"] for p in after["busy"]] == [0] * 5 + [9]
    assert len(history(2)["busy"]) == 2
    assert st.backlog_series.made == made + 2 * len(NAMES)
