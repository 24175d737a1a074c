"""A queue paused while a worker's link to Postgres is cut (Toxiproxy): the pause NOTIFY never
reaches it, and it still claims nothing from that queue once the link is back, because the
claim statement itself checks the paused queues."""

from __future__ import annotations

from skiplock import Client
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.support.chaos import executions, read_marker, state_of, worker_connections
from tests.support.invariants import assert_invariants
from tests.support.waits import holds, wait_until


def test_pause_sent_while_the_worker_was_cut_off_is_honoured(database_url, audited, spawn_worker,
                                                             proxy, marker) -> None:
    sql = audited
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--queue", "default", "--queue", "other",
                     env={"SKIPLOCK_DATABASE_URL": proxy.url(database_url)}, name="deaf")
    wait_workers_ready(sql, 1)
    proxy.disable()
    # Toxiproxy closes both ends: the worker's backends (its LISTEN among them) are gone, so
    # nothing can deliver the notifications sent now.
    wait_until(lambda: worker_connections(sql, "listen") == 0
               and worker_connections(sql, "claim") == 0, 30, "the worker's sessions to end")
    with Client(database_url) as c:
        assert c.pause_queue("default", "while the worker is cut off").newly_paused
        held = [c.enqueue("tracked", {"marker": str(marker)}) for _ in range(10)]
        proxy.enable()
        wait_workers_ready(sql, 1)
        # Claimed in the same statement as the older held jobs, which it would take first
        # were the pause not checked there.
        others = [c.enqueue("tracked", {"marker": str(marker)}, queue="other") for _ in range(3)]
        wait_until(lambda: all(state_of(sql, j) == ("succeeded", 1) for j in others), 30,
                   "the other queue's jobs")
        holds(lambda: all(state_of(sql, j) == ("queued", 0) for j in held), 1.5,
              "the paused queue's jobs stay queued")
        assert {r[0] for r in read_marker(marker)} == set(others)
        assert c.resume_queue("default")
        wait_until(lambda: all(state_of(sql, j) == ("succeeded", 1) for j in held), 30,
                   "the held jobs once resumed")
    every = held + others
    assert executions(marker) == dict.fromkeys(every, 1)
    assert_invariants(sql, every, expected_states=dict.fromkeys(every, "succeeded"),
                      executions=executions(marker))
    w.terminate()
