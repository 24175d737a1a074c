"""The write connection is cut while claims still work: outcomes (and lease renewals) cannot be
written, but the claim connection would happily go on claiming.

Mitigation: backpressure. Claiming pauses while as many outcomes wait to be written as the
worker runs at once, so the runs a worker holds stay bounded (<= 2 x concurrency) instead of
growing with every claim; the health check fails once the oldest waiting outcome is older than
half a lease, and the registry row (beaten over the uncut claim connection) says so too. When
the link comes back every outcome is written, claiming resumes and the worker is healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from skiplock import Client, Worker
from tests.support.chaos import AUDIT_TABLE
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until
from tests.tasks import app

CONCURRENCY = 4
LEASE = 4.0
WORKER_ID = "backpressure:1:000001"
NOT_WRITTEN = "outcome(s) not written"


class InThread:
    """An in-process Worker on its own event loop in a thread, so the test can sample its state
    (and the database) while it runs."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="worker-under-test", daemon=True)

    def _serve(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.worker.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def start(self) -> None:
        self.thread.start()
        wait_until(lambda: self.loop is not None and self.worker.ready.is_set(), 30,
                   "the worker to be ready")

    def stop(self, timeout: float = 30) -> None:
        if self.loop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.worker.request_stop)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        assert self.error is None, repr(self.error)


def test_write_link_cut_pauses_claims_and_fails_health(database_url, audited, proxy,
                                                       caplog) -> None:
    sql = audited
    caplog.set_level(logging.INFO, logger="skiplock.worker")
    worker = Worker(app, database_url, concurrency=CONCURRENCY, lease_seconds=LEASE,
                    poll_interval=0.1, worker_id=WORKER_ID,
                    connection_urls={"write": proxy.url(database_url)})
    runner = InThread(worker)
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(6)]
    runner.start()
    try:
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] >= 3,
                   30, "a few jobs to succeed")
        proxy.disable()
        cut = time.monotonic()
        with Client(database_url) as c:  # direct: the producer is not behind the cut link
            ids += [c.enqueue("add", {"a": i, "b": 1}) for i in range(6, 60)]

        samples: list[dict[str, Any]] = []
        failing_at: float | None = None
        unhealthy_row: tuple[Any, ...] | None = None

        def sample() -> bool:
            nonlocal failing_at, unhealthy_row
            h = worker.health()
            ((running,),) = sql("SELECT count(*) FROM jobs WHERE state = 'running' "
                                "AND locked_by = %s", WORKER_ID)
            row = sql("SELECT healthy, pending_outcomes, oldest_pending_seconds, problem "
                      "FROM workers WHERE id = %s", WORKER_ID)
            samples.append({"t": time.monotonic() - cut, "owned": len(worker.state.owned),
                            "db_running": running, "health": h, "row": row[0] if row else None})
            not_written = any(NOT_WRITTEN in p for p in h.problems)
            # failing for exactly this reason when, and only when, the oldest waits > lease/2
            assert not_written == (h.oldest_pending_seconds is not None
                                   and h.oldest_pending_seconds > LEASE / 2), h
            if not_written and failing_at is None:
                failing_at = time.monotonic() - cut
            if row and row[0][0] is False and row[0][1] > 0 and unhealthy_row is None:
                unhealthy_row = row[0]
            return (time.monotonic() - cut >= 3 and failing_at is not None
                    and unhealthy_row is not None)

        wait_until(sample, 20, "health and the registry row to report the unwritten outcomes",
                   interval=0.05)
        max_owned = max(s["owned"] for s in samples)
        max_running = max(s["db_running"] for s in samples)
        note = (f"while cut ({samples[-1]['t']:.1f}s, {len(samples)} samples): max owned runs "
                f"{max_owned}, max running in the database {max_running}; health failing "
                f"{failing_at:.1f}s after the cut; registry row {unhealthy_row}")
        print(f"\n[backpressure] {note}")
        assert max_owned <= 2 * CONCURRENCY, note
        assert max_running <= 2 * CONCURRENCY, note
        assert "outcome(s) not written" in str(unhealthy_row[3]), note
        ((done_while_cut,),) = sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
        assert done_while_cut < len(ids), f"outcomes written through a cut link? {note}"
        assert any("claiming paused" in r.getMessage() for r in caplog.records), note

        proxy.enable()
        restored = time.monotonic()
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0]
                   == len(ids), 60, "every job to succeed once the link is back")
        wait_until(lambda: worker.health().healthy, 15, "the worker to be healthy again")
        wait_until(lambda: sql("SELECT healthy FROM workers WHERE id = %s", WORKER_ID)
                   == [(True,)], 15, "the registry row to be healthy again")
        recovered = time.monotonic() - restored
    finally:
        proxy.enable()
        runner.stop()
    assert any("claiming resumed" in r.getMessage() for r in caplog.records)
    reruns = sql("SELECT count(*) FROM jobs WHERE attempts > 1")[0][0]
    print(f"[backpressure] all {len(ids)} succeeded {recovered:.1f}s after the link came back; "
          f"{reruns} re-ran after their lease expired")
    assert_invariants(sql, ids, expected_jobs=len(ids),
                      expected_states=dict.fromkeys(ids, "succeeded"))
    assert {r[0]: r[1] for r in sql("SELECT job_id, result FROM results")} == {
        i: {"sum": n + 1} for n, i in enumerate(ids)}


