"""LISTEN for new jobs on this worker's queues and for job control (cancel requests, pauses);
polling covers whatever it misses (the claimer polls for jobs, the cancel watcher for cancels).

Behind a transaction pooler with no direct URL for LISTEN there is nothing to listen on: the
listener says so once and the worker polls (poll-only mode)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from .. import metrics
from ..db import ListenUnavailable, WorkerConnection
from ..errors import DatabaseUnavailable
from ..retry import reconnect_delay
from .state import WorkerState

log = logging.getLogger("skiplock.worker")


class Listener:
    name = "listener"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        schema: str,
        queues: list[str],
        poll_interval: float,
        on_cancel_notice: Callable[[], object] = lambda: None,
    ) -> None:
        self.state = state
        self.db = db
        self.jobs_channel = f"{schema}_jobs"
        self.control_channel = f"{schema}_control"
        self.queues = set(queues)
        self.poll_interval = poll_interval
        # A NOTIFY only says "look": the cancel watcher reads the stored request (anyone who
        # can connect can send a NOTIFY; it must not stop a job by itself).
        self.on_cancel_notice = on_cancel_notice

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.run_once()
                failures = 0
            except ListenUnavailable as exc:
                log.warning(
                    "%s: polling for new jobs and cancel requests every %.1fs instead. Give the "
                    "worker a direct URL for LISTEN (SKIPLOCK_LISTEN_URL) for wake-ups at once.",
                    exc, self.poll_interval)
                self.state.listening = False
                await asyncio.Event().wait()  # for the worker's life: no error loop
            except DatabaseUnavailable as exc:
                self.state.listening = False
                failures += 1
                metrics.DB_ERRORS.labels("listen").inc()
                log.warning("%s; polling every %.1fs until LISTEN is back", exc,
                            self.poll_interval)
                await asyncio.sleep(reconnect_delay(failures))
                # Jobs inserted while we were deaf sent no notification we could hear.
                self.state.wake.set()
            finally:
                self.state.listening = False

    def _listening(self) -> None:
        self.state.listening = True
        self.on_cancel_notice()  # requests made while we were deaf sent nothing we heard

    async def run_once(self, max_seconds: float | None = None) -> int:
        """LISTEN and act on each notification, until the link dies (DatabaseUnavailable) or
        ``max_seconds`` pass; returns the notifications acted on."""
        acted = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                async for channel, payload in self.db.listen(
                    self.jobs_channel, self.control_channel, on_listening=self._listening
                ):
                    if channel == self.jobs_channel:
                        if payload in self.queues:
                            acted += 1
                            self.state.wake.set()
                    elif self._control(payload):
                        acted += 1
        return acted

    def _control(self, payload: str) -> bool:
        what, _, arg = payload.partition(":")
        if what == "cancel":
            # ASCII digits of a bigint only ('²'.isdigit() is True, int('²') raises)
            if not (arg.isascii() and arg.isdigit() and len(arg) <= 19):
                return False
            run = self.state.owned.get(int(arg))
            if run is None or not run.executing:
                return False  # not ours (another worker's job, or finished meanwhile)
            self.on_cancel_notice()
            return True
        if what == "pause" and arg in self.queues:
            log.info("queue %s paused: no more claims from it (running jobs finish)", arg)
            return True
        return False
