"""skiplock/collector.py: the settings `skiplock worker` runs with (in a process of their own:
a test must not change the collector of the test run), and the bulk enqueue's pause."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock import collector

SCRIPT = """
import gc, json
from skiplock import collector
before = (gc.get_freeze_count(), gc.get_threshold())
collector.settle_for_work()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()}))
"""


def test_settle_for_work_freezes_start_up_and_spaces_young_passes() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out)
    assert got["before"][0] == 0
    assert got["frozen"] > 1000  # the interpreter's and skiplock's own objects, at least
    default_young, middle, old = got["before"][1]
    assert got["threshold"] == [10_000, middle, old]
    assert default_young < 10_000


CLI_SCRIPT = """
import gc, os, sys
from skiplock import cli, eventloop
print("imported", gc.get_freeze_count(), gc.get_threshold()[0], flush=True)

def stop_here(main, choice):
    main.close()  # the worker's coroutine, never started
    print("running", gc.get_freeze_count(), gc.get_threshold()[0], flush=True)
    os._exit(0)

eventloop.run = stop_here
sys.argv = ["skiplock", "worker", "skiplock.demo_tasks:app"]
cli.main()
"""


def test_the_cli_worker_settles_the_collector_before_it_runs() -> None:
    """`skiplock worker` settles it once start-up is done, before its loop runs; importing
    skiplock does not (a program that embeds a Worker keeps its own settings)."""
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, "-c", CLI_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=60)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines.get("imported") is not None, out.stderr
    frozen, young = map(int, lines["imported"].split())
    assert frozen == 0 and young < 10_000
    frozen, young = map(int, lines["running"].split())
    assert frozen > 1000 and young == 10_000


@pytest.fixture
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_blocks_cyclic_passes_and_restores_the_collector(collector_restored: None) -> None:
    gc.enable()
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()  # someone else's choice: kept
    with collector.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_paused_restores_after_an_exception(collector_restored: None) -> None:
    gc.enable()
    with pytest.raises(ZeroDivisionError), collector.paused():
        1 / 0
    assert gc.isenabled()


@given(st.lists(st.integers(min_value=0, max_value=5), max_size=40), st.booleans())
def test_overlapping_pauses_end_as_they_began(opens: list[int], enabled: bool) -> None:
    """Blocks opened and closed in any interleaving (threads, tasks): the collector is off
    while any is open, and as it was before the first once the last has closed."""
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        stacks: list[contextlib.ExitStack] = []
        for n in opens:
            if n < len(stacks):  # close the n-th open block (not necessarily the newest)
                stacks.pop(n).close()
            else:
                stack = contextlib.ExitStack()
                stack.enter_context(collector.paused())
                stacks.append(stack)
            assert gc.isenabled() == (enabled and not stacks)
        while stacks:
            stacks.pop(0).close()
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_pauses_in_threads_end_with_the_collector_enabled(collector_restored: None) -> None:
    gc.enable()
    barrier = threading.Barrier(8)

    def bulk() -> None:
        for i in range(200):
            with collector.paused():
                if i == 0:
                    barrier.wait()  # all eight blocks open at once
                assert not gc.isenabled()

    threads = [threading.Thread(target=bulk) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gc.isenabled()
