"""The scheduler service against a real database, in this process: racing schedulers, what
registration keeps and changes, schedules removed from the code (a rolling deploy), paused
and hand-broken schedules, the CRD rows' reconcile queries, listing and the late metric."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest

from skiplock import App
from skiplock.cli import main
from skiplock.db import Database, WorkerConnection
from skiplock.metrics import ScheduleCollector
from skiplock.schedules import make_schedule, schedule_params
from skiplock.worker import scheduler as scheduler_module
from skiplock.worker.scheduler import Scheduler

SQL = Callable[..., list[tuple[Any, ...]]]


def conn(url: str) -> WorkerConnection:
    return WorkerConnection(url, schema="skiplock", connect_timeout=5, statement_timeout=5,
                            application_name="skiplock-test-scheduler")


def app_with(**periodic: Any) -> App:
    app = App()

    @app.task
    def tick(ctx: Any, label: str = "") -> None:
        return None

    for name, spec in periodic.items():
        app.periodic(name=name, **spec)(tick)
    return app


async def run_all(schedulers: list[Scheduler]) -> int:
    return sum(await asyncio.gather(*(s.run_once() for s in schedulers)))


def test_racing_schedulers_enqueue_each_firing_once(database_url: str, sql: SQL) -> None:
    """Eight schedulers on eight connections, every pass at the same moment, on a schedule
    whose backlog of 50 missed firings is backfilled: each firing exactly one job."""
    app = app_with(race={"every": 1, "missed": "backfill:1000", "grace": 3600})

    async def main() -> int:
        conns = [conn(database_url) for _ in range(8)]
        try:
            schedulers = [Scheduler(c, app, 0.2) for c in conns]
            await run_all(schedulers)  # declared
            sql("UPDATE schedules SET next_fire_at = date_trunc('second', now()) "
                "- interval '50 seconds'")
            total = 0
            for _ in range(5):
                total += await run_all(schedulers)
                await asyncio.sleep(0.3)
            return total
        finally:
            for c in conns:
                await c.close()

    total = asyncio.run(main())
    fired = sql("SELECT fire_at, job_id FROM schedule_firings ORDER BY fire_at")
    assert total == len(fired) >= 51
    assert sql("SELECT count(*) FROM jobs")[0][0] == len(fired)
    times = [r[0] for r in fired]
    assert times == [times[0] + dt.timedelta(seconds=i) for i in range(len(times))]


def test_registration_keeps_the_fire_time_unless_the_cadence_changes(
        database_url: str, sql: SQL) -> None:
    async def register(app: App) -> None:
        c = conn(database_url)
        try:
            await Scheduler(c, app, 1).register()
        finally:
            await c.close()

    asyncio.run(register(app_with(daily={"cron": "0 3 * * *", "timezone": "Europe/Berlin"})))
    sql("UPDATE schedules SET next_fire_at = '2030-01-01T02:00:00Z', paused = true")
    # same cadence, other arguments: the fire time and the pause stay, the arguments change
    asyncio.run(register(app_with(daily={"cron": "0 3 * * *", "timezone": "Europe/Berlin",
                                         "args": {"label": "v2"}})))
    row = sql("SELECT next_fire_at, paused, args FROM schedules")[0]
    assert row[0] == dt.datetime(2030, 1, 1, 2, tzinfo=dt.UTC)
    assert row[1] is True and row[2] == {"label": "v2"}
    # another cadence: a new fire time, 03:00 in Berlin
    asyncio.run(register(app_with(daily={"cron": "0 3 * * *", "timezone": "UTC"})))
    nxt = sql("SELECT next_fire_at FROM schedules")[0][0]
    assert nxt != dt.datetime(2030, 1, 1, 2, tzinfo=dt.UTC)
    assert nxt.astimezone(dt.UTC).hour == 3


def test_a_schedule_removed_from_the_code(database_url: str, sql: SQL,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout: old workers still declare it (it fires); once none has for STALE_SECONDS it
    stops firing; after RETIRE_SECONDS it is gone."""
    monkeypatch.setattr(scheduler_module, "TOUCH_SECONDS", 0.0)
    old = app_with(legacy={"every": 1, "grace": 3600})
    new = app_with()

    async def main() -> None:
        c1, c2 = conn(database_url), conn(database_url)
        try:
            s_old, s_new = Scheduler(c1, old, 1), Scheduler(c2, new, 1)
            await s_old.run_once()
            # three fire times back: s_old may have fired the latest one already (its pass
            # can cross a second boundary on a loaded machine)
            sql("UPDATE schedules SET next_fire_at = now() - interval '3 seconds'")
            assert await s_new.run_once() >= 1  # the new version fires it too, meanwhile
            # the old workers are gone: nobody declares it
            sql("UPDATE schedules SET seen_at = now() - interval '1 hour', "
                "next_fire_at = now() - interval '1 second'")
            before = sql("SELECT count(*) FROM jobs")[0][0]
            assert await s_new.run_once() == 0
            assert sql("SELECT count(*) FROM jobs")[0][0] == before
            monkeypatch.setattr(scheduler_module, "RETIRE_SECONDS", 60.0)
            # the evidence retirement needs: a worker serving the queue, up for a while,
            # that does not declare it (the new version's)
            sql("INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds, "
                "started_at) VALUES ('new', '{default}', '{}', 1, 30, "
                "now() - interval '1 hour')")
            s_new._housekept = float("-inf")
            await s_new.run_once()
            assert sql("SELECT count(*) FROM schedules")[0][0] == 0
            assert sql("SELECT count(*) FROM schedule_firings")[0][0] == 0
        finally:
            await c1.close()
            await c2.close()

    asyncio.run(main())


