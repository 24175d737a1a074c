"""Runs the worker's services; restarts one that fails, or fails the worker when it keeps failing.

A service's ``run()`` handles the failures it expects (the database going away) itself; anything
else reaches the supervisor, which logs the traceback and restarts the service with capped
backoff. More than ``max_restarts`` failures within ``window`` seconds means restarting does not
help: the supervisor calls ``on_fatal`` and the worker exits non-zero, so Kubernetes restarts the
pod instead of leaving a worker that claims jobs it can never finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from .. import metrics
from ..retry import reconnect_delay

log = logging.getLogger("skiplock.worker")


class Service(Protocol):
    name: str

    async def run(self) -> None:
        """Serve until the worker stops; raise only for the unexpected."""


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[str], None],
        is_stopping: Callable[[], bool],
        *,
        max_restarts: int = 5,
        window: float = 60.0,
    ) -> None:
        self.on_fatal = on_fatal
        self.is_stopping = is_stopping
        self.max_restarts = max_restarts
        self.window = window
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # service name -> why it is not running right now (restarting, or failed for good)
        self.down: dict[str, str] = {}
        self.restarts: dict[str, int] = {}
        self._failures: dict[str, deque[float]] = {}

    def start(self, service: Service) -> None:
        self.restarts.setdefault(service.name, 0)
        self.tasks[service.name] = asyncio.create_task(self._keep(service), name=service.name)

    def report(self, name: str, exc: BaseException) -> bool:
        """Count a failure of ``name``; False when it failed too often (the worker is failing)."""
        now = time.monotonic()
        failures = self._failures.setdefault(name, deque())
        failures.append(now)
        while failures and failures[0] < now - self.window:
            failures.popleft()
        metrics.SERVICE_FAILURES.labels(name).inc()
        if len(failures) > self.max_restarts:
            why = (
                f"service {name} failed {len(failures)} times in {self.window:.0f}s "
                f"(last: {type(exc).__name__}: {exc})"
            )
            self.down[name] = why
            log.critical("%s; stopping the worker so that it is restarted", why)
            self.on_fatal(why)
            return False
        return True

    async def _keep(self, service: Service) -> None:
        while True:
            try:
                await service.run()
                if self.is_stopping():
                    return
                raise RuntimeError(f"service {service.name} returned while the worker runs")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("service %s failed; restarting it", service.name, exc_info=True)
                if not self.report(service.name, exc):
                    return
                self.restarts[service.name] += 1
                self.down[service.name] = (
                    f"service {service.name} restarting after {type(exc).__name__}: {exc}"
                )
                await asyncio.sleep(reconnect_delay(len(self._failures[service.name])))
                self.down.pop(service.name, None)

    def problems(self) -> list[str]:
        return sorted(self.down.values())

    async def stop(self, grace: float) -> list[str]:
        """Cancel every service and wait up to ``grace`` seconds for them to end; returns
        the names of those that did not (each logged with where it is stuck). The worker's
        shutdown goes on without them: its last writes and releases must not wait for ever
        behind a service that ignores cancellation."""
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=grace)
        stuck = sorted(pending, key=lambda t: t.get_name())
        for task in stuck:
            log.error("service %s did not stop within %gs of being cancelled; shutting "
                      "down without it. It waits at:\n%s", task.get_name(), grace,
                      awaiting(task))
        return [t.get_name() for t in stuck]


def awaiting(task: asyncio.Task[None]) -> str:
    """Where a suspended task waits: its chain of awaits, outermost first (Task.get_stack
    shows the outermost frame of a coroutine only)."""
    lines: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and len(lines) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines) or "  (no frame)"
