"""skiplock.api.side_by_side and skiplock.api.last_pages: reads run at once in the caller's
context; what a page listed last is kept within bounds and reused only where it still holds."""

from __future__ import annotations

import contextvars
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.api.last_pages import LastPages, still_to_count
from skiplock.api.side_by_side import ONE_BY_ONE, SideBySide, discard

REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


def test_reads_run_at_once_and_see_the_callers_context() -> None:
    reads = SideBySide(3)
    together = threading.Barrier(3, timeout=10)  # broken, and raising, unless all 3 run at once

    def read(i: int) -> tuple[int, str, str]:
        together.wait()
        return i, REQUEST.get(), threading.current_thread().name

    try:
        REQUEST.set("page 1")
        started = [reads.start(lambda i=i: read(i)) for i in range(3)]  # type: ignore[misc]
        REQUEST.set("page 2")  # a read started before sees the context it was started in
        got = [f.result(timeout=20) for f in started]
    finally:
        reads.close()
    assert [(i, ctx) for i, ctx, _ in got] == [(0, "page 1"), (1, "page 1"), (2, "page 1")]
    assert all(name.startswith("skiplock-read") for _, _, name in got)


def test_a_failed_read_raises_where_its_result_is_asked_for() -> None:
    reads = SideBySide(1)
    try:
        for runner in (reads, ONE_BY_ONE):
            failed = runner.start(lambda: 1 // 0)
            with pytest.raises(ZeroDivisionError):
                failed.result(timeout=10)
    finally:
        reads.close()


def test_one_by_one_runs_each_read_when_started_in_the_callers_thread() -> None:
    seen: list[str] = []

    def read() -> int:
        seen.append(threading.current_thread().name)
        return 7

    done = ONE_BY_ONE.start(read)
    assert seen == [threading.current_thread().name]  # before the result is asked for
    assert done.result() == 7


NAMES = st.lists(st.text(min_size=1, max_size=8), max_size=12)


@given(NAMES, NAMES)
def test_still_to_count_is_the_page_less_what_was_counted_in_page_order(
        page: list[str], counted: list[str]) -> None:
    left = still_to_count(page, counted)
    assert not set(left) & set(counted)  # nothing counted is counted again
    assert set(left) | set(counted) >= set(page)  # every queue of the page is counted
    rest = iter(page)  # in page order, each as often as the page lists it
    assert all(any(q == p for p in rest) for q in left)
    assert len(left) == sum(1 for q in page if q not in counted)


def test_last_pages_keeps_the_newest_pages_and_windows_within_bounds() -> None:
    kept = LastPages(pages=2, windows=1)
    assert kept.page("a") is None and kept.finished(30) is None
    kept.remember("a", ["q1"], 30, ["f1"])
    kept.remember("b", ["q2"], 60, ["f2"])
    assert kept.page("a") == ("q1",) and kept.finished(30) is None  # one window kept
    assert kept.finished(60) == ("f2",)
    kept.remember("a", ["q3"], 60, ["f3"])  # "a" is now the newest: "b" goes next
    kept.remember("c", [], 60, [])
    assert kept.page("b") is None
    assert (kept.page("a"), kept.page("c")) == (("q3",), ())
    assert kept.finished(60) == ()


def test_a_discarded_read_that_has_not_started_never_runs_and_a_failed_one_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    reads = SideBySide(1)
    gate, running, fail = threading.Event(), threading.Event(), threading.Event()
    ran: list[str] = []

    def failing_read() -> int:
        running.set()
        fail.wait(10)
        return 1 // 0

    try:
        busy = reads.start(lambda: gate.wait(10))  # holds the one thread
        queued = reads.start(lambda: ran.append("queued"))
        discard(queued, None)
        failing = reads.start(failing_read)
        gate.set()
        busy.result(timeout=10)
        assert running.wait(10)
        with caplog.at_level("DEBUG", logger="skiplock.api"):
            discard(failing)  # already running: it cannot be stopped, its failure is logged
            logged = threading.Event()  # callbacks run in order: this one after the log's
            failing.add_done_callback(lambda _: logged.set())
            fail.set()
            assert logged.wait(10)
            assert isinstance(failing.exception(timeout=10), ZeroDivisionError)
    finally:
        reads.close()
    assert queued.cancelled() and ran == []
    assert "a read whose result was not wanted failed: integer division" in caplog.text
