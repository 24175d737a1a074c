"""A None result is stored as no results row; every reader still gives None for it, and a falsy
result (0, "", [], {}, False) is still a row. An old job whose row holds a JSON null reads None."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

from skiplock import Client, Worker
from skiplock.cli import main as cli_main
from tests.tasks import app

Sql = Callable[..., list[tuple[Any, ...]]]

FALSY: list[object] = [0, 0.0, "", [], {}, False]


def returning(value: object) -> dict[str, str]:
    return {"blob": base64.b64encode(pickle.dumps(("return", value))).decode()}


def run_all(database_url: str, expected: int) -> None:
    worker = Worker(app, database_url, concurrency=8)

    async def go() -> None:
        task = asyncio.create_task(worker.run())
        while worker.processed < expected:  # noqa: ASYNC110 - polls a plain counter
            await asyncio.sleep(0.02)
        worker.request_stop()
        await asyncio.wait_for(task, 20)

    asyncio.run(asyncio.wait_for(go(), 60))


def test_none_result_writes_no_row_and_reads_as_none(database_url: str, sql: Sql,
                                                     capsys: Any) -> None:
    with Client(database_url) as c:
        none_ids = [c.enqueue("noop"), c.enqueue("outcome_from", returning(None))]
        falsy_ids = [c.enqueue("outcome_from", returning(v)) for v in FALSY]
        value_id = c.enqueue("add", {"a": 1, "b": 2})
    run_all(database_url, len(none_ids) + len(falsy_ids) + 1)

    rows = dict(sql("SELECT job_id, result FROM results"))
    # None: no row. Every falsy value and a real value: exactly its row, the value as returned.
    assert set(rows) == {*falsy_ids, value_id}
    assert [rows[i] for i in falsy_ids] == FALSY
    assert [type(rows[i]) for i in falsy_ids] == [type(v) for v in FALSY]
    assert rows[value_id] == {"sum": 3}
    states = dict(sql("SELECT id, state::text FROM jobs"))
    assert set(states.values()) == {"succeeded"}

    with Client(database_url) as c:
        for i in none_ids:
            job = c.get_job(i)
            assert job is not None and job["state"] == "succeeded" and job["result"] is None
            assert c.wait(i, timeout=5) is None
        for i, v in zip(falsy_ids, FALSY, strict=True):
            job = c.get_job(i)
            assert job is not None and job["result"] == v and type(job["result"]) is type(v)
            assert c.wait(i, timeout=5) == v
        # the listing reads results through the same join (jobs_by_ids)
        listed = {j["id"]: j["result"] for j in c.db.list_jobs(state="succeeded")}
        assert all(listed[i] is None for i in none_ids)
        assert [listed[i] for i in falsy_ids] == FALSY

    capsys.readouterr()
    assert cli_main(["--database-url", database_url, "jobs", "--json"]) == 0
    printed = {j["id"]: j["result"] for j in json.loads(capsys.readouterr().out)}
    assert all(printed[i] is None for i in none_ids)
    assert [printed[i] for i in falsy_ids] == FALSY


def test_an_old_json_null_row_still_reads_as_none(database_url: str, sql: Sql) -> None:
    """Jobs completed before this change have a row holding JSON null: it reads None too."""
    with Client(database_url) as c:
        job = c.enqueue("noop")
    run_all(database_url, 1)
    assert sql("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
    sql("INSERT INTO results (job_id, result) VALUES (%s, 'null'::jsonb)", job)
    with Client(database_url) as c:
        got = c.get_job(job)
        assert got is not None and got["result"] is None
        assert c.wait(job, timeout=5) is None
