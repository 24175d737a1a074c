"""A real ``skiplock api`` process on 127.0.0.1 and a real headless Chromium (the Debian
package, driven by Playwright; nothing is downloaded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Request, sync_playwright

from tests.conftest import ROOT
from tests.integration.api.conftest import READ_TOKEN, TOKEN, register_tasks
from tests.support.pgserver import free_port
from tests.support.waits import wait_until

CHROMIUM = Path(os.environ.get("SKIPLOCK_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (the browser tests need "
                    "it; they never download one)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


@dataclass
class Dashboard:
    url: str
    page: Page
    requests: list[str]

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def api_process(database_url: str, sql: Callable[..., list[tuple[object, ...]]]
                ) -> Iterator[str]:
    register_tasks(sql)
    port = free_port()
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": database_url, "SKIPLOCK_API_TOKEN": TOKEN,
           "SKIPLOCK_API_READ_TOKEN": READ_TOKEN,
           "SKIPLOCK_API_SAMPLE_INTERVAL": "0.5", "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    log = open(f"/tmp/skiplock-api-{os.getpid()}-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "skiplock", "api", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return proc.poll() is not None  # stop waiting: it died
    wait_until(up, timeout=30, message="skiplock api to be ready")
    assert proc.poll() is None, Path(log.name).read_text()
    yield url
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    log.close()


@pytest.fixture
def dashboard(browser: Browser, api_process: str) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    seen: list[str] = []

    def record(request: Request) -> None:
        seen.append(request.url)
    page.on("request", record)
    # Pages need a token once one is configured: sign in with the read token, as a person on
    # call would; the write token is what the tests type into the form to act.
    signed = context.request.post(f"{api_process}/ui/session", data={"token": READ_TOKEN})
    assert signed.status == 200, signed.text()
    yield Dashboard(url=api_process, page=page, requests=seen)
    context.close()
    # Nothing may come from anywhere but the API itself (no CDN, fonts or trackers).
    foreign = [u for u in seen if not u.startswith(api_process) and not u.startswith("data:")]
    assert not foreign, foreign
