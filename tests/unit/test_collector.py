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


def test_settle_for_work_freezes_start_up() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out)
    assert got["before"][0] == 0
    assert got["frozen"] > 1000  # the interpreter's and skiplock's own objects, at least
    assert got["threshold"] == got["before"][1]  # how often passes run is left as it was


CLI_SCRIPT = """
import gc, os, sys
from skiplock import cli, eventloop
from skiplock import App
from skiplock.worker import Worker
Worker(App(), os.environ["SKIPLOCK_DATABASE_URL"])  # embedding one changes nothing
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
    assert frozen == 0
    frozen, young_running = map(int, lines["running"].split())
    assert frozen > 1000 and young_running == young


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


class _Cycle:
    def __init__(self) -> None:
        self.me = self  # freed by the cyclic collector only


def _cycles_alive() -> int:
    return sum(1 for o in gc.get_objects(generation=0) + gc.get_objects(generation=1)
               if type(o) is _Cycle)


def test_overlapping_calls_that_never_all_end_still_collect_cycles(
        collector_restored: None) -> None:
    """Producers whose calls overlap without a gap keep the collector disabled throughout:
    the pass due at each call's end still runs, so cyclic garbage (anyone's) stays bounded."""
    gc.enable()
    gc.collect()
    with collector.paused():  # one producer's call, open for the whole test
        for _ in range(200):
            with collector.paused():  # another producer's calls, back to back
                for _ in range(1000):
                    _Cycle()
            assert not gc.isenabled()
        alive = _cycles_alive()
    # without the catch-up all 200,000 would be alive; with it, at most what one call made
    # plus a young generation's worth, waiting for the next pass
    assert alive <= 2 * 1000 + gc.get_threshold()[0], alive
    assert gc.isenabled()


def test_a_child_forked_during_a_pause_gets_its_collector_back(collector_restored: None) -> None:
    gc.enable()
    with collector.paused():
        pid = os.fork()
        if pid == 0:  # the child: the pause's block never ends here
            os._exit(0 if gc.isenabled() else 1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()
