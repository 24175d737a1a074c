"""``python -m skiplock_operator``: the operator with liveness and metrics endpoints."""

from __future__ import annotations

import logging
import sys

import kopf
from prometheus_client import start_http_server

from skiplock import logs

from . import handlers  # noqa: F401  (registers the handlers)
from .settings import OperatorSettings


def main() -> int:
    settings = OperatorSettings()
    logs.configure("INFO", settings.log_json)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    logging.getLogger("skiplock.operator").info(
        "watching JobQueues in %s", ", ".join(settings.namespaces) or "all namespaces")
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness_endpoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
