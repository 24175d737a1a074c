"""A real uvicorn server for the API on 127.0.0.1 (in a thread of the test process)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn
from fastapi import FastAPI

from skiplock.api import create_app
from skiplock.api.config import ApiSettings
from skiplock.settings import Settings
from tests.support.pgserver import free_port


@contextlib.contextmanager
def serve(settings: Settings, api: ApiSettings) -> Iterator[str]:
    """Serve the app until the block ends; yields its base URL."""
    with serve_app(settings, api) as (url, _):
        yield url


@contextlib.contextmanager
def serve_app(settings: Settings, api: ApiSettings) -> Iterator[tuple[str, FastAPI]]:
    """serve, yielding the app too: a test may look at its state (app.state.skiplock)."""
    port = free_port()
    app = create_app(settings, api.model_copy(update={"host": "127.0.0.1", "port": port}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the API server on port {port} did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def client(base_url: str) -> httpx.Client:
    # The bound is far above any healthy answer, so a hang fails the test instead of stalling it.
    return httpx.Client(base_url=base_url, timeout=30)
