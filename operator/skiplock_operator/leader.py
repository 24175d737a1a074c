"""Leader election on a coordination.k8s.io/v1 Lease, the client-go way, in a small loop.

Every ``retry_period`` the elector reads the Lease and then renews it (we hold it), takes it
(it is free, or its holder has not renewed for ``lease_duration`` as timed by *our* clock:
a holder's wrong clock changes nothing) or follows. Writes carry the resourceVersion read, so
two candidates racing for a free Lease cannot both win (one gets 409 Conflict). A leader that
could not renew for ``renew_deadline`` stops leading by itself — before anyone else may take
the Lease, since renew_deadline < lease_duration — even if this loop is stuck.

``assess`` is the pure part; ``Elector.step`` one round of I/O; ``Elector.run`` the loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from kubernetes.client.exceptions import ApiException

from . import metrics
from .kube import Forbidden, Kube

log = logging.getLogger("skiplock.operator.leader")
Action = Literal["create", "renew", "take", "follow"]


@dataclass(frozen=True)
class Observed:
    """The Lease's record as last seen, and when (our monotonic clock) it last changed."""

    holder: str | None
    renew_time: str | None
    transitions: int
    seen_at: float


def micro_time(now: dt.datetime) -> str:
    """The MicroTime form the API server accepts (RFC 3339 with microseconds)."""
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def assess(lease: dict[str, Any] | None, me: str, observed: Observed | None, now: float,
           duration: float) -> tuple[Action, Observed | None]:
    """What to do with ``lease`` (None: there is none), and the record as now observed."""
    if lease is None:
        return "create", None
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or None
    renew_time = spec.get("renewTime")
    transitions = int(spec.get("leaseTransitions") or 0)
    if observed is None or (observed.holder, observed.renew_time) != (holder, renew_time):
        observed = Observed(holder, renew_time, transitions, now)  # it moved: the holder lives
    if holder == me:
        return "renew", observed
    if holder is None or now - observed.seen_at >= duration:
        return "take", observed
    return "follow", observed


def lease_body(name: str, namespace: str, me: str, now: dt.datetime, duration: float,
               transitions: int, acquired: bool, old: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = dict((old or {}).get("spec") or {})
    spec.update({"holderIdentity": me, "leaseDurationSeconds": max(1, round(duration)),
                 "renewTime": micro_time(now), "leaseTransitions": transitions})
    if acquired:
        spec["acquireTime"] = micro_time(now)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if old is not None:
        meta["resourceVersion"] = (old.get("metadata") or {}).get("resourceVersion")
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": spec}


class Elector:
    def __init__(self, kube: Kube, name: str, namespace: str, identity: str,
                 lease_duration: float = 15, renew_deadline: float = 10,
                 retry_period: float = 2, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.kube, self.name, self.namespace, self.identity = kube, name, namespace, identity
        self.lease_duration, self.renew_deadline = lease_duration, renew_deadline
        self.retry_period = retry_period
        self.clock, self.wall = clock, wall
        self._observed: Observed | None = None
        self._renewed_at: float | None = None
        self.problem: str | None = None   # the last error, for the log and tests
        self.paused = False   # tests: stop renewing without releasing (a frozen leader)
        # Its own thread: a pool full of stuck polls must never delay a renewal.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skiplock-lease")
        self._was_leader = False

    @property
    def is_leader(self) -> bool:
        return (self._renewed_at is not None
                and self.clock() - self._renewed_at < self.renew_deadline)

    def step(self) -> bool:
        """One round: read, then renew, take or follow. True if we lead afterwards."""
        now = self.clock()
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            # what we saw is stamped when the answer came (as client-go does): stamped before
            # a slow GET, a follower would count part of the holder's lease as already gone
            seen = self.clock()
            action, self._observed = assess(lease, self.identity, self._observed, seen,
                                            self.lease_duration)
            if action == "follow":
                self._renewed_at = None
            else:
                transitions = self._observed.transitions if self._observed else 0
                if action == "take":
                    transitions += 1
                body = lease_body(self.name, self.namespace, self.identity, self.wall(),
                                  self.lease_duration, transitions,
                                  acquired=action != "renew", old=lease)
                if lease is None:
                    self.kube.create_lease(self.namespace, body)
                else:
                    self.kube.replace_lease(self.namespace, self.name, body)
                self._renewed_at = now
                if action != "renew":
                    log.info("%s took the lease %s/%s", self.identity, self.namespace,
                             self.name)
            self.problem = None
        except ApiException as exc:
            # 409: someone else wrote first (a race for a free Lease, or it was renewed)
            self._problem(f"lease {self.namespace}/{self.name}: HTTP {exc.status}",
                          quiet=exc.status == 409)
        except Forbidden as exc:
            self._problem(str(exc))
        except Exception as exc:  # a timeout, a reset connection: retry next round
            self._problem(f"lease {self.namespace}/{self.name}: {type(exc).__name__}")
        return self.is_leader

    def _problem(self, text: str, quiet: bool = False) -> None:
        # Said once per kind of problem, not every retry period.
        if text != self.problem and not quiet:
            log.warning("leader election: %s", text)
        self.problem = text

    def release(self) -> None:
        """On a clean stop: hand the Lease over at once instead of after its duration."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = self.kube.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                body = dict(lease)
                body["spec"] = {**lease["spec"], "holderIdentity": None,
                                "leaseDurationSeconds": 1}
                self.kube.replace_lease(self.namespace, self.name, body)
        except (ApiException, Forbidden, OSError) as exc:
            log.warning("could not release the lease: %s", exc)

    def _note(self) -> None:
        leading = self.is_leader
        metrics.LEADER.set(1 if leading else 0)
        if leading != self._was_leader:
            self._was_leader = leading
            log.info("%s %s", self.identity, "is the leader" if leading else "is standing by")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.paused:
                    await loop.run_in_executor(self._pool, self.step)
                self._note()
                await asyncio.sleep(self.retry_period)
                self._note()   # the renew deadline may have passed meanwhile
        finally:
            metrics.LEADER.set(0)

    async def stop(self, release: bool = True) -> None:
        if release and not self.paused:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.release)
        self._pool.shutdown(wait=False)


class AlwaysLeader:
    """Leader election off (one replica): always leads."""

    is_leader = True
    problem: str | None = None