def test_blackholed_write_link_keeps_claims_paused_and_health_failing(database_url, audited,
                                                                     proxy) -> None:
    """The write link swallows bytes instead of refusing them (a frozen server, a firewall
    that drops packets): each write attempt now hangs until the connection's deadline. The
    outcomes being written are still not written: claiming must stay paused and the health
    check failing for the whole outage, as for a refused link."""
    sql = audited
    # deadline 1 + 2 = 3 s per round trip (psycopg's cancellation adds up to 10 s to the first)
    worker = Worker(app, database_url, concurrency=CONCURRENCY, lease_seconds=LEASE,
                    poll_interval=0.1, worker_id=WORKER_ID, connect_timeout=1,
                    statement_timeout=2, connection_urls={"write": proxy.url(database_url)})
    runner = InThread(worker)
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(6)]
    runner.start()
    samples: list[tuple[float, int, int, bool]] = []
    try:
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] >= 3,
                   30, "a few jobs to succeed")
        toxic = proxy.add_toxic("timeout", stream="downstream", timeout=0)  # bytes vanish
        cut = time.monotonic()
        with Client(database_url) as c:
            ids += [c.enqueue("add", {"a": i, "b": 1}) for i in range(6, 60)]
        wait_until(lambda: worker.claimer.paused_for_outcomes, 10, "claiming to pause")
        ((paused_at,),) = sql("SELECT now()")

        def sample() -> bool:
            ((running,),) = sql("SELECT count(*) FROM jobs WHERE state = 'running' "
                                "AND locked_by = %s", WORKER_ID)
            samples.append((time.monotonic() - cut, len(worker.state.owned), running,
                            worker.health().healthy))
            return time.monotonic() - cut >= 20  # the first write times out after ~13 s

        wait_until(sample, 40, "20 s of outage", interval=0.1)
        ((claims,),) = sql(f"SELECT count(*) FROM {AUDIT_TABLE} WHERE new_state = 'running' "
                           "AND locked_by = %s AND at > %s", WORKER_ID, paused_at)
        ((burnt,),) = sql("SELECT coalesce(max(attempts), 0) FROM jobs")
        proxy.remove_toxic(toxic)
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0]
                   == len(ids), 60, "every job to succeed once the link is back")
    finally:
        with contextlib.suppress(Exception):
            proxy.clear()
        runner.stop()
    assert_invariants(sql, ids, expected_jobs=len(ids),
                      expected_states=dict.fromkeys(ids, "succeeded"))
    first_failing = next((i for i, s in enumerate(samples) if not s[3]), len(samples))
    healthy_after = [round(s[0], 1) for s in samples[first_failing:] if s[3]]
    note = (f"claims by the paused worker during the outage: {claims}; max attempts {burnt}; "
            f"max owned {max(s[1] for s in samples)}, max running "
            f"{max(s[2] for s in samples)}; reported healthy again at {len(healthy_after)} "
            f"samples after failing (first at {healthy_after[:3]} s)")
    print(f"\n[backpressure/blackhole] {note}")
    assert claims == 0, note
    assert not healthy_after, note
    assert max(s[2] for s in samples) <= 2 * CONCURRENCY, note
