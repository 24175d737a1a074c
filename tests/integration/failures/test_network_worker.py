"""Worker <-> Postgres network faults, injected by Toxiproxy on the real TCP link.

- The link drops during a claim (the claim committed, its answer never arrived): the job is not
  lost (the orphaned lease expires and it is re-claimed) and not double-claimed (the attempt
  that never reached the handler is never executed; each attempt claimed once).
- The link drops during a status update, both after the update committed (the retry is fenced)
  and before it reached the database for longer than the lease (another worker takes over; the
  stale outcome is rejected): never stuck, never a wrong outcome.
- Latency, connection resets, blackholes and a cut link on a worker running a batch: it reconnects
  and the batch ends with every invariant holding.
"""

from __future__ import annotations

import time
from pathlib import Path

from skiplock import Client
from tests.integration.failures.conftest import LEASE, WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, executions, read_marker, state_of, worker_connections
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

SLOW = 3000  # ms of one-way delay: long enough to cut the link while an answer is in flight


def _via(proxy, database_url: str) -> dict[str, str]:
    return {"SKIPLOCK_DATABASE_URL": proxy.url(database_url)}


def test_link_drops_during_claim(database_url, audited, spawn_worker, proxy, marker) -> None:
    sql = audited
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, env=_via(proxy, database_url), name="cut")
    wait_workers_ready(sql, 1)
    # Answers from Postgres now take 3 s to reach the worker.
    proxy.add_toxic("latency", stream="downstream", latency=SLOW)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker)})
    # The claim has committed in the database while its answer is still on the wire: cut it.
    wait_until(lambda: state_of(sql, job) == ("running", 1), 30, "the claim to commit")
    proxy.disable()
    assert read_marker(marker) == [], "the answer arrived before the cut; the fault missed"
    proxy.clear()  # link back, no latency

    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the job to succeed")
    trail = audit(sql, job)
    # Attempt 1 was claimed but never ran; its lease expired and the job was claimed again.
    assert [(t[0], t[1], t[2]) for t in trail] == [
        (None, "queued", 0), ("queued", "running", 1), ("running", "queued", 1),
        ("queued", "running", 2), ("running", "succeeded", 2)], trail
    assert trail[2][6] >= trail[1][5], "requeued before the orphaned lease expired"
    assert [(r[0], r[1]) for r in read_marker(marker)] == [(job, 2)], "ran other than once"
    assert "lease expired" in sql("SELECT errors->0->>'error' FROM jobs WHERE id = %s", job)[0][0]
    assert_invariants(sql, [job], expected_states={job: "succeeded"}, executions=executions(marker))
    w.terminate()


def test_link_drops_after_status_update_committed(database_url, audited, spawn_worker, proxy,
                                                  marker, tmp_path: Path) -> None:
    """The completion committed but its answer was lost: the worker retries it after
    reconnecting, and the fence turns the retry into a no-op (no second result, no rerun)."""
    sql = audited
    gate = tmp_path / "gate"
    # A lease well above the injected round trip, so only the cut (not the latency) matters.
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--lease-seconds", "12",
                     env=_via(proxy, database_url), name="upd")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker), "hold": str(gate)})
    wait_until(lambda: read_marker(marker), 30, "the job to start")
    # The first heartbeat opens the write connection; from then on answers take 3 s.
    wait_until(lambda: worker_connections(sql, "write") == 1, 30, "the write connection")
    proxy.add_toxic("latency", stream="downstream", latency=SLOW)
    gate.touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the completion to commit")
    proxy.disable()
    proxy.clear()
    wait_until(lambda: "outcome discarded" in w.output(), 30,
               "the worker to retry the lost completion and have it fenced off")
    assert state_of(sql, job) == ("succeeded", 1)
    assert sql("SELECT result FROM results WHERE job_id = %s", job) == [
        ({"attempt": 1, "worker": read_marker(marker)[0][2]},)]
    assert len(read_marker(marker)) == 1
    assert_invariants(sql, [job], expected_states={job: "succeeded"}, executions=executions(marker))
    w.terminate()


def test_link_cut_before_status_update_longer_than_lease(database_url, audited, spawn_worker,
                                                         proxy, marker, tmp_path: Path) -> None:
    """The worker finished but cannot report it, and the link stays down past the lease: the job
    is not stuck (another worker rescues and re-runs it) and the cut-off worker's late outcome
    is rejected when the link comes back, so the recorded result is the second run's."""
    sql = audited
    gate = str(tmp_path / "gate-{attempt}")
    cut = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1",
                       env=_via(proxy, database_url), name="cutoff")
    wait_workers_ready(sql, 1)
    with Client(database_url) as c:
        job = c.enqueue("tracked", {"marker": str(marker), "hold": gate})
    wait_until(lambda: read_marker(marker), 30, "the cut-off worker to start the job")
    healthy = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1", name="healthy")
    wait_workers_ready(sql, 2)

    proxy.disable()
    Path(gate.format(attempt=1)).touch()  # the handler returns; its outcome cannot be written
    wait_until(lambda: len(read_marker(marker)) == 2, 30, "the healthy worker to re-run the job")
    Path(gate.format(attempt=2)).touch()
    wait_until(lambda: state_of(sql, job)[0] == "succeeded", 30, "the re-run to complete")
    runs = read_marker(marker)
    assert [(r[1], r[2].split(":")[0]) for r in runs] == [(1, "cutoff"), (2, "healthy")]
    assert "retrying" in cut.output() or "kept" in cut.output(), cut.output()

    proxy.enable()
    wait_until(lambda: "outcome discarded" in cut.output(), 60,
               "the cut-off worker's late completion to be rejected by the fence")
    assert state_of(sql, job) == ("succeeded", 2)
    assert sql("SELECT result FROM results WHERE job_id = %s", job) == [
        ({"attempt": 2, "worker": runs[1][2]},)]
    trail = audit(sql, job)
    assert [t[1] for t in trail].count("succeeded") == 1
    assert_invariants(sql, [job], expected_states={job: "succeeded"}, executions=executions(marker))
    cut.terminate()
    healthy.terminate()


