"""The worker's HTTP endpoint (SKIPLOCK_METRICS_PORT): Prometheus metrics and /livez.

/livez answers 200 while the worker is healthy and 503 with the reasons when a service is down
or outcomes stopped being written: the operator's livenessProbe restarts such a pod instead of
leaving it claiming jobs it cannot finish. Any other path serves the metrics, as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .health import Health


def serve_probes(port: int, health: Callable[[], Health], host: str = "") -> ThreadingHTTPServer:
    """Start serving in a daemon thread; returns the server (``shutdown()`` stops it)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/livez":
                h = health()
                body = json.dumps(
                    {
                        "status": "ok" if h.healthy else "failing",
                        "problems": list(h.problems),
                        "pending_outcomes": h.pending_outcomes,
                        "oldest_pending_seconds": h.oldest_pending_seconds,
                    }
                ).encode()
                self._answer(200 if h.healthy else 503, "application/json", body)
            else:
                self._answer(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a probe every few seconds would drown the worker's own log lines

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="skiplock-probes", daemon=True).start()
    return server
