"""Thin kopf handlers: one poll loop per JobQueue runs the controller's poll in a thread of the
operator's own poll pool.

The loops are started and stopped from kopf's watch events, not kopf daemons: a daemon makes
kopf put a finalizer on every JobQueue, which then hangs in Terminating whenever the operator
is gone first (``kubectl delete -f deploy/`` deletes it all at once; Helm deletes the operator
before custom resources). Nothing here needs a finalizer: the worker Deployment goes with its
JobQueue through its owner reference.

Run with ``python -m skiplock_operator`` (adds liveness and metrics) or
``kopf run -m skiplock_operator.handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from skiplock.db import WorkerConnection
from skiplock.errors import SkiplockError

from . import metrics, schedule_handlers  # noqa: F401 (JobSchedules: kopf handlers)
from .controller import DEFAULT_POLL, QueueController
from .kube import Kube, api_client
from .leader import AlwaysLeader, Elector
from .resources import GROUP, PLURAL, VERSION
from .scaling import notify_can_change
from .settings import OperatorSettings

log = logging.getLogger("skiplock.operator")
# Back-off after an unexpected error (API server hiccup, write conflict), capped.
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
# How often a sleeping poll loop checks for a spec change, new jobs or a stop request.
TICK = 0.25
# NOTIFY-driven polls come at most this often, however fast jobs are inserted.
MIN_POLL_GAP = 1.0


@dataclass
class Live:
    """A JobQueue as its last watch event showed it, and whether its loop should stop."""

    body: dict[str, Any]
    stopped: asyncio.Event
    task: asyncio.Task[None] | None = None


@dataclass
class PollClock:
    """When a JobQueue's poll last ran to its end, and how stale that may get."""

    completed_at: float
    allowed: float


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    ours = OperatorSettings()
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.watch_connect_timeout
    # kopf's own short calls (finalizer and annotation patches) get our timeout too; its
    # default is 5 minutes.
    settings.networking.request_timeout = ours.kube_timeout
    settings.networking.connect_timeout = ours.kube_timeout
    # Our own Lease decides who acts (leader.py); kopf's peering objects are not needed.
    settings.peering.standalone = True
    if ours.namespaces:
        # Named namespaces need no discovery, and with namespaced Roles kopf's namespace
        # listing is forbidden: it retried it 9 times (about 55 s) before watching a single
        # JobQueue, so a restarted replica, or a standby that took the Lease meanwhile, was
        # blind for a minute. Without scanning kopf watches exactly these namespaces at once
        # (a CRD installed after the operator started then needs a restart to be seen).
        settings.scanning.disabled = True
    # Keep kopf's bookkeeping in our own annotations and finalizer, not in status (the
    # status schema is ours and the API server would drop unknown fields).
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    memo.settings = ours
    api = api_client()
    memo.kube = Kube(api, timeout=ours.kube_timeout)
    # Shared by every per-resource memo (they are shallow copies of this one).
    memo.running = set()
    memo.polls = {}
    memo.loops = {}
    # Polls block (the kubernetes client, psycopg): one thread each, in a pool of our own,
    # so a JobQueue stuck on an unreachable database never waits for another's thread and
    # kopf's own executor stays free.
    memo.pool = ThreadPoolExecutor(max_workers=ours.max_poll_threads,
                                   thread_name_prefix="skiplock-poll")
    if ours.leader_election:
        # Lease calls get a shorter timeout: one must end well within the renew deadline.
        lease_kube = Kube(api, timeout=max(1.0, ours.renew_deadline_seconds / 2))
        memo.elector = Elector(lease_kube, ours.lease_name, ours.resolved_lease_namespace(),
                               ours.identity, ours.lease_duration_seconds,
                               ours.renew_deadline_seconds, ours.retry_period_seconds)
        memo.elector_task = asyncio.create_task(memo.elector.run())
    else:
        memo.elector = AlwaysLeader()
        memo.elector_task = None


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    loops: dict[str, Live] = getattr(memo, "loops", {})
    await asyncio.gather(*(_stop(live) for live in loops.values()))
    loops.clear()
    task = getattr(memo, "elector_task", None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await memo.elector.stop(release=True)
    pool = getattr(memo, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials, else the kubeconfig. Replaces kopf's default chain, whose
    client-library step reads a KUBECONFIG fixed at import time and logs a false error."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def stale_polls(polls: dict[str, PollClock], now: float) -> list[str]:
    """JobQueues whose last completed poll is older than allowed (pure, for the probe)."""
    return sorted(k for k, c in polls.items() if now - c.completed_at > c.allowed)


@kopf.on.probe(id="jobqueues", errors=kopf.ErrorsMode.PERMANENT)
def probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The liveness answer: fails (HTTP 500) when a JobQueue's last completed poll is older
    than max(3 x pollInterval, 60 s): a poll hung on a call without answer (the timeouts
    should end any), or a loop that died. Restarting the pod is the cure for both."""
    polls: dict[str, PollClock] = getattr(memo, "polls", {})
    stale = stale_polls(polls, time.monotonic())
    if stale:
        raise kopf.PermanentError(f"no completed poll within the allowed time for: "
                                  f"{', '.join(stale[:20])}")
    return {"count": len(getattr(memo, "running", ())),
            "leader": bool(getattr(memo, "elector", AlwaysLeader()).is_leader)}


def allowed_staleness(settings: OperatorSettings, interval: float) -> float:
    return max(settings.liveness_poll_factor * interval, settings.liveness_min_seconds)


# The finalizer earlier versions (kopf daemons) put on JobQueues; removed when seen.
OLD_FINALIZER = f"{GROUP}/operator"


@kopf.on.event(GROUP, VERSION, PLURAL)
async def jobqueue_event(event: kopf.RawEvent, body: kopf.Body, name: str,
                         namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Start, update or stop the JobQueue's poll loop from each watch event (the initial
    listing after a restart comes as events too)."""
    assert namespace is not None  # JobQueue is a namespaced resource
    key = f"{namespace}/{name}"
    loops: dict[str, Live] = memo.loops
    live = loops.get(key)
    if event.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
        if live is not None:
            del loops[key]
            await _stop(live)
        if OLD_FINALIZER in (body.metadata.get("finalizers") or []):
            await _drop_old_finalizer(memo, namespace, name, body)
        return
    if OLD_FINALIZER in (body.metadata.get("finalizers") or []) and memo.elector.is_leader:
        await _drop_old_finalizer(memo, namespace, name, body)
    if live is not None and live.task is not None and not live.task.done():
        live.body = _plain(body)  # the loop reads the newest spec before each poll
        return
    live = Live(_plain(body), asyncio.Event())
    live.task = asyncio.create_task(jobqueue(name, namespace, live, memo),
                                    name=f"jobqueue {key}")
    loops[key] = live


async def _stop(live: Live) -> None:
    live.stopped.set()
    if live.task is not None:
        try:
            await asyncio.wait_for(asyncio.shield(live.task), 5.0)
        except TimeoutError:
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live.task


async def _drop_old_finalizer(memo: kopf.Memo, namespace: str, name: str,
                              body: kopf.Body) -> None:
    finalizers = list(body.metadata.get("finalizers") or [])
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(memo.pool, memo.kube.remove_jobqueue_finalizer,
                                   namespace, name, finalizers, OLD_FINALIZER)
    except Exception as exc:  # the next event tries again
        log.warning("%s/%s: could not remove the old finalizer %s: %s", namespace, name,
                    OLD_FINALIZER, exc)


async def jobqueue(name: str, namespace: str, live: Live, memo: kopf.Memo) -> None:
    kube: Kube = memo.kube
    settings: OperatorSettings = memo.settings
    stopped = live.stopped
    ctl = QueueController(kube, settings, namespace, name)
    ctl.still_leading = lambda: bool(memo.elector.is_leader)
    key = f"{namespace}/{name}"
    loop = asyncio.get_running_loop()
    failures = 0
    memo.running.add(key)
    memo.polls[key] = PollClock(time.monotonic(), allowed_staleness(settings, DEFAULT_POLL))
    log.info("%s: poll loop started (%s)", key,
             "leader" if memo.elector.is_leader else "standing by")
    wake = asyncio.Event()
    listener: asyncio.Task[None] | None = None
    listening: tuple[str, str] | None = None
    try:
        while not stopped.is_set():
            snapshot = live.body
            wake.clear()
            leading = memo.elector.is_leader
            try:
                interval = await loop.run_in_executor(memo.pool, ctl.poll, snapshot, leading)
                failures = 0
                memo.polls[key] = PollClock(time.monotonic(),
                                            allowed_staleness(settings, interval))
                target = ctl.listen_target
                # A standby is never woken early: no LISTEN connection for it.
                if leading and target is not None and target[:2] != listening:
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
            except Exception as exc:
                # A timeout (urllib3's, after kube_timeout), a reset connection, a bug.
                interval = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                metrics.RECONCILE_ERRORS.labels(namespace, name, type(exc).__name__).inc()
                log.warning("%s/%s: poll failed (%s: %s); retrying in %.0fs", namespace, name,
                            type(exc).__name__, exc, interval, exc_info=log.isEnabledFor(
                                logging.DEBUG))
            await _sleep(interval or DEFAULT_POLL, live, snapshot, wake, memo, leading)
    finally:
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        memo.running.discard(key)
        memo.polls.pop(key, None)
        try:
            await loop.run_in_executor(memo.pool, ctl.close)
        except RuntimeError:  # the pool is shut down already (the operator is stopping)
            ctl.close()
        metrics.forget(namespace, name, ctl.condition_types())


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {"metadata": dict(body.metadata), "spec": dict(body.spec),
            "status": dict(body.status)}


async def _sleep(seconds: float, live: Live, seen: dict[str, Any], wake: asyncio.Event,
                 memo: kopf.Memo, leading: bool) -> None:
    """Sleep until the next poll, but wake early for a spec change (new generation), for new
    jobs in our queues (NOTIFY; at most one early poll per MIN_POLL_GAP), a change of
    leadership (a new leader acts at once) or a stop."""
    started = time.monotonic()
    deadline = started + seconds
    generation = seen["metadata"].get("generation")
    while not live.stopped.is_set() and time.monotonic() < deadline:
        if live.body["metadata"].get("generation") != generation:
            return
        if memo.elector.is_leader != leading:
            return
        if wake.is_set() and time.monotonic() - started >= MIN_POLL_GAP:
            return
        await asyncio.sleep(min(TICK, max(0.0, deadline - time.monotonic())))


async def _listen(ctl: QueueController, url: str, schema: str, wake: asyncio.Event) -> None:
    """LISTEN for the insert trigger's NOTIFY (channel "<schema>_jobs", payload = queue) and
    wake the poll loop when that can change the decision (scaling.notify_can_change): scale
    from zero then takes about a second instead of a poll interval (a KEDA complaint), while
    a stream of inserts into a queue already at maxReplicas costs no poll at all. A pause
    ("<schema>_control", payload "pause:<queue>") wakes it too, so the status says Paused at
    once; a resume already NOTIFYs on "<schema>_jobs". Polling stays the source of truth;
    this only hastens it, so its failures are retried quietly (the poll loop reports
    outages)."""
    conn = WorkerConnection(url, schema=schema, connect_timeout=5, statement_timeout=5,
                            application_name="skiplock-operator-listen")
    delay = 1.0
    try:
        while True:
            try:
                async for channel, payload in conn.listen(f"{schema}_jobs",
                                                          f"{schema}_control"):
                    delay = 1.0
                    kind = "insert"
                    if channel == f"{schema}_control":
                        # other control messages (cancel:<id>) change no replica count
                        if not payload.startswith("pause:"):
                            continue
                        kind, payload = "pause", payload.removeprefix("pause:")
                    target = ctl.listen_target
                    if target is None or payload not in target[2] or wake.is_set():
                        continue
                    if ctl.leading and notify_can_change(
                            kind, payload, ctl.last_policy, ctl.last_replicas,
                            ctl.paused_queues):
                        wake.set()
            except SkiplockError as exc:
                log.debug("%s/%s: NOTIFY listener: %s", ctl.namespace, ctl.name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    finally:
        await conn.close()
