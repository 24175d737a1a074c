"""The dashboard under attack and behind tokens, in a real Chromium: hostile task names, queue
names, arguments, error text and worker ids in every view execute nothing (no script, no
dialog, no CSP violation, no `javascript:` link), and a person gets in with the token form
without the token ever appearing in a URL or in what scripts can read."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from urllib.parse import quote, urlencode

from playwright.sync_api import Browser, Dialog, Page, expect

from tests.browser.conftest import Dashboard
from tests.integration.api.conftest import READ_TOKEN, TOKEN

Sql = Callable[..., list[tuple[object, ...]]]
# Each breaks out of a different context: element text, a quoted or unquoted attribute, a
# URL, a <textarea>/<title>, an inline JSON data attribute, a template literal.
PAYLOADS = [
    "<script>alert('s1')</script>",
    '"><img src=x onerror=alert(\'i1\')>',
    "' onmouseover='alert(2)' x='",
    "javascript:alert(3)",
    "</textarea></title><svg onload=alert(4)>",
    "${alert(5)}`;alert(6);`",
    '{"a": "</script><script>alert(7)</script>"}',
]
QUEUE = "q<script>alert('q')</script>\"'><img src=x onerror=alert(8)>"
TASK = "t\"><svg/onload=alert(9)>javascript:alert(10)"
WORKER = "w'><script>alert(11)</script>:1:javascript:alert(12)"
ERROR = ("Traceback: <img src=x onerror=alert(13)> \"' javascript:alert(14) </pre>"
         "<script>alert(15)</script>")

WATCH = """
window.__alerts = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = (m) => { window.__alerts.push(name + ":" + String(m)); return null; };
}
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""


def seed_hostile(sql: Sql) -> dict[str, int]:
    now = dt.datetime.now(dt.UTC)
    args = json.dumps({p: p for p in PAYLOADS} | {"list": PAYLOADS})
    errors = json.dumps([{"attempt": 1, "at": now.isoformat(), "worker": WORKER,
                          "error": ERROR}])
    ids: dict[str, int] = {}
    for state in ("dead", "running", "queued"):
        extra = {"dead": ", finished_at", "running": ", locked_until, started_at",
                 "queued": ""}[state]
        values = {"dead": ", now()", "running": ", now() + interval '5 minutes', now()",
                  "queued": ""}[state]
        (new_id,) = sql(
            f"INSERT INTO jobs (queue, task, state, attempts, args, errors, last_error, "
            f"locked_by{extra}) VALUES (%s, %s, %s, 1, %s, %s, %s, %s{values}) RETURNING id",
            QUEUE, TASK, state, args, errors, ERROR, WORKER if state == "running" else None)[0]
        ids[state] = int(str(new_id))
    sql("INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds, started_at,"
        " last_seen, running, pending_outcomes, oldest_pending_seconds, healthy, problem)"
        " VALUES (%s, %s, %s, 2, 30, now() - interval '1 hour', now(), 1, 3, 20, false, %s)",
        WORKER, [QUEUE], json.dumps({TASK: {}}), ERROR)
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES (%s, %s)", QUEUE, WORKER)
    return ids


def watch(page: Page) -> list[str]:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()
    page.on("dialog", on_dialog)
    page.add_init_script(WATCH)
    return dialogs


def assert_inert(page: Page, dialogs: list[str], where: str) -> None:
    assert page.evaluate("window.__alerts") == [], where
    assert dialogs == [], where
    assert page.evaluate("window.__csp") == [], where
    # Nothing the data said became markup: no script or img in the content, no handler
    # attribute, no javascript: link.
    assert page.locator("#main script, #main img, #main iframe").count() == 0, where
    bad = page.evaluate("""() => [...document.querySelectorAll('*')].flatMap(el =>
        [...el.attributes].filter(a => a.name.startsWith('on')
          || /^\\s*javascript:/i.test(a.value)).map(a => el.tagName + ' ' + a.name))""")
    assert bad == [], (where, bad)


