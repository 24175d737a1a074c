"""Pause and resume a queue from the dashboard in a real browser, and a queue with a hostile
name (paused by hand in SQL, from before the naming rule) shown and resumed as text."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import expect

from skiplock.api.dashboard import QUEUES_PER_PAGE
from tests.browser.conftest import Dashboard
from tests.browser.test_dashboard import WATCH
from tests.integration.api.conftest import TOKEN

Sql = Callable[..., list[tuple[object, ...]]]
NAME = "<img src=x onerror=alert(1)> \"q'/日本"


def css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def test_pause_and_resume_buttons(dashboard: Dashboard, sql: Sql) -> None:
    sql("INSERT INTO jobs (queue, task) VALUES (%s, 'noop'), ('plain', 'noop')", NAME)
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES (%s, %s)", NAME, f"ops: {NAME}")
    page = dashboard.page
    page.add_init_script(WATCH)
    page.goto(f"{dashboard.url}/ui/")
    plain = page.locator("#queues-table tr[data-queue='plain']")
    button = plain.locator("button.queue-act")
    expect(button).to_have_text("Pause")
    hostile = page.locator(f"#queues-table tr[data-queue={css_string(NAME)}]")
    expect(hostile.locator("[data-col='paused']")).to_have_text("paused")
    expect(hostile.locator("[data-col='paused_by']")).to_contain_text(f"by ops: {NAME}")
    expect(hostile.locator("button.queue-act")).to_have_text("Resume")

    # Without the token the API refuses, the page says why, and nothing changes.
    button.click()
    expect(page.locator("#flash")).to_contain_text("token")
    assert sql("SELECT queue FROM paused_queues") == [(NAME,)]

    page.fill("#token", TOKEN)
    page.click("#token-form button")
    button.click()
    expect(page.locator("#flash")).to_have_text(
        "queue plain paused: workers stop claiming from it; running jobs finish")
    expect(plain.locator("[data-col='paused']")).to_have_text("paused")
    expect(plain.locator("[data-col='paused_by']")).to_contain_text("by api")
    drawn = plain.locator("[data-col='paused_by']").text_content()
    expect(button).to_have_text("Resume")
    assert sorted(sql("SELECT queue, paused_by FROM paused_queues")) == sorted(
        [(NAME, f"ops: {NAME}"), ("plain", "api")])
    # the auto-refresh (every 5 s) renders it on the server the same way
    with page.expect_response(lambda r: r.url.startswith(f"{dashboard.url}/ui/")
                              and "/static/" not in r.url, timeout=20_000):
        pass
    expect(plain).to_have_attribute("data-paused", "true")
    # what the script drew is what the server renders (time in UTC, to the second)
    expect(plain.locator("[data-col='paused_by']")).to_have_text(drawn or "?")
    dashboard.shot("queues-paused")

    # The hostile name: resumed (any stored name may be), then refused a new pause, with
    # the rule shown as text.
    hostile.locator("button.queue-act").click()
    expect(page.locator("#flash")).to_have_text(
        f"queue {NAME} resumed: workers claim from it again")
    expect(hostile.locator("[data-col='paused']")).to_have_count(0)
    hostile.locator("button.queue-act").click()
    expect(page.locator("#flash")).to_contain_text(f"queue {NAME}: pause failed: ")
    expect(page.locator("#flash")).to_contain_text("is not allowed")

    plain.locator("button.queue-act").click()
    expect(page.locator("#flash")).to_have_text(
        "queue plain resumed: workers claim from it again")
    expect(plain.locator("[data-col='paused']")).to_have_count(0)
    expect(plain.locator("button.queue-act")).to_have_text("Pause")
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]
    assert page.locator("#main script, #main img").count() == 0
    assert page.evaluate("window.__alerts") == []
    assert page.evaluate("window.__csp") == []


def test_the_overview_pages_and_refreshes_the_page_it_shows(dashboard: Dashboard,
                                                            sql: Sql) -> None:
    """More queues than one page holds: the next link shows the rest, and the auto-refresh
    keeps showing that page (it re-reads the page's own URL), not the first."""
    per = QUEUES_PER_PAGE
    sql("INSERT INTO jobs (queue, task) SELECT 'p' || lpad(i::text, 3, '0'), 'noop' "
        "FROM generate_series(1, %s) AS i", per + 3)
    sql("INSERT INTO jobs (queue, task) VALUES (%s, 'noop')", NAME)
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/")
    rows = page.locator("#queues-table tr[data-queue]")
    total = len(sql("SELECT DISTINCT queue FROM jobs UNION SELECT queue FROM tasks"))
    expect(rows).to_have_count(per)
    expect(page.locator("#queues-shown")).to_have_text(f"{per} of {total} queues, in name order")
    first = set(rows.evaluate_all("rs => rs.map(r => r.dataset.queue)"))
    page.click("#queues-next")
    page.wait_for_url(re.compile(r"/ui/\?after="))
    expect(page.locator("#queues-first")).to_be_visible()
    second = rows.evaluate_all("rs => rs.map(r => r.dataset.queue)")
    assert len(second) == total - per and not first & set(second)
    assert first | set(second) == {str(r[0]) for r in sql(
        "SELECT DISTINCT queue FROM jobs UNION SELECT queue FROM tasks")}
    # the next auto-refresh swaps in the same page, drawn again by the server
    with page.expect_response(lambda r: "/ui/?after=" in r.url, timeout=20_000):
        pass
    expect(rows).to_have_count(total - per)
    expect(page.locator("#queues-next")).to_have_count(0)
    dashboard.shot("queues-second-page")