def _errors_logged(worker) -> int:
    return worker.output().count("unreachable")


def test_worker_rides_out_latency_resets_blackholes_and_cuts(database_url, audited, spawn_worker,
                                                             proxy, marker) -> None:
    sql = audited
    n = 60
    workers = [spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "4",
                            env=_via(proxy, database_url), name=f"chaos-{i}") for i in range(2)]
    wait_workers_ready(sql, 2)
    with Client(database_url) as c:
        ids = [c.enqueue("tracked", {"marker": str(marker), "seconds": 0.05}) for _ in range(n)]

    def done() -> int:
        return int(sql("SELECT count(*) FROM jobs WHERE state IN ('succeeded', 'dead')")[0][0])

    def errors() -> int:
        return sum(_errors_logged(w) for w in workers)

    # 1. Latency with jitter both ways: slower, but work goes on.
    with proxy.toxic("latency", stream="downstream", latency=150, jitter=100), \
            proxy.toxic("latency", stream="upstream", latency=50, name="lat_up"):
        start = done()
        wait_until(lambda: done() >= start + 5, 60, "progress under latency")
    # 2. Connection resets (TCP RST) on every connection.
    before = errors()
    with proxy.toxic("reset_peer", stream="upstream", timeout=100):
        wait_until(lambda: errors() > before, 30, "the workers to see their connections reset")
    # 3. A blackhole: bytes vanish, then the proxy closes the connections after 1.5 s.
    before = errors()
    with proxy.toxic("timeout", stream="downstream", timeout=1500):
        wait_until(lambda: errors() > before, 30, "the workers to see the blackholed link close")
    start = done()
    wait_until(lambda: done() >= min(n, start + 5), 60, "progress after the blackhole")
    # 4. The link cut outright for longer than a lease, then back.
    before = errors()
    proxy.disable()
    wait_until(lambda: errors() > before, 30, "the workers to notice the cut")
    cut_at = time.monotonic()
    wait_until(lambda: time.monotonic() - cut_at > LEASE * 1.5, LEASE * 3, "a lease to pass")
    proxy.enable()

    wait_until(lambda: done() == n, 120, f"all {n} jobs to finish")
    counts = assert_invariants(sql, ids, executions=executions(marker))
    assert counts == {"succeeded": n}, counts
    for w in workers:
        assert w.proc.poll() is None, f"a worker died:\n{w.output()[-3000:]}"
        w.terminate()


def test_blackholed_link_is_detected_by_the_worker_itself(database_url, audited, spawn_worker,
                                                          proxy, marker, tmp_path: Path) -> None:
    """A link that swallows every byte but never closes (a frozen server, a proxy or firewall
    that keeps the TCP session up): keepalives cannot see it, so the worker bounds each round
    trip itself (connect + statement timeout), gives up on the dead connection and keeps
    trying, while a healthy worker takes its jobs over once their leases expire."""
    sql = audited
    env = {**_via(proxy, database_url), "SKIPLOCK_STATEMENT_TIMEOUT": "2",
           "SKIPLOCK_CONNECT_TIMEOUT": "1"}
    cut = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "2", env=env,
                       name="blackholed")
    wait_workers_ready(sql, 1)
    gate = str(tmp_path / "gate-{attempt}")
    Path(gate.format(attempt=2)).touch()  # a re-run finishes at once; attempt 1 waits
    with Client(database_url) as c:
        ids = [c.enqueue("tracked", {"marker": str(marker), "hold": gate}) for _ in range(2)]
    wait_until(lambda: len(read_marker(marker)) == 2, 30, "the worker to run both jobs")
    healthy = spawn_worker("tests.tasks:app", *WORKER_ARGS, name="healthy")
    wait_workers_ready(sql, 2)
    before = cut.output().count("did not answer")
    with proxy.toxic("timeout", stream="downstream", timeout=0), \
            proxy.toxic("timeout", stream="upstream", timeout=0, name="bh_up"):
        # Still blackholed: the worker must notice on its own (deadline 3 s, plus psycopg's
        # bounded attempt to cancel the query), not when the link finally closes.
        wait_until(lambda: cut.output().count("did not answer") > before, 30,
                   "the blackholed worker to give up on its silent connection")
        assert cut.proc.poll() is None
        # Its leases ran out meanwhile; the healthy worker took the jobs over.
        wait_until(lambda: len(read_marker(marker)) == 4, 30, "the healthy worker to re-run both")
    Path(gate.format(attempt=1)).touch()  # the cut-off handlers finish; their writes are fenced
    wait_until(lambda: cut.output().count("outcome discarded") == 2, 60,
               "the blackholed worker's late outcomes to be rejected")
    for job in ids:
        wait_until(lambda job=job: state_of(sql, job)[0] == "succeeded", 60, f"job {job} done")
    runs = read_marker(marker)
    assert sorted(r[2].split(":")[0] for r in runs) == ["blackholed"] * 2 + ["healthy"] * 2
    assert_invariants(sql, ids, expected_states=dict.fromkeys(ids, "succeeded"))
    cut.terminate()
    healthy.terminate()
