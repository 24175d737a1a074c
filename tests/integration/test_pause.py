"""Pausing and resuming a queue with real worker processes and a real PostgreSQL.

The claim statement itself skips paused queues, so a worker that never heard the pause (its
LISTEN connection was down, or nobody sent a NOTIFY) claims nothing either; running jobs
finish; a resume wakes idle workers at once through NOTIFY. Names follow the rule for new
queues (skiplock.names); resume takes any name a queue column holds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from skiplock import Client
from skiplock.errors import InvalidArguments
from tests.conftest import ROOT
from tests.integration.failures.conftest import wait_workers_ready
from tests.support.chaos import executions, install_audit, read_marker, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import holds, wait_until

Sql = Callable[..., list[tuple[Any, ...]]]
# HTML, both quotes, an ampersand entity, a slash, non-Latin letters and an emoji
HOSTILE = "<b>q'\"&amp;/日本 🚀</b>"
# every kind of character a queue name may have, at the full length
ODD = ("Billing.v2:eu-west_1-" * 7)[:128]


def _states(sql: Sql, ids: list[int]) -> list[tuple[str, int]]:
    return [state_of(sql, j) for j in ids]


def test_paused_queue_is_not_claimed_even_without_any_notify(
        database_url: str, sql: Sql, spawn_worker: Callable[..., Any], tmp_path: Path) -> None:
    install_audit(sql)
    marker = tmp_path / "executions.txt"
    # Polls only once a minute: whatever runs promptly below was woken by a NOTIFY.
    w = spawn_worker("tests.tasks:app", "--queue", "default", "--queue", "other",
                     "--poll-interval", "60", "--concurrency", "30")
    wait_workers_ready(sql, 1)
    # Paused behind the worker's back: the row and no NOTIFY at all, exactly what a worker
    # that missed the notification sees.
    sql("INSERT INTO paused_queues (queue, paused_by) VALUES ('default', 'a silent test')")
    with Client(database_url) as c:
        held = [c.enqueue("tracked", {"marker": str(marker)}) for _ in range(20)]
        # Each insert NOTIFYs, so the worker claims over both queues in one statement. The
        # held jobs are older, so they would be claimed first were the pause not checked.
        others = [c.enqueue("tracked", {"marker": str(marker)}, queue="other") for _ in range(5)]
        wait_until(lambda: all(s == ("succeeded", 1) for s in _states(sql, others)), 30,
                   "the other queue's jobs")
        holds(lambda: all(s == ("queued", 0) for s in _states(sql, held)), 1.5,
              "the paused queue's jobs stay queued")
        assert {j for j, *_ in read_marker(marker)} == set(others)

        resumed = time.monotonic()
        assert c.resume_queue("default") is True
        wait_until(lambda: all(s == ("succeeded", 1) for s in _states(sql, held)), 30,
                   "the resumed queue's jobs")
        # The worker's last claim was for the other jobs a few seconds ago; its next poll is a
        # minute after that, so only the resume's NOTIFY can have woken it this soon.
        assert time.monotonic() - resumed < 10
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]
    assert executions(marker) == dict.fromkeys(held + others, 1)
    assert_invariants(sql, held + others, expected_states=dict.fromkeys(held + others, "succeeded"),
                      executions=executions(marker))
    assert w.terminate() == 0


def test_running_jobs_finish_when_the_queue_is_paused_mid_run(
        database_url: str, sql: Sql, spawn_worker: Callable[..., Any], tmp_path: Path) -> None:
    """Paused through the client (NOTIFY sent), on a queue with a 128-character name."""
    install_audit(sql)
    marker = tmp_path / "executions.txt"
    gate = tmp_path / "gate"
    w = spawn_worker("tests.tasks:app", "--queue", ODD, "--poll-interval", "0.2",
                     "--concurrency", "10")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        running = [c.enqueue("tracked", {"marker": str(marker), "hold": str(gate)},
                             queue=ODD) for _ in range(3)]
        wait_until(lambda: len(read_marker(marker)) == 3, 30, "three jobs to start")
        paused = c.pause_queue(ODD, "maintenance window")
        assert paused.newly_paused and paused.queue == ODD
        assert paused.paused_by is not None and paused.paused_by.startswith("client ")
        assert paused.paused_by.endswith(": maintenance window")
        waiting = [c.enqueue("tracked", {"marker": str(marker)}, queue=ODD)
                   for _ in range(5)]
        gate.touch()
        wait_until(lambda: all(s == ("succeeded", 1) for s in _states(sql, running)), 30,
                   "the running jobs to finish")
        # seven free slots, a poll every 0.2 s and the inserts' NOTIFYs: still no claim
        holds(lambda: all(s == ("queued", 0) for s in _states(sql, waiting)), 1.5,
              "jobs enqueued while paused stay queued")
        assert c.resume_queue(ODD) is True
        wait_until(lambda: all(s == ("succeeded", 1) for s in _states(sql, waiting)), 30,
                   "the waiting jobs once resumed")
    every = running + waiting
    assert executions(marker) == dict.fromkeys(every, 1)
    assert_invariants(sql, every, expected_states=dict.fromkeys(every, "succeeded"),
                      executions=executions(marker))
    assert w.terminate() == 0


def test_pause_twice_keeps_the_first_and_resume_says_when_not_paused(
        database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener, \
            Client(database_url) as c:
        listener.execute("LISTEN skiplock_control")
        listener.execute("LISTEN skiplock_jobs")
        first = c.pause_queue("mail", "first", by="ops")
        again = c.pause_queue("mail", "second", by="someone else")
        assert first.newly_paused and not again.newly_paused
        assert (again.paused_at, again.paused_by) == (first.paused_at, "ops: first")
        assert [(p.queue, p.paused_by) for p in c.paused_queues()] == [("mail", "ops: first")]
        assert c.resume_queue("mail") is True
        assert c.resume_queue("mail") is False
        assert c.resume_queue("never-paused") is False
        assert c.paused_queues() == []
        # one pause notification (the second pause changed nothing), one wake-up on resume
        notes = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    assert notes == [("skiplock_control", "pause:mail"), ("skiplock_jobs", "mail")]


@pytest.mark.parametrize("name", [ODD, "x" * 128, "0", "mail"])
def test_names_up_to_128_characters(database_url: str, name: str) -> None:
    with Client(database_url) as c:
        assert c.pause_queue(name).queue == name
        assert [p.queue for p in c.paused_queues()] == [name]
        assert c.resume_queue(name) is True


@pytest.mark.parametrize(("name", "reason", "words"), [
    ("x" * 129, None, "queue name is 129 characters long; at most 128"),
    ("", None, "queue name must not be empty"),
    (HOSTILE, None, "is not allowed: use letters, digits and"),
    ("a/b", None, "is not allowed"),
    (" mail", None, "is not allowed"),
    ("a\x00b", None, "is not allowed"),
    ("bad\udc80", None, "is not allowed"),
    ("ok", "r" * 501, "reason is 501 characters long; at most 500"),
    ("ok", "nul\x00", "reason must not contain NUL"),
])
def test_bad_names_and_reasons_are_refused_with_the_rule(
        database_url: str, sql: Sql, name: str, reason: str | None, words: str) -> None:
    with Client(database_url) as c, pytest.raises(InvalidArguments, match=re.escape(words)):
        c.pause_queue(name, reason)
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


@pytest.mark.parametrize(("name", "words"), [
    ("x" * 129, "queue name is 129 characters long; at most 128"),
    ("", "queue name must not be empty"),
    ("a\x00b", "queue name must not contain NUL"),
    ("bad\udc80", "lone surrogates"),
])
def test_resume_takes_any_name_a_queue_column_holds(database_url: str, sql: Sql, name: str,
                                                     words: str) -> None:
    # Paused by hand in SQL (or under an older rule): still resumable, whatever the name.
    sql("INSERT INTO paused_queues (queue) VALUES (%s)", HOSTILE)
    with Client(database_url) as c:
        assert c.resume_queue(HOSTILE) is True
        with pytest.raises(InvalidArguments, match=re.escape(words)):
            c.resume_queue(name)
    assert sql("SELECT count(*) FROM paused_queues") == [(0,)]


def _cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": database_url,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    return subprocess.run([sys.executable, "-m", "skiplock", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_pause_list_stats_resume(database_url: str, sql: Sql) -> None:
    sql("INSERT INTO jobs (queue, task) VALUES ('busy', 'noop')")
    out = _cli(database_url, "queue", "pause", "reports", "--reason", "db migration")
    assert out.returncode == 0, out.stderr
    assert out.stdout == ("queue reports paused: workers stop claiming from it; running jobs "
                          "finish\n")
    again = _cli(database_url, "queue", "pause", "reports")
    assert again.returncode == 0, again.stderr
    assert "queue reports was already paused (since " in again.stdout
    assert ": db migration); nothing changed" in again.stdout

    listed = _cli(database_url, "queue", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["queue"] == "reports" and row["paused_by"].startswith("cli ")
    assert row["paused_by"].endswith("@" + os.uname().nodename + ": db migration")
    table = _cli(database_url, "queue", "list").stdout.splitlines()
    assert table[0].split() == ["queue", "paused", "since", "paused", "by"]
    assert table[1].startswith("reports ") and table[1].endswith(": db migration")

    # a paused queue with no jobs at all still shows in stats
    stats = {s["queue"]: s for s in json.loads(_cli(database_url, "stats", "--json").stdout)}
    assert stats["reports"]["paused"] is True and stats["reports"]["runnable"] == 0
    assert stats["reports"]["paused_by"] == row["paused_by"]
    assert (stats["busy"]["paused"], stats["busy"]["paused_at"]) == (False, None)
    header, *rows = _cli(database_url, "stats").stdout.splitlines()
    column = header.split().index("paused")
    assert {r.split()[0]: r.split()[column] for r in rows} == {"busy": "no", "reports": "yes"}

    out = _cli(database_url, "queue", "resume", "reports")
    assert (out.returncode, out.stdout) == (0, "queue reports resumed: workers claim from it "
                                               "again\n")
    out = _cli(database_url, "queue", "resume", "reports")
    assert out.returncode == 2
    assert out.stderr == ("skiplock: error: queue reports was not paused; paused queues: "
                          "none\n")
    assert _cli(database_url, "queue", "list").stdout == "no queue is paused\n"
    out = _cli(database_url, "queue", "pause", "q" * 129)
    assert out.returncode == 2 and "at most 128" in out.stderr and out.stdout == ""
