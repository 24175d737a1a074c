"""``skiplock api``: serve the HTTP API and dashboard with uvicorn."""

from __future__ import annotations

import argparse
from typing import Any

# The settings the flags of `skiplock api` override, named in their errors.
API_FLAGS = {"SKIPLOCK_API_HOST": "--host", "SKIPLOCK_API_PORT": "--port",
             "SKIPLOCK_API_TRUSTED_HOSTS": "--trusted-host",
             "SKIPLOCK_API_INSECURE_NO_TOKEN": "--insecure-no-token"}


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from ..cli_settings import settings_from_args, validated
    from .access import check_bind
    from .app import create_app
    from .config import ApiSettings

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.insecure_no_token:
        overrides["insecure_no_token"] = True
    if args.trusted_host:
        overrides["trusted_hosts"] = args.trusted_host
    # Constructed, not model_copy'd: the flags are validated like the environment is, and a
    # bad one is named with its variable and flag (never its value: tokens are secrets).
    api = validated(ApiSettings, overrides, prefix="SKIPLOCK_API_", flags=API_FLAGS)
    check_bind(api)
    settings = settings_from_args(args)
    app = create_app(settings, api)
    # log_config=None keeps the logging that skiplock.cli configured (text or JSON lines).
    # uvicorn's loop setting takes the same auto/asyncio/uvloop as the worker's.
    uvicorn.run(app, host=api.host, port=api.port, log_config=None,
                access_log=args.access_log, proxy_headers=False, timeout_graceful_shutdown=10,
                loop=settings.event_loop)
    return 0


def add_api_command(subparsers: Any) -> None:
    a = subparsers.add_parser(
        "api", help="serve the HTTP API and dashboard (tokens: SKIPLOCK_API_TOKEN, "
                    "SKIPLOCK_API_READ_TOKEN)")
    a.add_argument("--host", help="default SKIPLOCK_API_HOST or 127.0.0.1")
    a.add_argument("--port", type=int, help="default SKIPLOCK_API_PORT or 8080")
    a.add_argument("--access-log", action="store_true", help="log every request")
    a.add_argument("--trusted-host", action="append", metavar="NAME",
                   help="a Host name to answer (repeat; default SKIPLOCK_API_TRUSTED_HOSTS, or "
                        "localhost names on a loopback bind)")
    a.add_argument("--insecure-no-token", action="store_true",
                   help="serve a non-loopback address without SKIPLOCK_API_TOKEN or "
                        "SKIPLOCK_API_READ_TOKEN: anyone who reaches it may read and change "
                        "everything (only behind something that authenticates)")
    a.set_defaults(func=cmd_api)
