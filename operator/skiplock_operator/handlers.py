"""Thin kopf handlers: one daemon per JobQueue runs the controller's poll in a thread.

Run with ``python -m skiplock_operator`` (adds liveness and metrics) or
``kopf run -m skiplock_operator.handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from skiplock.db import WorkerConnection
from skiplock.errors import SkiplockError

from . import metrics
from .controller import DEFAULT_POLL, QueueController
from .kube import Kube, api_client
from .resources import GROUP, PLURAL, VERSION
from .settings import OperatorSettings

log = logging.getLogger("skiplock.operator")
# Back-off after an unexpected error (API server hiccup, write conflict), capped.
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
# How often a sleeping daemon checks for a spec change, new jobs or a stop request.
TICK = 0.25
# NOTIFY-driven polls come at most this often, however fast jobs are inserted.
MIN_POLL_GAP = 1.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = OperatorSettings()
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.watch_connect_timeout
    # One replica with the Recreate strategy: no peering objects to install or clean up.
    settings.peering.standalone = True
    # Keep kopf's bookkeeping in our own annotations and finalizer, not in status (the
    # status schema is ours and the API server would drop unknown fields).
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    memo.settings = ours
    memo.kube = Kube(api_client())
    # Shared by every per-resource memo (they are shallow copies of this one).
    memo.running = set()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials, else the kubeconfig. Replaces kopf's default chain, whose
    client-library step reads a KUBECONFIG fixed at import time and logs a false error."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="jobqueues")
def probe(memo: kopf.Memo, **_: Any) -> int:
    """How many JobQueues have a running poll loop (shown in the liveness response)."""
    return len(getattr(memo, "running", ()))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def jobqueue(name: str, namespace: str | None, body: kopf.Body, stopped: kopf.DaemonStopped,
                   memo: kopf.Memo, **_: Any) -> None:
    kube: Kube = memo.kube
    assert namespace is not None  # JobQueue is a namespaced resource
    ctl = QueueController(kube, memo.settings, namespace, name)
    failures = 0
    memo.running.add(f"{namespace}/{name}")
    wake = asyncio.Event()
    listener: asyncio.Task[None] | None = None
    listening: tuple[str, str] | None = None
    try:
        while not stopped:
            snapshot = _plain(body)
            wake.clear()
            try:
                interval = await asyncio.to_thread(ctl.poll, snapshot)
                failures = 0
                target = ctl.listen_target
                if target is not None and target[:2] != listening:
                    if listener is not None:
                        listener.cancel()
                    listening = target[:2]
                    listener = asyncio.create_task(_listen(ctl, target[0], target[1], wake))
            except ApiException as exc:
                # 404/409 and the like: the object changed under us; the next poll re-reads.
                interval = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name, f"Api{exc.status}").inc()
                log.warning("%s/%s: Kubernetes API error %s (%s); retrying in %.0fs",
                            namespace, name, exc.status, exc.reason, interval)
            except Exception:
                interval = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name, "Unexpected").inc()
                log.exception("%s/%s: poll failed; retrying in %.0fs", namespace, name, interval)
            await _sleep(interval or DEFAULT_POLL, body, snapshot, stopped, wake)
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        memo.running.discard(f"{namespace}/{name}")
        await asyncio.to_thread(ctl.close)
        metrics.forget(namespace, name)


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {"metadata": dict(body.metadata), "spec": dict(body.spec),
            "status": dict(body.status)}


async def _sleep(seconds: float, body: kopf.Body, seen: dict[str, Any],
                 stopped: kopf.DaemonStopped, wake: asyncio.Event) -> None:
    """Sleep until the next poll, but wake early for a spec change (new generation), for new
    jobs in our queues (NOTIFY; at most one early poll per MIN_POLL_GAP) or a stop."""
    started = time.monotonic()
    deadline = started + seconds
    generation = seen["metadata"].get("generation")
    while not stopped and time.monotonic() < deadline:
        if body.metadata.get("generation") != generation:
            return
        if wake.is_set() and time.monotonic() - started >= MIN_POLL_GAP:
            return
        await asyncio.sleep(min(TICK, max(0.0, deadline - time.monotonic())))


async def _listen(ctl: QueueController, url: str, schema: str, wake: asyncio.Event) -> None:
    """LISTEN for the insert trigger's NOTIFY (channel "<schema>_jobs", payload = queue) and
    wake the poll loop when one of our queues gets jobs: scale-from-zero then takes about a
    second instead of a poll interval (a KEDA complaint). A pause ("<schema>_control", payload
    "pause:<queue>") wakes it too, so the status says Paused at once; a resume already NOTIFYs
    on "<schema>_jobs". Polling stays the source of truth; this only hastens it, so its
    failures are retried quietly (the poll loop reports outages)."""
    conn = WorkerConnection(url, schema=schema, connect_timeout=5, statement_timeout=5,
                            application_name="skiplock-operator-listen")
    delay = 1.0
    try:
        while True:
            try:
                async for channel, payload in conn.listen(f"{schema}_jobs",
                                                          f"{schema}_control"):
                    delay = 1.0
                    if channel == f"{schema}_control":
                        # other control messages (cancel:<id>) change no replica count
                        if not payload.startswith("pause:"):
                            continue
                        payload = payload.removeprefix("pause:")
                    queue = payload
                    target = ctl.listen_target
                    if target is not None and queue in target[2]:
                        wake.set()
            except SkiplockError as exc:
                log.debug("%s/%s: NOTIFY listener: %s", ctl.namespace, ctl.name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    finally:
        await conn.close()
