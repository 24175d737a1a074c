"""skiplock/eventloop.py: which loop each SKIPLOCK_EVENT_LOOP value runs, and uvloop asked
for but missing is an error, not a quiet fallback."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from skiplock import eventloop
from skiplock.errors import ConfigurationError
from tests.conftest import ROOT


async def _running() -> str:
    return eventloop.loop_name(asyncio.get_running_loop())


def test_asyncio_is_the_standard_loop() -> None:
    assert eventloop.loop_factory("asyncio") is None
    assert eventloop.run(_running(), "asyncio") == "asyncio"


def test_auto_and_uvloop_take_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert eventloop.run(_running(), "auto") == "uvloop"
    assert eventloop.run(_running(), "uvloop") == "uvloop"


def test_run_returns_and_raises_like_asyncio_run() -> None:
    async def fails() -> None:
        raise KeyError("x")

    async def answers() -> int:
        return 42

    for choice in ("auto", "asyncio"):
        assert eventloop.run(answers(), choice) == 42
        with pytest.raises(KeyError):
            eventloop.run(fails(), choice)


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused() -> None:
    script = (
        "import sys\n"
        "sys.modules['uvloop'] = None  # what an uninstalled package looks like to import\n"
        "from skiplock import eventloop\n"
        "from skiplock.errors import ConfigurationError\n"
        "assert eventloop.loop_factory('auto') is None\n"
        "try:\n"
        "    eventloop.loop_factory('uvloop')\n"
        "except ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "worker")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "SKIPLOCK_EVENT_LOOP=uvloop (--event-loop uvloop) but uvloop is not installed: "
        "pip install uvloop, or use auto or asyncio")


def test_the_setting_takes_only_the_three_names() -> None:
    from skiplock.cli_settings import validated
    from skiplock.settings import Settings

    assert validated(Settings, {"event_loop": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigurationError, match="SKIPLOCK_EVENT_LOOP"):
        validated(Settings, {"event_loop": "trio"})
