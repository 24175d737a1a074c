"""This worker's row in the worker registry, and what its live peers can run.

Peers' tasks tell the executor whether a job this version cannot run has a live worker that
can (a rolling deploy), and tell the claimer which tasks to leave alone. The row carries the
health report, so /v1/workers shows a worker whose outcomes are not being written even when
its write connection is the part that is cut (the registry beats on the claim connection).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..app import App
from ..db import WorkerConnection
from .health import Health
from .loops import every
from .rollout import capable_peers
from .state import WorkerState

log = logging.getLogger("skiplock.worker")

# Rows of workers gone silent are kept this long for /v1/workers, then pruned.
KEEP_GONE_SECONDS = 3600.0
PRUNE_EVERY_SECONDS = 60.0
# Queued jobs of limited tasks that have no key yet (enqueued before the limit existed, or
# past the catalogue) are keyed this often: it scans the runnable index, so not per beat.
ADOPT_EVERY_SECONDS = 60.0


class Registry:
    name = "registry"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        app: App,
        queues: list[str],
        interval: float,
        health: Callable[[], Health],
    ) -> None:
        self.state = state
        self.db = db
        self.app = app
        self.queues = queues
        self.interval = interval
        self.health = health
        self._last_prune = float("-inf")
        self._last_adopt = float("-inf")

    async def register(self) -> None:
        await self.db.register_worker(
            self.state.worker_id,
            self.queues,
            {t.name: dict(t.params) for t in self.app.tasks.values()},
            self.state.concurrency,
            self.state.lease_seconds,
        )
        # Our limits into the catalogue: the newest definition a live worker declares wins,
        # for all workers at once (docs/limits.md, "rolling deploys").
        changed = await self.db.register_limits(
            {t.name: t.limits.as_json() for t in self.app.tasks.values()})
        if changed:
            log.info("task limits registered for %s", ", ".join(sorted(changed)))

    async def run(self) -> None:
        await every(self.interval, self.run_once, "registry", "registry heartbeat will be retried")

    async def run_once(self) -> int:
        """One heartbeat; returns the number of live peers."""
        health = self.health()
        beat = await self.db.worker_heartbeat(
            self.state.worker_id,
            {
                "running": len(self.state.executing),
                "pending_outcomes": health.pending_outcomes,
                "oldest_pending_seconds": health.oldest_pending_seconds,
                "healthy": health.healthy,
                "problem": "; ".join(health.problems)[:2000] or None,
            },
        )
        if not beat.registered:  # pruned while we were cut off for an hour: come back
            await self.register()
        self.state.peers = peers = beat.peers
        # Tasks we do not have, left to peers that serve every queue we serve (a peer on some
        # of them only: its jobs on the others would never be claimed, so those are judged
        # job by job instead).
        ours = set(self.queues)
        covering = {t for p in peers.values() if ours <= p.queues for t in p.tasks}
        self.state.skip_tasks = frozenset(covering - set(self.app.tasks))
        self.state.skip_ids.keep(
            lambda job: bool(capable_peers(job[0], job[2], job[1], peers, job[3]))
        )
        await self._refresh_limits()
        if time.monotonic() - self._last_prune > PRUNE_EVERY_SECONDS:
            self._last_prune = time.monotonic()
            await self.db.prune_workers(KEEP_GONE_SECONDS)
        return len(beat.peers)

    async def _refresh_limits(self) -> None:
        """Which tasks are limited, as stored (another worker's version may have declared a
        limit ours does not know): all of them leave the plain claim."""
        limited = await self.db.limited_tasks()
        self.state.limited_everywhere = frozenset(limited)
        self.state.limited_here = tuple(sorted(t for t in limited if t in self.app.tasks))
        if time.monotonic() - self._last_adopt <= ADOPT_EVERY_SECONDS:
            return
        self._last_adopt = time.monotonic()
        # a task no longer limited: its queued jobs lose their keys (the plain claim takes
        # only jobs without one, sql/queries.sql `claim`)
        unlimited = sorted(set(self.app.tasks) - set(limited))
        if unlimited and (freed := await self.db.unkey_unlimited(unlimited)):
            log.info("%d queued job(s) of tasks no longer limited lost their concurrency key",
                     freed)
        if self.state.limited_here:
            adopted, failed = await self.db.adopt_unkeyed(
                {t: limited[t] for t in self.state.limited_here}, self.queues)
            if adopted:
                log.info("%d queued job(s) of limited tasks given their concurrency key",
                         adopted)
            if failed:
                log.warning("%d queued job(s) of limited tasks failed: no concurrency key "
                            "can be computed for them (see their last_error)", failed)
