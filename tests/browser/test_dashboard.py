"""The dashboard in a real browser: every filter shows exactly its jobs, retry and cancel work,
charts are drawn, and screenshots are saved under artifacts/screenshots/."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Dialog, Page, expect

from tests.browser.conftest import Dashboard
from tests.integration.api.conftest import TOKEN
from tests.integration.api.seed import HOSTILE, filter_cases, seed, seed_registry

Sql = Callable[..., list[tuple[object, ...]]]
FIELDS = {"queue": "#f-queue", "task": "#f-task", "min_attempts": "#f-min-attempts",
          "created_after": "#f-created-after", "created_before": "#f-created-before",
          "finished_after": "#f-finished-after", "finished_before": "#f-finished-before",
          "error": "#f-error"}


def shown_ids(page: Page) -> set[int]:
    return {int(x) for x in page.locator("#jobs-table tr[data-job-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.jobId)")}


def test_each_filter_shows_exactly_its_jobs(dashboard: Dashboard, sql: Sql) -> None:
    s = seed(sql)
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs")
    assert shown_ids(page) == set(s.ids.values())
    for name, params, expected in filter_cases(s):
        page.goto(f"{dashboard.url}/ui/jobs")
        # Fill the form as a person would, then submit it.
        if "state" in params:
            page.select_option("#f-state", params["state"])
        if params.get("stuck"):
            page.check("#f-stuck")
        for key, selector in FIELDS.items():
            if key in params:
                page.fill(selector, params[key])
        page.click("#apply")
        page.wait_for_url(re.compile(r"/ui/jobs\?"))
        got = shown_ids(page)
        assert got == expected, f"filter {name} {params}: page shows {got}, expected {expected}"
        dashboard.shot(f"jobs-filter-{name.replace(' ', '-')}")
    # The stuck job is flagged as such in the list, not only filtered.
    page.goto(f"{dashboard.url}/ui/jobs?stuck=1")
    expect(page.locator(f"tr[data-job-id='{s['stuck']}'] .badge.stuck")).to_have_text("stuck")


def test_a_bad_filter_says_what_is_wrong(dashboard: Dashboard) -> None:
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs?min_attempts=lots")
    expect(page.locator("#filter-error")).to_contain_text("min_attempts")
    dashboard.shot("jobs-bad-filter")


def test_retry_and_cancel_buttons(dashboard: Dashboard, sql: Sql) -> None:
    s = seed(sql)
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs?state=dead")
    retry = page.locator(f"tr[data-job-id='{s['dead']}'] button[data-action='retry']")
    # Without the token the API refuses, the page says why, and nothing changes.
    retry.click()
    expect(page.locator("#flash")).to_contain_text("token")
    assert sql("SELECT state::text FROM jobs WHERE id = %s", s["dead"]) == [("dead",)]
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#token-state")).to_have_text("saved")
    retry.click()
    expect(page.locator("#flash")).to_contain_text("now queued")
    expect(page.locator(f"tr[data-job-id='{s['dead']}'] .badge").first).to_have_text("queued")
    assert sql("SELECT state::text FROM jobs WHERE id = %s", s["dead"]) == [("queued",)]
    dashboard.shot("jobs-after-retry")

    page.goto(f"{dashboard.url}/ui/jobs/{s['queued']}")
    page.click("button[data-action='cancel']")
    expect(page.locator("#job-state")).to_have_text("cancelled")
    assert sql("SELECT state::text FROM jobs WHERE id = %s", s["queued"]) == [("cancelled",)]
    # A running job: Cancel stores the request (its worker stops it); the page then says so
    # and offers no second Cancel (nor a retry).
    page.goto(f"{dashboard.url}/ui/jobs/{s['running']}")
    expect(page.locator("button.act")).to_have_count(1)
    page.click("button[data-action='cancel']")
    expect(page.locator("#cancel-requested")).to_have_text("cancel requested")
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#cancel-reason")).to_contain_text("the HTTP API")
    expect(page.locator("button.act")).to_have_count(0)
    assert sql("SELECT state::text, cancel_requested_at IS NOT NULL FROM jobs WHERE id = %s",
               s["running"]) == [("running", True)]
    dashboard.shot("job-after-cancel")


def test_job_detail_shows_errors_per_attempt(dashboard: Dashboard, sql: Sql) -> None:
    s = seed(sql)
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs/{s['dead']}")
    rows = page.locator("#errors-table tbody tr")
    expect(rows).to_have_count(4)
    for i in range(4):
        expect(rows.nth(i).locator("td").first).to_have_text(str(i + 1))
        expect(rows.nth(i)).to_contain_text(f"always fails (attempt {i + 1})")
    expect(page.locator("svg.timeline circle")).to_have_count(6)  # created, 4 failures, dead
    expect(page.locator("#attempts")).to_have_text("4 of 4")
    dashboard.shot("job-detail-dead")
    page.goto(f"{dashboard.url}/ui/jobs/{s['stuck']}")
    expect(page.locator("h1 .badge.stuck")).to_be_visible()
    dashboard.shot("job-detail-stuck")


def test_queues_overview_counts_charts_and_links(dashboard: Dashboard, sql: Sql) -> None:
    s = seed(sql)
    sql("INSERT INTO jobs (queue, task, state, attempts, finished_at)"
        " SELECT 'beta', 'add', 'succeeded', 1, now() - (g || ' minutes')::interval"
        " FROM generate_series(1, 25) AS g")
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/")
    beta = page.locator("tr[data-queue='beta']")
    expect(beta.locator("[data-col='stuck']")).to_have_text("1")
    expect(beta.locator("[data-col='dead']")).to_have_text("1")
    alpha = page.locator("tr[data-queue='alpha']")
    expect(alpha.locator("[data-col='high_retry']")).to_have_text("1")
    expect(alpha.locator("[data-col='backlog']")).to_have_text("2")
    # Throughput bars: 25 succeeded + 1 dead in the last 30 minutes, one bar per bucket.
    bars = page.locator("figure[data-queue='beta'] svg.chart").first.locator("rect > title")
    assert bars.count() >= 20
    # The backlog line appears once the sampler has two points and auto-refresh fetched them.
    expect(page.locator("figure[data-queue='alpha'] polyline").first).to_be_attached(
        timeout=20_000)
    # The worker that died holding a job stands out, with a link to its stuck jobs.
    dead_worker = page.locator("#workers-table tr[data-queue='beta']")
    expect(dead_worker.locator("[data-col='expired']")).to_have_text("1")
    expect(page.locator("#workers-table tr[data-queue='alpha'] [data-col='live']")).to_have_text(
        "1")
    dashboard.shot("queues-overview")
    # Each problem count links to exactly the jobs behind it.
    beta.locator("[data-col='stuck'] a").click()
    page.wait_for_url(re.compile(r"stuck=1"))
    assert shown_ids(page) == s.of("stuck")
    page.goto(f"{dashboard.url}/ui/")
    page.locator("tr[data-queue='alpha'] [data-col='high_retry'] a").click()
    page.wait_for_url(re.compile(r"min_attempts=3"))
    assert shown_ids(page) == s.of("retrying")


def test_pagination_walks_all_jobs(dashboard: Dashboard, sql: Sql) -> None:
    sql("INSERT INTO jobs (task) SELECT 'noop' FROM generate_series(1, 120)")
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs")
    seen: list[set[int]] = [shown_ids(page)]
    while page.locator("#older").count():
        page.click("#older")
        page.wait_for_load_state()
        seen.append(shown_ids(page))
    assert [len(p) for p in seen] == [50, 50, 20]
    assert len(set().union(*seen)) == 120
    expect(page.locator("#newest")).to_be_visible()


# Records what a hostile string could make the page do: alerts, and every CSP violation.
WATCH = """
window.__alerts = [];
window.alert = (m) => window.__alerts.push(String(m));
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


