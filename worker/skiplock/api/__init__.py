"""HTTP API and dashboard (``skiplock api``). Needs the ``api`` extra; the queue core never
imports this package."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: every `skiplock` command imports skiplock.api.cli for the flags
    # of `skiplock api`, and FastAPI costs about half a second of start-up.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