def test_paused_and_broken_schedules(database_url: str, sql: SQL,
                                     caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(paused={"every": 1, "grace": 3600, "missed": "backfill:100"},
                   fine={"every": 1, "grace": 3600, "missed": "backfill:100"})
    sql("INSERT INTO schedules (name, task, queue, cron, source, next_fire_at) VALUES "
        "('by-hand', 'tick', 'default', 'not a cron', 'crd:x/y', now() - interval '1 s')")

    before: dict[str, int] = {}

    async def main() -> None:
        c = conn(database_url)
        try:
            s = Scheduler(c, app, 1)
            await s.run_once()  # declares both; may fire each once if a second turns over
            before.update(dict(sql("SELECT schedule, count(*) FROM schedule_firings "
                                   "GROUP BY schedule")))
            sql("UPDATE schedules SET paused = (name = 'paused'), "
                "next_fire_at = date_trunc('second', now()) - interval '10 seconds' "
                "WHERE name IN ('paused', 'fine')")
            await s.run_once()
            await s.run_once()
        finally:
            await c.close()

    asyncio.run(main())
    counts = dict(sql("SELECT schedule, count(*) FROM schedule_firings GROUP BY schedule"))
    # nothing fired for the paused schedule after the pause; the other backfilled ten
    assert counts.get("paused") == before.get("paused")
    assert counts["fine"] - before.get("fine", 0) >= 10
    row = sql("SELECT next_fire_at > now(), missed_total FROM schedules WHERE name = 'paused'")
    assert row[0][0] is True and row[0][1] >= 10  # moved on; the pause is not replayed
    assert sum("'by-hand' cannot fire" in r.message for r in caplog.records) == 1


def test_crd_rows_listing_and_the_late_metric(database_url: str, sql: SQL) -> None:
    db = Database(database_url)
    try:
        app = app_with(mine={"every": 60})

        async def declare() -> None:
            c = conn(database_url)
            try:
                await Scheduler(c, app, 1).register()
            finally:
                await c.close()

        asyncio.run(declare())
        nightly = schedule_params(make_schedule(
            name="ns/nightly", task="tick", queue="default", cron="0 2 * * *",
            timezone="Europe/Berlin"))
        first = dt.datetime(2030, 1, 1, 1, tzinfo=dt.UTC)
        nightly |= {"source": "crd:ns/nightly", "next_fire_at": first}
        row = db.upsert_crd_schedule(nightly)
        assert row is not None and row["next_fire_at"] == first
        # rewritten with the same cadence: the fire time stays; another cadence: a new one
        later = first + dt.timedelta(days=1)
        row = db.upsert_crd_schedule({**nightly, "next_fire_at": later, "args": {"v": 2}})
        assert row is not None and row["next_fire_at"] == first
        row = db.upsert_crd_schedule({**nightly, "next_fire_at": later, "cron": "0 3 * * *"})
        assert row is not None and row["next_fire_at"] == later
        # a resource may not take an app schedule's name, nor another resource's
        assert db.upsert_crd_schedule({**nightly, "name": "mine", "source": "crd:ns/mine"}) is None
        assert db.schedule_owner("mine") == "app"
        assert db.upsert_crd_schedule({**nightly, "source": "crd:other/nightly"}) is None
        sql("UPDATE schedules SET next_fire_at = now() - interval '90 seconds' "
            "WHERE name = 'ns/nightly'")
        rows = {r["name"]: r for r in db.list_schedules()}
        assert set(rows) == {"mine", "ns/nightly"}
        assert rows["ns/nightly"]["late_seconds"] >= 90
        assert rows["mine"]["late_seconds"] == 0

        metrics = {m.name: m for m in ScheduleCollector(db.list_schedules).collect()}
        late = {s.labels["schedule"]: s.value for s in
                metrics["skiplock_schedule_late_seconds"].samples}
        assert late["ns/nightly"] >= 90 and late["mine"] == 0
        # the resource is gone: its row goes; other namespaces' and app rows stay
        assert db.remove_crd_schedules("crd:ns/", []) == ["ns/nightly"]
        assert [r["name"] for r in db.list_schedules()] == ["mine"]
    finally:
        db.close()


def test_cli_lists_schedules(database_url: str, sql: SQL, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIPLOCK_DATABASE_URL", database_url)
    assert main(["schedules"]) == 0
    assert "no schedules" in capsys.readouterr().out
    sql("INSERT INTO schedules (name, task, queue, cron, every_seconds, timezone, source, "
        "next_fire_at, missed, backfill_limit) VALUES ('nightly', 'report', 'default', "
        "'0 2 * * *', NULL, 'Europe/Berlin', 'crd:ns/nightly', now() - interval '5 minutes', "
        "'backfill', 3), ('fast', 'tick', 'q2', NULL, 30, 'UTC', 'app', "
        "now() + interval '1 hour', 'skip', 0)")
    assert main(["schedules"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "task", "queue", "cadence", "missed", "next", "(UTC)",
                              "last", "(UTC)", "last", "job", "source"]
    fast, nightly = out[1], out[2]
    assert "every 30s" in fast and "skip" in fast and "app" in fast
    assert "0 2 * * * Europe/Berlin" in nightly and "backfill:3" in nightly
    assert "(late 30" in nightly and "crd:ns/nightly" in nightly
    assert main(["schedules", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["fast", "nightly"]
    assert listed[1]["late_seconds"] >= 300


def test_scheduled_jobs_carry_their_concurrency_key(database_url: str, sql: SQL) -> None:
    """A schedule's jobs are limited like any other: the key comes from the task's limits."""
    app = App()

    @app.periodic(every=1, args={"tenant": "acme"}, name="per-tenant", grace=3600)
    @app.task(concurrency_key="tenant", key_limit=1)
    def sync(ctx: Any, tenant: str) -> None:
        return None

    @app.periodic(every=1, name="global", grace=3600)
    @app.task(concurrency_limit=2)
    def rebuild(ctx: Any) -> None:
        return None

    async def main() -> None:
        c = conn(database_url)
        try:
            await c.register_tasks([(t.name, t.params, t.max_attempts, t.queue)
                                    for t in app.tasks.values()])
            for t in app.tasks.values():  # the catalogue's limits, as a worker stores them
                sql("UPDATE tasks SET limits = %s WHERE name = %s",
                    json.dumps(t.limits.as_json()), t.name)
            s = Scheduler(c, app, 1)
            await s.run_once()
            sql("UPDATE schedules SET next_fire_at = date_trunc('second', now()) "
                "- interval '2 seconds'")
            await s.run_once()
        finally:
            await c.close()

    asyncio.run(main())
    keys = sql("SELECT DISTINCT task, concurrency_key FROM jobs ORDER BY task")
    assert keys == [("rebuild", ""), ("sync", "acme")]