def test_hostile_data_in_every_view_executes_nothing(dashboard: Dashboard, sql: Sql) -> None:
    ids = seed_hostile(sql)
    page = dashboard.page
    dialogs = watch(page)
    views = {
        "queues": "/ui/",
        "jobs": "/ui/jobs",
        "jobs filtered by the hostile queue": "/ui/jobs?" + urlencode(
            {"queue": QUEUE, "task": TASK, "error": "onerror"}),
        "jobs with a hostile bad filter": "/ui/jobs?" + urlencode(
            {"min_attempts": PAYLOADS[1], "state": PAYLOADS[0]}),
        **{f"job page ({state})": f"/ui/jobs/{job_id}" for state, job_id in ids.items()},
        "no such job": f"/ui/jobs/{quote(PAYLOADS[1], safe='')}",
    }
    for name, path in views.items():
        page.goto(dashboard.url + path)
        page.mouse.move(10, 10)
        page.mouse.move(300, 300)  # hover over whatever an onmouseover could hide in
        assert_inert(page, dialogs, name)
        dashboard.shot(f"hostile-{name.replace(' ', '-').replace('(', '').replace(')', '')}")
    # The data is shown as the very characters stored.
    page.goto(f"{dashboard.url}/ui/jobs/{ids['dead']}")
    expect(page.locator("#main")).to_contain_text(ERROR)
    expect(page.locator("#main")).to_contain_text(TASK)
    expect(page.locator("#main")).to_contain_text(QUEUE)
    page.goto(f"{dashboard.url}/ui/jobs/{ids['running']}")
    expect(page.locator("#main")).to_contain_text(WORKER)
    page.goto(f"{dashboard.url}/ui/")
    expect(page.locator("#main")).to_contain_text(QUEUE)
    expect(page.locator("#processes-table")).to_contain_text(WORKER)
    expect(page.locator("#processes-table")).to_contain_text(ERROR)

    # Acting on hostile rows: the flash messages and the bulk dialog are built by app.js from
    # the names; signed in with the write token, resume the queue, then open the bulk dialog.
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-state")).to_have_text("saved")
    row = page.locator("tr[data-queue]").filter(has_text=QUEUE)
    row.locator("button.queue-act").click()
    expect(page.locator("#flash")).to_contain_text("resumed")
    expect(page.locator("#flash")).to_contain_text(QUEUE)
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]
    assert_inert(page, dialogs, "queues after resume")
    page.goto(f"{dashboard.url}/ui/jobs?" + urlencode({"queue": QUEUE}))
    page.click("#bulk-retry")
    expect(page.locator("#bulk-filter")).to_have_text(f"queue = {QUEUE}")
    assert_inert(page, dialogs, "bulk dialog")
    page.click("#bulk-dismiss")
    page.goto(f"{dashboard.url}/ui/jobs/{ids['dead']}")
    page.click("button[data-action='retry']")
    expect(page.locator("#job-state")).to_have_text("queued")
    assert_inert(page, dialogs, "job page after retry")


def test_token_form_signs_in_without_the_token_in_any_url(browser: Browser, api_process: str,
                                                          sql: Sql) -> None:
    (dead,) = sql("INSERT INTO jobs (task, state, finished_at) VALUES ('noop', 'dead', now()) "
                  "RETURNING id")[0]
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url + " " + (r.header_value("referer") or "")))
    dialogs = watch(page)
    try:
        # Not signed in: every page asks for the token and shows no data.
        for path in ("/ui/", f"/ui/jobs/{dead}", "/ui/jobs"):
            response = page.goto(api_process + path)
            assert response is not None and response.status == 401, path
            expect(page.locator("#page-error")).to_contain_text("needs a token")
            expect(page.locator("#jobs-table")).to_have_count(0)
        page.fill("#token", "wrong-token-123456")
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_have_text("not saved")
        expect(page.locator("#flash")).to_contain_text("bearer token")
        # The read token: the page reloads into the data, and it can look but not act.
        page.fill("#token", READ_TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#jobs-table")).to_be_visible()
        expect(page.locator("#token-state")).to_have_text("signed in: read only")
        page.click(f"tr[data-job-id='{dead}'] button[data-action='retry']")
        expect(page.locator("#flash")).to_contain_text("read token cannot change")
        assert sql("SELECT state::text FROM jobs WHERE id = %s", dead) == [("dead",)]
        # The write token, typed into the same form: the button now works.
        page.fill("#token", TOKEN)
        page.click("#token-form button[type=submit]")
        expect(page.locator("#token-state")).to_have_text("saved")
        page.click(f"tr[data-job-id='{dead}'] button[data-action='retry']")
        expect(page.locator("#flash")).to_contain_text("now queued")
        assert sql("SELECT state::text FROM jobs WHERE id = %s", dead) == [("queued",)]
        # Scripts cannot read the credential back (HttpOnly), and nothing keeps the token.
        assert page.evaluate("document.cookie") == ""
        assert page.evaluate(
            "JSON.stringify({...sessionStorage}) + JSON.stringify({...localStorage})") == "{}{}"
        cookies = context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
            ("skiplock_session", True, "Strict")]
        assert TOKEN not in cookies[0]["value"]
        # Sign out: back to the token form.
        page.reload()
        page.click("#sign-out")
        expect(page.locator("#page-error")).to_contain_text("needs a token")
        assert context.cookies() == []
        assert_inert(page, dialogs, "sign-in flow")
    finally:
        context.close()
    assert urls, "no request was recorded"
    for u in urls:
        assert TOKEN not in u and READ_TOKEN not in u, u
