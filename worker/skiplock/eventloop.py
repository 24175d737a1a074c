"""Which asyncio event loop the worker runs: uvloop when it is installed (a default dependency
on Linux), the standard one otherwise, or as SKIPLOCK_EVENT_LOOP / --event-loop says.

uvloop (libuv) spends less CPU per callback, per socket wait and per timer than the standard
selector loop, which is most of what a worker's event loop does per job (docs/benchmarks.md,
"Worker start-up and uvloop"). Both are asyncio loops: the worker's code, signal handlers
and psycopg's async connections run unchanged on either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from .errors import ConfigurationError

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
T = TypeVar("T")


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop ``choice`` names (None: asyncio's own). ``auto`` takes uvloop
    when it is importable; ``uvloop`` without it is a ConfigurationError, not a quiet
    fallback: whoever asked for it should learn that it is not what runs."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "SKIPLOCK_EVENT_LOOP=uvloop (--event-loop uvloop) but uvloop is not installed: "
                "pip install uvloop, or use auto or asyncio") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio`` (or whichever package's loop runs), for the start-up log."""
    return type(loop).__module__.split(".")[0]


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names (same shutdown: remaining tasks
    cancelled, async generators and the default executor closed)."""
    factory = loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
