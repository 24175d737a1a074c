"""The queues overview in pages (GET /v1/queues ?limit&after, the dashboard's /ui/?after):
every queue on exactly one page, in the database's order, whatever the names hold; each page
counts and charts only its own queues; bad cursors get a clear 422/400."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiplock.api import dashboard, service

Sql = Callable[..., list[tuple[object, ...]]]

# What a queue column can hold (a queue made by hand in SQL is listed too): any text without
# NUL or lone surrogates, 1..128 characters; the names producers may take are a subset.
QUEUE_TEXT = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                     min_size=1, max_size=128)
HOSTILE = ["a", "A", "b", "é", "ü-umlaut", "日本", "🙂", " leading space", "trailing ",
           "<script>alert(1)</script>", "quote'\"", "amp&next=1#frag", "per%20cent", "a?b=c",
           "x" * 128, "back\\slash", "tab\there", "new\nline", "-", "0"]


def only_queues(sql: Sql, names: list[str]) -> None:
    """Nothing but a task row per name: what the overview lists comes from these alone."""
    sql("DELETE FROM jobs")
    sql("DELETE FROM paused_queues")
    sql("DELETE FROM tasks")
    sql("INSERT INTO tasks (name, params, max_attempts, queue) "
        "SELECT 'task' || i, '{}', 3, q FROM unnest(%s::text[]) WITH ORDINALITY AS n(q, i)",
        names)


def db_order(sql: Sql, names: list[str]) -> list[str]:
    """The names sorted as the database sorts them (its collation, not Python's)."""
    return [str(r[0]) for r in sql("SELECT DISTINCT q FROM unnest(%s::text[]) AS q ORDER BY q",
                                   names)]


def walk_api(api: httpx.Client, limit: int, **params: object) -> tuple[list[list[str]], int]:
    pages: list[list[str]] = []
    after: str | None = None
    for _ in range(500):  # bounded: 128 names at limit 1 is 128 pages
        q = {**params, "limit": limit, **({"after": after} if after is not None else {})}
        r = api.get("/v1/queues", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([x["queue"] for x in body["queues"]])
        after = body["next_after"]
        if after is None:
            return pages, int(body["total_queues"])
        assert after == pages[-1][-1]
    raise AssertionError("the pages never ended")


def test_hostile_names_page_through_the_api_exactly_once(api: httpx.Client, sql: Sql) -> None:
    only_queues(sql, HOSTILE)
    want = db_order(sql, HOSTILE)
    for limit in (1, 3, 7, len(HOSTILE), 1000):
        pages, total = walk_api(api, limit)
        assert [q for p in pages for q in p] == want, limit
        assert total == len(want)
        assert all(len(p) == limit for p in pages[:-1]) and 1 <= len(pages[-1]) <= limit


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(QUEUE_TEXT, max_size=12), limit=st.integers(1, 5))
def test_any_names_any_page_size_partition_the_list(api: httpx.Client, sql: Sql,
                                                    names: list[str], limit: int) -> None:
    only_queues(sql, names)
    want = db_order(sql, names)
    pages, total = walk_api(api, limit)
    got = [q for p in pages for q in p]
    assert got == want and total == len(want)
    if not want:
        assert pages == [[]]


def test_a_page_counts_and_charts_only_its_own_queues(api: httpx.Client, sql: Sql) -> None:
    only_queues(sql, ["alpha", "beta"])
    # gamma: no task row, no live job, only jobs finished within the window: still listed
    sql("INSERT INTO jobs (queue, task, state, attempts, started_at, finished_at) "
        "SELECT q, 't', 'succeeded', 1, now(), now() - interval '1 minute' "
        "FROM unnest(ARRAY['alpha', 'gamma', 'gamma']) AS q")
    # delta: finished before the window and nothing else: not listed
    sql("INSERT INTO jobs (queue, task, state, attempts, started_at, finished_at) "
        "VALUES ('delta', 't', 'succeeded', 1, now(), now() - interval '2 hours')")
    sql("INSERT INTO jobs (queue, task) VALUES ('beta', 't'), ('beta', 't')")
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('epsilon', 'test')")
    pages, total = walk_api(api, 1, window_minutes=30)
    assert pages == [["alpha"], ["beta"], ["epsilon"], ["gamma"]] and total == 4
    by = {}
    for after in (None, "alpha", "beta", "epsilon"):
        body = api.get("/v1/queues", params={"limit": 1, **({"after": after} if after else {})}
                       ).json()
        (q,) = body["queues"]
        by[q["queue"]] = q
    assert by["alpha"]["succeeded_in_window"] == 1 and by["gamma"]["succeeded_in_window"] == 2
    assert by["beta"]["runnable"] == 2 and by["beta"]["succeeded_in_window"] == 0
    assert by["epsilon"]["paused"] is True and by["epsilon"]["backlog"] == 0
    # named queues page the same way, a name without jobs included
    pages, total = walk_api(api, 2, queue=["gamma", "zeta", "alpha", "gamma"])
    assert pages == [["alpha", "gamma"], ["zeta"]] and total == 3
    # a cursor past the end: an empty last page that still counts them all
    body = api.get("/v1/queues", params={"after": "zzz"}).json()
    assert (body["queues"], body["next_after"], body["total_queues"]) == ([], None, 4)
    # a cursor that names no queue (one deleted between two pages) goes on after it
    body = api.get("/v1/queues", params={"after": "b", "limit": 1}).json()
    assert [q["queue"] for q in body["queues"]] == ["beta"]


def finished(sql: Sql, queues: list[str], state: str, ago: str) -> None:
    sql("INSERT INTO jobs (queue, task, state, attempts, started_at, finished_at) "
        f"SELECT q, 't', '{state}', 1, now(), now() - interval '{ago}' "
        "FROM unnest(%s::text[]) AS q", queues)


def counted(api: httpx.Client) -> dict[str, tuple[int, int]]:
    body = api.get("/v1/queues", params={"limit": 1000}).json()
    for q in body["queues"]:  # the chart and the totals agree
        assert sum(p["succeeded"] for p in q["throughput"]) == q["succeeded_in_window"]
        assert sum(p["dead"] for p in q["throughput"]) == q["dead_in_window"]
    return {q["queue"]: (q["succeeded_in_window"], q["dead_in_window"]) for q in body["queues"]}


def test_jobs_finished_between_views_are_counted_exactly_once(api: httpx.Client,
                                                              sql: Sql) -> None:
    """The closed buckets are read once per process (api/throughput.py); what finishes later
    is added, nothing twice, hostile queue names included (they reach the names query as an
    array of the queues that finished jobs, not from the table)."""
    only_queues(sql, [])
    old, new = HOSTILE[:10], HOSTILE[8:]
    finished(sql, old, "succeeded", "10 minutes")  # a closed bucket
    finished(sql, old[:4], "dead", "12 minutes")
    finished(sql, ["cancelled only"], "cancelled", "11 minutes")  # listed, counts nothing
    want = {q: (1, int(q in old[:4])) for q in old} | {"cancelled only": (0, 0)}
    assert counted(api) == want
    pages, total = walk_api(api, 3)
    assert [q for p in pages for q in p] == db_order(sql, [*old, "cancelled only"])
    assert total == len(old) + 1
    # The closed buckets come from what this process kept: deleting their jobs (a prune, a
    # bulk delete) changes nothing for ten minutes (docs/api.md), which also shows the window
    # was not read again.
    sql("DELETE FROM jobs WHERE finished_at < now() - interval '5 minutes'")
    for _ in range(2):  # the open bucket, read again by each view
        finished(sql, new, "succeeded", "1 second")
        for q in new:
            want[q] = (want.get(q, (0, 0))[0] + 1, want.get(q, (0, 0))[1])
        assert counted(api) == want
    fresh = {q: (n, 0) for q, n in sql("SELECT queue, count(*) FROM jobs GROUP BY queue")}
    assert fresh == {q: (2, 0) for q in new}  # what a new process would count


def test_the_default_page_and_bad_cursors(api: httpx.Client, sql: Sql) -> None:
    names = [f"q{i:03d}" for i in range(service.OVERVIEW_PAGE + 5)]
    only_queues(sql, names)
    body = api.get("/v1/queues").json()
    assert len(body["queues"]) == service.OVERVIEW_PAGE
    assert body["next_after"] == names[service.OVERVIEW_PAGE - 1]
    assert body["total_queues"] == len(names)
    stored = sql("SELECT count(*) FROM tasks")
    for bad in ({"limit": 0}, {"limit": service.OVERVIEW_PAGE_MAX + 1}, {"limit": "ten"},
                {"after": ""}, {"after": "x" * 129}, {"after": "nul\x00"}):
        r = api.get("/v1/queues", params=bad)
        assert r.status_code == 422, (bad, r.text)
        field = r.json()["fields"][0]["field"]
        assert field == next(iter(bad)), (bad, r.text)
    assert sql("SELECT count(*) FROM tasks") == stored


def test_naming_more_queues_than_a_page_answers_them_all(api: httpx.Client, sql: Sql) -> None:
    """A caller that names its queues (queue=, as before paging) is not cut at 100 without
    knowing: with no limit given it gets every queue it named, up to the maximum page."""
    names = [f"n{i:03d}" for i in range(service.OVERVIEW_PAGE + 30)]
    only_queues(sql, names)
    body = api.get("/v1/queues", params={"queue": names}).json()
    assert [q["queue"] for q in body["queues"]] == names
    assert body["next_after"] is None and body["total_queues"] == len(names)
    # an explicit limit is still a page
    body = api.get("/v1/queues", params={"queue": names, "limit": 10}).json()
    assert [q["queue"] for q in body["queues"]] == names[:10]
    assert body["next_after"] == names[9]


ROW = re.compile(r'<tr data-queue="([^"]*)" data-paused=')
NEXT = re.compile(r'<a href="([^"]*)" id="queues-next">')


def test_the_dashboard_pages_hostile_names_by_its_links(api: httpx.Client, sql: Sql) -> None:
    per = dashboard.QUEUES_PER_PAGE
    names = HOSTILE + [f"bulk-{i:03d}" for i in range(2 * per + 7 - len(HOSTILE))]
    only_queues(sql, names)
    want = db_order(sql, names)
    seen: list[str] = []
    url: str | None = "/ui/?window=60"
    pages = 0
    while url is not None and pages < 10:
        r = api.get(html.unescape(url))
        assert r.status_code == 200, r.text
        page = r.text
        rows = [html.unescape(x) for x in ROW.findall(page)]
        assert rows and len(rows) <= per
        assert "<script>alert(1)</script>" not in page  # escaped wherever a name is shown
        assert f"{len(want)} queues" in page
        if pages:
            assert 'id="queues-first"' in page and "window=60" in page
        seen += rows
        m = NEXT.search(page)
        url = m[1] if m else None
        pages += 1
    assert pages == 3 and seen == want
    for bad, says in (("x" * 129, "at most 128"), ("nul\x00", "NUL")):
        r = api.get("/ui/", params={"after": bad})
        assert r.status_code == 400 and says in r.text, r.text


def test_backlog_points_thin_the_history_keeping_its_spike_and_its_newest_sample(
        api: httpx.Client, sql: Sql) -> None:
    from tests.support.waits import wait_until

    only_queues(sql, ["spiky"])

    def history(**params: str) -> list[dict[str, object]]:
        body = api.get("/v1/queues", params={"queue": "spiky", **params})
        assert body.status_code == 200, body.text
        points: list[dict[str, object]] = body.json()["queues"][0]["backlog_history"]
        return points

    # the sampler runs every 0.1 s here: a few samples empty, a spike of 7, empty again
    wait_until(lambda: len(history()) >= 5, message="samples before the spike")
    sql("INSERT INTO jobs (task, queue) SELECT 'task1', 'spiky' FROM generate_series(1, 7)")
    wait_until(lambda: any(p["backlog"] == 7 for p in history()), message="the spike sampled")
    sql("DELETE FROM jobs")
    n = len(history())
    wait_until(lambda: len(history()) >= n + 5, message="samples after the spike")
    full, thin = history(), history(backlog_points="4")
    assert len(full) >= 11 and len(thin) == 4  # five before, the spike, five after
    assert max(p["backlog"] for p in thin) == 7  # the spike stays, whatever run it fell in
    times = [dt.datetime.fromisoformat(str(p["at"])) for p in thin]
    assert thin[-1]["backlog"] == 0 and times == sorted(times)
    assert history(backlog_points="0") == []
    assert len(history(backlog_points="1")) == 1
    for bad in ("-1", "100001", "x"):
        r = api.get("/v1/queues", params={"backlog_points": bad})
        assert r.status_code == 422 and r.json()["fields"][0]["field"] == "backlog_points", r.text


def test_the_dashboards_backlog_chart_draws_at_most_its_points_with_the_spike(
        database_url: str, sql: Sql) -> None:
    from pydantic import SecretStr

    from skiplock.api.config import ApiSettings
    from tests.integration.api.conftest import READ, READ_TOKEN, settings
    from tests.integration.api.server import client, serve
    from tests.support.waits import wait_until

    only_queues(sql, ["busy"])
    # a sample every 20 ms: more samples than the chart's points within a few seconds
    with serve(settings(database_url), ApiSettings(read_token=SecretStr(READ_TOKEN),
                                                   sample_interval=0.02)) as url, \
            client(url) as c:
        c.headers.update(READ)

        def samples() -> int:
            body = c.get("/v1/queues", params={"queue": "busy", "backlog_points": 100_000}
                         ).json()
            return len(body["queues"][0]["backlog_history"])

        wait_until(lambda: samples() >= 20, message="samples before the spike")
        sql("INSERT INTO jobs (task, queue) SELECT 'task1', 'busy' FROM generate_series(1, 9)")
        wait_until(lambda: samples() >= 30, message="the spike sampled")
        sql("DELETE FROM jobs")
        wait_until(lambda: samples() >= dashboard.BACKLOG_POINTS + 40, timeout=60,
                   message="more samples than the chart draws")
        page = c.get("/ui/")
        assert page.status_code == 200, page.text
        # the API thins to the same 120 points unless asked for more
        default = c.get("/v1/queues", params={"queue": "busy"}).json()["queues"][0]
        every = samples()
        assert len(default["backlog_history"]) == service.BACKLOG_POINTS < every
        assert max(p["backlog"] for p in default["backlog_history"]) == 9
    figure = re.search(r'<figure[^>]*data-queue="busy".*?</figure>', page.text, re.S)
    assert figure is not None, page.text[:2000]
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', figure[0])
    assert len(lines) == 3, figure[0][:2000]  # backlog, in-flight, stuck
    for points in lines:
        assert len(points.split()) == dashboard.BACKLOG_POINTS
    # the backlog line reaches its peak (9, the chart's top: y 8.0) and ends at 0 (y 102.0)
    ys = [float(p.split(",")[1]) for p in lines[0].split()]
    assert min(ys) == 8.0 and ys[-1] == 102.0, ys