def test_workers_view_warns_and_shows_a_hostile_problem_as_text(dashboard: Dashboard,
                                                                sql: Sql) -> None:
    seed(sql)
    seed_registry(sql)
    page = dashboard.page
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", on_dialog)
    page.add_init_script(WATCH)
    page.goto(f"{dashboard.url}/ui/")
    stalled = page.locator("#processes-table tr.stalled")
    expect(stalled).to_have_count(2)
    hostile = page.locator("#processes-table tr[data-worker='pod-d:4:w']")
    expect(hostile.locator("[data-col='warning']")).to_be_visible()
    expect(hostile.locator("[data-col='warning']")).to_contain_text("unhealthy")
    # the problem is shown, as the very characters the worker reported
    expect(hostile.locator("[data-col='problem']")).to_have_text(HOSTILE)
    expect(page.locator("#processes-table tr[data-worker='pod-b:2:y'] [data-col='warning']")
           ).to_contain_text("outcomes not written for 20s")
    expect(page.locator("#processes-table tr[data-worker='pod-a:1:x'] [data-col='warning']")
           ).to_have_count(0)
    expect(page.locator("tr[data-queue='gamma'] [data-col='waiting_for_worker']")).to_have_text(
        "3")
    # auto-refresh swaps the live part in from fetched HTML: the same must hold after it
    with page.expect_response(lambda r: r.url.startswith(f"{dashboard.url}/ui/")
                              and "/static/" not in r.url, timeout=20_000):
        pass
    page.wait_for_timeout(500)  # the fetched HTML is parsed and swapped in after the response
    expect(page.locator("#processes-table tr.stalled")).to_have_count(2)
    expect(page.locator("#processes-table [data-col='problem']")).to_have_text(HOSTILE)
    dashboard.shot("queues-workers-stalled")
    assert page.locator("#main script, #main img").count() == 0
    assert page.evaluate("window.__alerts") == [] and dialogs == []
    assert page.evaluate("window.__csp") == []
