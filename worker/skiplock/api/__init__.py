"""HTTP API and dashboard (``skiplock api``). Needs the ``api`` extra; the queue core never
imports this package."""

from .app import create_app

__all__ = ["create_app"]
