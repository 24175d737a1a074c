"""``skiplock api``: serve the HTTP API and dashboard with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from ..cli import _settings
    from .app import create_app
    from .config import ApiSettings

    api = ApiSettings()
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    api = api.model_copy(update=overrides)
    app = create_app(_settings(args), api)
    # log_config=None keeps the logging that skiplock.cli configured (text or JSON lines).
    uvicorn.run(app, host=api.host, port=api.port, log_config=None,
                access_log=args.access_log, proxy_headers=False, timeout_graceful_shutdown=10)
    return 0


def add_api_command(subparsers: Any) -> None:
    a = subparsers.add_parser(
        "api", help="serve the HTTP API and dashboard (token: SKIPLOCK_API_TOKEN)")
    a.add_argument("--host", help="default SKIPLOCK_API_HOST or 127.0.0.1")
    a.add_argument("--port", type=int, help="default SKIPLOCK_API_PORT or 8080")
    a.add_argument("--access-log", action="store_true", help="log every request")
    a.set_defaults(func=cmd_api)
