"""Bulk actions on the jobs page in a real browser: the count in the page's own confirmation,
"Don't" doing nothing, batches with progress, the result, and the database afterwards."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Dashboard
from tests.browser.test_dashboard import WATCH, shown_ids
from tests.integration.api.conftest import TOKEN

Sql = Callable[..., list[tuple[Any, ...]]]
# A queue name that is markup, quotes and an ampersand: shown as text, never run.
QUEUE = """b<img src=x onerror=alert(1)>"'&amp;"""


def insert(sql: Sql, queue: str, state: str, n: int, error: str | None = None) -> set[int]:
    return {int(r[0]) for r in sql(
        "INSERT INTO jobs (queue, task, state, attempts, max_attempts, finished_at, locked_by,"
        " locked_until, last_error) SELECT %s, 'noop', %s::job_state, 1, 1,"
        " CASE WHEN %s IN ('dead', 'succeeded', 'cancelled') THEN now() END,"
        " CASE WHEN %s = 'running' THEN 'pod-x:1:w' END,"
        " CASE WHEN %s = 'running' THEN now() + interval '1 hour' END, %s"
        " FROM generate_series(1, %s) RETURNING id",
        queue, state, state, state, state, error, n)}


def by_state(sql: Sql, queue: str) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in sql(
        "SELECT state::text, count(*) FROM jobs WHERE queue = %s GROUP BY 1", queue)}


def save_token(page: Page) -> None:
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#token-state")).to_have_text("saved")


def bulk_posts(dashboard: Dashboard) -> int:
    return sum(1 for u in dashboard.requests if u.endswith("/v1/jobs/bulk"))


def test_cancel_matching_shows_the_count_asks_then_cancels(dashboard: Dashboard,
                                                           sql: Sql) -> None:
    queued = insert(sql, QUEUE, "queued", 1234)
    running = insert(sql, QUEUE, "running", 3)
    insert(sql, "alpha", "queued", 20)
    page = dashboard.page
    page.add_init_script(WATCH)
    page.goto(f"{dashboard.url}/ui/jobs")
    # No filter, no bulk buttons: every job is too much for a button.
    expect(page.locator("#bulk")).to_have_count(0)
    expect(page.locator("#bulk-hint")).to_be_visible()
    page.fill("#f-queue", QUEUE)
    page.click("#apply")
    page.wait_for_url(re.compile(r"/ui/jobs\?"))
    assert shown_ids(page) <= queued | running
    save_token(page)

    # "Don't cancel" in the confirmation does nothing at all.
    page.click("#bulk-cancel")
    dialog = page.locator("#bulk-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#bulk-question")).to_have_text(
        "Cancel 1,237 job(s) matching these filters?")
    expect(page.locator("#bulk-filter")).to_have_text(f"queue = {QUEUE}")
    expect(page.locator("#bulk-go")).to_have_text("Cancel 1,237 job(s)")
    dashboard.shot("jobs-bulk-cancel-confirm")
    page.click("#bulk-dismiss")
    expect(dialog).to_be_hidden()
    assert bulk_posts(dashboard) == 0
    assert by_state(sql, QUEUE) == {"queued": 1234, "running": 3}

    # Confirmed: batch by batch (500 each) to the end, with progress, then the result.
    page.click("#bulk-cancel")
    expect(page.locator("#bulk-question")).to_contain_text("1,237 job(s)")
    page.click("#bulk-go")
    status = page.locator("#bulk-status")
    expect(status).to_have_text("Done: 1,237 job(s) cancelled or asked to stop", timeout=30_000)
    progress = page.locator("#bulk-progress")
    expect(progress).to_be_visible()
    assert progress.evaluate("p => [p.value, p.max]") == [1237, 1237]
    expect(page.locator("#bulk-go")).to_be_hidden()
    dashboard.shot("jobs-bulk-cancel-done")
    assert bulk_posts(dashboard) == 3
    assert by_state(sql, QUEUE) == {"cancelled": 1234, "running": 3}
    assert {int(r[0]) for r in sql("SELECT id FROM jobs WHERE cancel_requested_at IS NOT NULL"
                                   " AND state = 'running'")} == running
    assert by_state(sql, "alpha") == {"queued": 20}
    # Closing shows the list as it is now.
    page.click("#bulk-dismiss")
    page.wait_for_load_state()
    expect(page.locator("#jobs-table tr[data-state='queued']")).to_have_count(0)
    assert page.evaluate("window.__alerts") == []
    assert page.evaluate("window.__csp") == []


def test_retry_matching_dead_jobs(dashboard: Dashboard, sql: Sql) -> None:
    target = insert(sql, "beta", "dead", 3, "KeyError: 'customer'")
    other_error = insert(sql, "beta", "dead", 2, "TimeoutError")
    other_queue = insert(sql, "alpha", "dead", 2, "KeyError: 'customer'")
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs?state=dead&queue=beta&error=KeyError")
    assert shown_ids(page) == target
    save_token(page)
    page.click("#bulk-retry")
    expect(page.locator("#bulk-question")).to_have_text(
        "Retry 3 job(s) matching these filters?")
    expect(page.locator("#bulk-filter")).to_have_text(
        "error = KeyError, queue = beta, state = dead")
    page.click("#bulk-go")
    expect(page.locator("#bulk-status")).to_have_text("Done: 3 job(s) queued again")
    assert {int(r[0]) for r in sql("SELECT id FROM jobs WHERE state = 'queued'")} == target
    assert {int(r[0]) for r in sql("SELECT id FROM jobs WHERE state = 'dead'")} == (
        other_error | other_queue)
    dashboard.shot("jobs-bulk-retry-done")


def test_delete_matching_needs_the_token_and_never_deletes_a_running_job(
        dashboard: Dashboard, sql: Sql) -> None:
    insert(sql, "gamma", "succeeded", 7)
    running = insert(sql, "gamma", "running", 1)
    page = dashboard.page
    page.goto(f"{dashboard.url}/ui/jobs?queue=gamma")
    # Without the token the API refuses the first batch; the dialog says why, nothing changes.
    page.click("#bulk-delete")
    expect(page.locator("#bulk-question")).to_have_text(
        "Delete 8 job(s) matching these filters?")
    page.click("#bulk-go")
    expect(page.locator("#bulk-status")).to_contain_text("enter the API token")
    assert by_state(sql, "gamma") == {"succeeded": 7, "running": 1}
    page.click("#bulk-dismiss")
    page.wait_for_load_state()
    save_token(page)
    page.click("#bulk-delete")
    page.click("#bulk-go")
    expect(page.locator("#bulk-status")).to_have_text(
        "Done: 7 job(s) deleted; 1 skipped (running: cancel those first, or busy at that "
        "instant)")
    assert {int(r[0]) for r in sql("SELECT id FROM jobs")} == running
    dashboard.shot("jobs-bulk-delete-done")
