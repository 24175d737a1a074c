"""The queues page draws a queue's backlog chart once per sample (api/backlog_charts.py): a
view before the next sample shows the chart the last one drew, a new sample redraws it, and
what is shown is always what a fresh drawing from the same samples gives (real Postgres, a
real server)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from skiplock.api import dashboard
from skiplock.api.config import ApiSettings
from skiplock.api.deps import ApiState
from tests.integration.api.conftest import READ, READ_TOKEN, settings
from tests.integration.api.server import client, serve_app
from tests.integration.api.test_api_queue_pages import only_queues

Sql = Callable[..., list[tuple[Any, ...]]]
HOSTILE = "<script>alert(1)</script>&\"'"
NAMES = ["busy", HOSTILE, "q" * 128]  # the longest name a queue may have
INTERVAL = 3600.0  # the sampler's first sample only: the test takes the others itself


def _backlog_figures(page: str) -> dict[str, str]:
    """Each queue's backlog chart (its figure's second svg)."""
    return {html.unescape(q): re.findall(r"<svg.*?</svg>", f, re.S)[1] for q, f in re.findall(
        r'<figure class="queue-charts" data-queue="([^"]*)">(.*?)</figure>', page, re.S)}


def test_a_backlog_chart_is_drawn_once_per_sample_and_is_what_the_samples_draw(
        database_url: str, sql: Sql) -> None:
    only_queues(sql, NAMES)
    with serve_app(settings(database_url), ApiSettings(read_token=SecretStr(READ_TOKEN),
                                                       sample_interval=INTERVAL)) as (url, app), \
            client(url) as c:
        c.headers.update(READ)
        st: ApiState = app.state.skiplock
        draw = dashboard.backlog_drawing(INTERVAL)

        def view() -> dict[str, str]:
            r = c.get("/ui/")
            assert r.status_code == 200, r.text
            assert HOSTILE not in r.text  # escaped in the chart's title as everywhere
            charts = _backlog_figures(r.text)
            samples = st.history.samples()
            # what this view's samples draw, never older
            assert charts == {q: str(draw(samples, q)) for q in NAMES}, r.text[:3000]
            return charts

        first = view()
        assert st.backlog_charts.drawn == len(NAMES)
        sql("INSERT INTO jobs (task, queue) SELECT 'task1', 'busy' FROM generate_series(1, 9)")
        again = c.get("/ui/").text
        # the counts are read live (9 queued), the chart waits for the next sample
        row = re.search(r'<tr data-queue="busy".*?data-col="backlog">9<', again, re.S)
        assert row, again[:3000]
        assert _backlog_figures(again) == first and st.backlog_charts.drawn == len(NAMES)
        st.history.sample_once()
        second = view()
        assert st.backlog_charts.drawn == 2 * len(NAMES)
        assert second["busy"] != first["busy"] and "latest 9" in second["busy"]
        assert view() == second and st.backlog_charts.drawn == 2 * len(NAMES)
