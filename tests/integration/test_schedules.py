"""Periodic jobs with real worker processes: each firing is enqueued exactly once however many
workers race for it, whatever their clocks say, and the missed-firing policy is applied exactly
when every worker was down (docs/schedules.md).

The schedules are per-second intervals (``every=1``): cronsim has no seconds field, and the
interval path shares everything with cron but the fire-time arithmetic, which the unit tests
cover (tests/unit/test_schedules.py)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any

from tests.conftest import ROOT
from tests.support.waits import wait_until

SQL = Callable[..., list[tuple[Any, ...]]]
SECOND = dt.timedelta(seconds=1)
WORKER_ARGS = ("--lease-seconds", "5", "--poll-interval", "0.2", "--shutdown-grace", "2")
SKEW_DIR = ROOT / "tests" / "support" / "clockskew"
HOUR = 3600
# How late after its fire time a firing may be enqueued by a worker that is up (passes every
# 0.2 s here, a busy machine). A worker planning from its own clock would be an hour off.
SLACK = 5.0


def env(schedules: list[dict[str, Any]], offset: float = 0) -> dict[str, str]:
    found = {"SKIPLOCK_TEST_SCHEDULES": json.dumps(schedules)}
    if offset:
        found |= {"PYTHONPATH": f"{SKEW_DIR}:{ROOT}:{ROOT / 'worker'}",
                  "SKIPLOCK_TEST_CLOCK_OFFSET": str(offset)}
    return found


def firings(sql: SQL, name: str) -> list[tuple[dt.datetime, dt.datetime, bool, int]]:
    """(fire_at, fired_at, late, job_id) of a schedule, in fire time order."""
    return [(r[0], r[1], r[2], r[3]) for r in sql(
        "SELECT fire_at, fired_at, late, job_id FROM schedule_firings WHERE schedule = %s "
        "ORDER BY fire_at", name)]


def jobs_of(sql: SQL, label: str) -> list[tuple[int, dt.datetime]]:
    return [(r[0], r[1]) for r in sql(
        "SELECT id, run_at FROM jobs WHERE task = 'tick' AND args->>'label' = %s ORDER BY run_at",
        label)]


def assert_exactly_once(sql: SQL, name: str) -> list[dt.datetime]:
    """One job per fire time, every second from the first firing to the last without a gap,
    each job the one its firing names; returns the fire times."""
    rows = firings(sql, name)
    times = [r[0] for r in rows]
    assert len(times) == len(set(times))
    expected = [times[0] + i * SECOND for i in range(len(times))]
    assert times == expected, f"gaps or strays in {times}"
    jobs = jobs_of(sql, name)
    # no job enqueued twice for a firing, none without one; run_at is the fire time (no jitter)
    assert sorted(j[0] for j in jobs) == sorted(r[3] for r in rows)
    assert [j[1] for j in jobs] == times
    for fire_at, fired_at, late, _ in rows:
        assert not late
        assert 0 <= (fired_at - fire_at).total_seconds() < SLACK, (fire_at, fired_at)
    return times


def per_second(name: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "every": 1, "args": {"label": name}, **more}


def test_four_workers_enqueue_each_firing_exactly_once(sql: SQL, spawn_worker) -> None:
    # backfill: a firing that a loaded machine finds late still runs, so the count is exact
    spec = [per_second("each-second", missed="backfill:100", grace=30)]
    for i in range(4):
        spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS, env=env(spec), name=f"w{i}")
    # 20 s of a per-second schedule (the figure): 20 firings, each once, no gap
    wait_until(lambda: len(firings(sql, "each-second")) >= 20, 80, "20 firings")
    sql("UPDATE schedules SET paused = true WHERE name = 'each-second'")
    times = assert_exactly_once(sql, "each-second")
    assert len(times) >= 20
    created = sql("SELECT created_at FROM schedules WHERE name = 'each-second'")[0][0]
    # the first firing is the first fire time after the schedule was declared (database time)
    assert -1 < (times[0] - created).total_seconds() <= 1 + SLACK


def test_workers_an_hour_off_fire_on_database_time(sql: SQL, spawn_worker) -> None:
    spec = [per_second("skewed", missed="backfill:100", grace=30)]
    spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS, env=env(spec, HOUR), name="ahead")
    spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS, env=env(spec, -HOUR), name="behind")
    wait_until(lambda: len(firings(sql, "skewed")) >= 5, 60, "5 firings")
    sql("UPDATE schedules SET paused = true WHERE name = 'skewed'")
    times = assert_exactly_once(sql, "skewed")
    created = sql("SELECT created_at FROM schedules WHERE name = 'skewed'")[0][0]
    # an hour-ahead planner would start an hour late; an hour-behind one would backfill an hour
    assert -1 < (times[0] - created).total_seconds() <= 1 + SLACK
    assert sql("SELECT missed_total FROM schedules WHERE name = 'skewed'")[0][0] == 0


GRACE = 2
DOWN = 10.0


def test_missed_policy_applied_exactly_when_every_worker_was_down(sql: SQL,
                                                                  spawn_worker) -> None:
    spec = [per_second("skip", missed="skip", grace=GRACE),
            per_second("once", missed="once", grace=GRACE),
            per_second("backfill", missed="backfill:2", grace=GRACE)]
    names = [s["name"] for s in spec]
    first = [spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS, env=env(spec),
                          name=f"a{i}") for i in range(2)]
    wait_until(lambda: all(len(firings(sql, n)) >= 2 for n in names), 60, "firings before")
    for w in first:
        w.kill()
    down_at = sql("SELECT now()")[0][0]
    time.sleep(DOWN)  # every worker down: the premise of the test
    up_at = sql("SELECT now()")[0][0]
    for i in range(2):
        spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS, env=env(spec), name=f"b{i}")
    wait_until(lambda: all(any(not r[2] and r[0] > up_at + 2 * SECOND
                               for r in firings(sql, n)) for n in names),
               60, "on-time firings after the restart")
    sql("UPDATE schedules SET paused = true")

    for name in names:
        rows = firings(sql, name)
        times = [r[0] for r in rows]
        present = set(times)
        everything = [times[0] + i * SECOND
                      for i in range(int((times[-1] - times[0]) / SECOND) + 1)]
        gap = [t for t in everything if t not in present]
        late = [r[0] for r in rows if r[2]]
        # what the policy had to decide on: the firings of the outage, dropped or run late
        decided = sorted(gap + late)
        assert decided, name
        assert decided == [decided[0] + i * SECOND for i in range(len(decided))], name
        # the outage lasts until the restarted workers' first pass (a worker's start takes
        # seconds on a loaded machine): every decided firing is before it
        back_at = min(r[1] for r in rows if r[1] >= up_at)
        assert down_at - 2 * SECOND <= decided[0] and decided[-1] <= back_at, name
        # the outage was DOWN seconds; at most GRACE of them (and a second of slack) could
        # still be found on time after the restart
        assert len(decided) >= DOWN - GRACE - 2, (name, decided)
        want = {"skip": 0, "once": 1, "backfill": 2}[name]
        assert late == decided[len(decided) - want:], (name, late, decided)
        missed_total = sql("SELECT missed_total FROM schedules WHERE name = %s", name)[0][0]
        assert missed_total == len(gap), name
        for fire_at, fired_at, is_late, _ in rows:
            lateness = (fired_at - fire_at).total_seconds()
            if is_late:
                assert lateness > GRACE, (name, fire_at, fired_at)
            else:
                assert lateness < GRACE + 1, (name, fire_at, fired_at)
        # one job per recorded firing, for this schedule
        assert sorted(j[0] for j in jobs_of(sql, name)) == sorted(r[3] for r in rows)


def test_worker_refuses_a_bad_schedule_at_start(spawn_worker) -> None:
    # six fields: a seconds field cronsim does not have (every= is the way)
    w = spawn_worker("tests.schedule_tasks:app", *WORKER_ARGS,
                     env=env([{"name": "bad", "cron": "* * * * * *"}]))
    assert w.proc.wait(timeout=30) != 0
    out = w.output()
    assert "schedule 'bad'" in out and "cron" in out, out
