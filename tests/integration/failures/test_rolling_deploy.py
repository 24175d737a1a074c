"""A rolling deploy: old (v1) and new (v2) worker processes share one queue.

v2 changed ``resize``'s signature (it needs a ``width``) and added ``thumbnail``. Every job must
end where it can run: a worker that cannot run a job hands it back (the attempt does not count)
when a live peer registered a version that accepts its arguments; a job that no live worker can
run waits for one (queued, ``unrunnable_since`` set: visible) and goes dead only after the
grace, with a message that says why.
"""

from __future__ import annotations

import re
import time
from typing import Any

from skiplock import Client
from tests.integration.failures.conftest import LEASE
from tests.support.chaos import AUDIT_TABLE
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

GRACE = 7  # > rollout.RECHECK_SECONDS: an unrunnable job is looked at (and deferred) twice
ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "5",
        "--unrunnable-grace", str(GRACE), "--concurrency", "4")


def hand_backs(sql: Any, ids: list[int]) -> int:
    """Audit rows where a run was given back uncounted (running -> queued, attempts - 1)."""
    return int(sql(f"""
        SELECT count(*) FROM (
            SELECT old_state, new_state, attempts,
                   lag(attempts) OVER (PARTITION BY job_id ORDER BY seq) AS prev
            FROM {AUDIT_TABLE} WHERE job_id = ANY(%s)) t
        WHERE old_state = 'running' AND new_state = 'queued' AND attempts < prev""",
        ids)[0][0])


def test_rolling_deploy_runs_every_job_on_a_version_that_fits(database_url, audited,
                                                               spawn_worker) -> None:
    sql = audited
    workers = [spawn_worker("tests.rollout_v1:app", *ARGS, name="v1-a"),
               spawn_worker("tests.rollout_v1:app", *ARGS, name="v1-b"),
               spawn_worker("tests.rollout_v2:app", *ARGS, name="v2")]
    wait_until(lambda: sql("SELECT count(*) FROM workers")[0][0] == 3, 60,
               "all 3 workers registered")
    # Each has beaten at least once more since the last registration: it knows its peers.
    wait_until(lambda: sql("SELECT min(last_seen) > max(started_at) FROM workers")[0][0],
               30, "every worker to have seen its peers")

    started = time.monotonic()
    with Client(database_url, validate=False) as c:
        thumbs = [c.enqueue("thumbnail", {"image_id": i}) for i in range(40)]
        v1_form = [c.enqueue("resize", {"image_id": i}) for i in range(20)]
        v2_form = [c.enqueue("resize", {"image_id": i, "width": 64}) for i in range(20)]
        ghosts = [c.enqueue("ghost", {"n": i}) for i in range(3)]
        misfits = [c.enqueue("resize", {"image_id": "x"}) for _ in range(2)]
    everyone = thumbs + v1_form + v2_form + ghosts + misfits
    waiting = ghosts + misfits

    # Visibility: while they wait for a worker, the unrunnable jobs are queued with
    # unrunnable_since set (what /v1/queues and the dashboard count).
    seen_waiting: set[int] = set()
    max_waiting = 0

    def all_terminal() -> bool:
        nonlocal max_waiting
        ((n,),) = sql("SELECT count(*) FROM jobs WHERE state='queued' "
                      "AND unrunnable_since IS NOT NULL")
        max_waiting = max(max_waiting, int(n))
        seen_waiting.update(r[0] for r in sql(
            "SELECT id FROM jobs WHERE state='queued' AND unrunnable_since IS NOT NULL"))
        ((left,),) = sql("SELECT count(*) FROM jobs "
                         "WHERE state NOT IN ('succeeded', 'dead', 'cancelled')")
        return left == 0

    wait_until(all_terminal, 60, "every job to finish", interval=0.1)
    elapsed = time.monotonic() - started

    logs = {w.log_path.name: w.output() for w in workers}
    logged_hand_backs = sum(len(re.findall(r"handed back for", t)) for t in logs.values())
    audited_hand_backs = hand_backs(sql, thumbs + v1_form + v2_form)
    deferrals = hand_backs(sql, waiting)
    note = (f"hand-backs: {audited_hand_backs} in the audit, {logged_hand_backs} logged; "
            f"deferrals of unrunnable jobs: {deferrals}; waiting jobs seen at once: "
            f"{max_waiting}; all finished in {elapsed:.1f}s")
    print(f"\n[rolling deploy] {note}")

    rows = {r[0]: r[1:] for r in sql(
        "SELECT j.id, j.state::text, j.attempts, r.result, j.last_error, "
        "extract(epoch FROM j.finished_at - j.created_at) "
        "FROM jobs j LEFT JOIN results r ON r.job_id = j.id")}
    wrong: dict[int, Any] = {}
    for ids, version in ((thumbs, 2), (v2_form, 2), (v1_form, 1)):
        for i in ids:
            state, attempts, result, _, _ = rows[i]
            if (state, attempts) != ("succeeded", 1) or (result or {}).get("version") != version:
                wrong[i] = (state, attempts, result, version)
    assert not wrong, f"jobs not run once by the right version {wrong}; {note}"
    v2_ran = {rows[i][2]["worker"].split(":")[0] for i in thumbs + v2_form}
    v1_ran = {rows[i][2]["worker"].split(":")[0] for i in v1_form}
    assert v2_ran == {"v2"} and v1_ran <= {"v1-a", "v1-b"}, (v2_ran, v1_ran, note)

    for ids, why in ((ghosts, "unknown task 'ghost'"),
                     (misfits, "arguments do not fit task 'resize'")):
        for i in ids:
            state, attempts, result, error, waited = rows[i]
            assert state == "dead" and result is None, (i, rows[i], note)
            assert why in (error or "") and "no live worker can run it for" in error, (
                i, error, note)
            assert attempts <= 1, (i, rows[i], note)
            # dead only once the grace had passed, by database time
            assert float(waited) >= GRACE, (i, waited, note)
    assert seen_waiting == set(waiting), (
        f"unrunnable jobs never seen waiting: {sorted(set(waiting) - seen_waiting)}; {note}")

    assert_invariants(sql, everyone, expected_jobs=len(everyone), expected_states={
        **dict.fromkeys(thumbs + v1_form + v2_form, "succeeded"),
        **dict.fromkeys(waiting, "dead")})
    for w in workers:
        assert w.terminate() == 0, w.output()[-3000:]
