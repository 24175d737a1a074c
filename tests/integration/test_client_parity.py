"""Client and AsyncClient: the same behaviour, by the same tests (each runs against both)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from skiplock import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidArguments,
    UnknownTask,
)
from tests.integration.test_client_support import Producer
from tests.integration.test_core_enqueue import register_catalogue
from tests.support.pgserver import free_port
from tests.tasks import add

Sql = Callable[..., list[tuple[Any, ...]]]


def test_enqueue_stores_the_job_with_its_defaults(producer: Producer, sql: Sql) -> None:
    job_id = producer.enqueue("add", {"a": 1, "b": 2}, priority=3, timeout=9)
    (row,) = sql("SELECT queue, task, args, state::text, priority, attempts, max_attempts, "
                 "timeout_seconds, run_at <= now() FROM jobs WHERE id = %s", job_id)
    assert row == ("default", "add", {"a": 1, "b": 2}, "queued", 3, 0, 5, 9.0, True)


def test_delay_and_run_at_use_database_time(producer: Producer, sql: Sql) -> None:
    later = producer.enqueue("add", {"a": 1, "b": 2}, delay=3600)
    at = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    fixed = producer.enqueue("add", {"a": 1, "b": 2}, run_at=at)
    (gap,) = sql("SELECT extract(epoch FROM run_at - created_at) FROM jobs WHERE id = %s",
                 later)[0]
    assert 3599 <= float(gap) <= 3601
    assert sql("SELECT run_at FROM jobs WHERE id = %s", fixed) == [(at,)]


def test_unique_key_replays_and_conflicts(producer: Producer, sql: Sql) -> None:
    first = producer.enqueue("add", {"a": 1, "b": 2}, unique_key="order-17")
    again = producer.enqueue("add", {"b": 2, "a": 1}, unique_key="order-17")
    with pytest.raises(IdempotencyConflict, match="args differ") as info:
        producer.enqueue("add", {"a": 9, "b": 9}, unique_key="order-17")
    assert first == again == info.value.job_id
    assert sql("SELECT count(*) FROM jobs") == [(1,)]


BAD_JOBS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"task": "add", "args": {"a": 1, "b": 2}, "run_at": dt.datetime(2030, 1, 1)},
     InvalidArguments, "timezone-aware"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "delay": 1, "run_at": dt.datetime.now(dt.UTC)},
     InvalidArguments, "not both"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "priority": 40000}, InvalidArguments, "smallint"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "timeout": 0}, InvalidArguments, "timeout"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "max_attempts": 0}, InvalidArguments,
     "max_attempts"),
    ({"task": "add", "args": {"a": {1, 2}, "b": 2}}, InvalidArguments, "JSON"),
    ({"task": "x" * 300, "args": {}}, InvalidArguments, "at most 256"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "queue": ""}, InvalidArguments, "queue"),
    ({"task": "add", "args": {"a": 1, "b": 2}, "unique_key": ""}, InvalidArguments, "key"),
    ({"task": "add", "args": {"a": "one", "b": 2}}, InvalidArguments, "'a' must be integer"),
    ({"task": "add", "args": {"a": 1}}, InvalidArguments, "b"),
    ({"task": "no_such_task", "args": {}}, UnknownTask, "no_such_task"),
]


def test_bad_jobs_are_refused_and_nothing_is_stored(
    producer: Producer, database_url: str, sql: Sql
) -> None:
    register_catalogue(database_url)
    for case, error, match in BAD_JOBS:
        kwargs = dict(case)
        task, args = kwargs.pop("task"), kwargs.pop("args")
        with pytest.raises(error, match=match):
            producer.enqueue(task, args, **kwargs)
        # the same refusal, with the job's index, from enqueue_many (where it applies)
        if "delay" not in kwargs:
            with pytest.raises(error, match="job #1"):
                producer.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}},
                                       {"task": task, "args": args, **kwargs}])
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


def test_validate_false_skips_the_catalogue(producer: Producer, database_url: str,
                                            sql: Sql) -> None:
    register_catalogue(database_url)
    job_id = producer.enqueue("not_registered", {"x": 1}, validate=False)
    assert sql("SELECT task FROM jobs WHERE id = %s", job_id) == [("not_registered",)]


def test_the_catalogue_gives_the_task_its_queue_and_attempts(
    producer: Producer, database_url: str, sql: Sql
) -> None:
    register_catalogue(database_url)
    job_id = producer.enqueue("poison", {})
    assert sql("SELECT queue, max_attempts FROM jobs WHERE id = %s", job_id) == [("default", 4)]


def test_enqueue_many_copy_and_unnest(producer: Producer, sql: Sql) -> None:
    assert producer.enqueue_many([{"task": "add", "args": {"a": i, "b": i}}
                                  for i in range(50)]) == 50
    keyed = [{"task": "add", "args": {"a": 1, "b": 1}, "unique_key": f"k{i % 3}"}
             for i in range(6)]
    assert producer.enqueue_many(keyed) == 3  # a repeated key in the call: the first wins
    assert producer.enqueue_many(keyed) == 0  # replayed: nothing new
    assert producer.enqueue_many([]) == 0
    assert sql("SELECT count(*) FROM jobs") == [(53,)]


def test_enqueue_many_names_the_bad_job_and_stores_none(producer: Producer, sql: Sql) -> None:
    with pytest.raises(InvalidArguments, match="job #2"):
        producer.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}}] * 2
                              + [{"task": "add", "args": {"a": 1}, "priority": 99999}])
    with pytest.raises(InvalidArguments, match="job #0 has no 'task'"):
        producer.enqueue_many([{"args": {}}])
    # not a mapping: the same clear error from both (the AsyncClient reads task names first)
    for junk in ("add", ["task", "add"], 7, None):
        with pytest.raises(InvalidArguments, match="job #1 must be a mapping"):
            producer.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}}, junk])
    for not_jobs in (None, "add", {"task": "add"}, 3):
        with pytest.raises(InvalidArguments, match="jobs must be an iterable of mappings"):
            producer.enqueue_many(not_jobs)
    with pytest.raises(IdempotencyConflict):
        producer.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}, "unique_key": "k"},
                               {"task": "add", "args": {"a": 2, "b": 1}, "unique_key": "k"}])
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize("commit", [True, False])
def test_enqueue_in_the_callers_transaction(producer: Producer, sql: Sql, commit: bool) -> None:
    sql("CREATE TABLE public.orders (id int)")
    job_id = producer.enqueue_in_transaction(commit, "add", {"a": 1, "b": 2})
    expected = 1 if commit else 0
    assert sql("SELECT count(*) FROM jobs WHERE id = %s", job_id) == [(expected,)]
    assert sql("SELECT count(*) FROM public.orders") == [(expected,)]
    # the caller's search_path is theirs again after the enqueue
    assert producer.get_job(job_id) is not None or not commit


def test_get_retry_and_cancel(producer: Producer, sql: Sql) -> None:
    queued = producer.enqueue("add", {"a": 1, "b": 2})
    job = producer.get_job(queued)
    assert job is not None and job["state"] == "queued" and job["args"] == {"a": 1, "b": 2}
    assert producer.get_job(10**12) is None
    assert producer.retry(queued) is False  # only dead or cancelled jobs
    assert producer.cancel(queued, "not needed") == "cancelled"
    assert producer.cancel(queued) is None  # finished already
    (errors,) = sql("SELECT errors FROM jobs WHERE id = %s", queued)[0]
    assert "not needed" in str(errors)
    assert producer.retry(queued) is True
    assert producer.get_job(queued)["state"] == "queued"  # type: ignore[index]
    assert producer.retry(10**12) is False
    assert producer.cancel(10**12) is None
    running = producer.enqueue("add", {"a": 1, "b": 2})
    sql("UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w', "
        "locked_until = now() + interval '1 minute' WHERE id = %s", running)
    assert producer.cancel(running) == "requested"
    assert producer.cancel(running) is None  # asked already


def test_typed_handles_enqueue_on_both(producer: Producer, sql: Sql) -> None:
    if producer.kind == "sync":
        one = add.enqueue(producer.client, 1, b=2)
        many = add.enqueue_many(producer.client, [add.call(a=i, b=i) for i in range(3)])
    else:
        one = producer.run(add.enqueue_async(producer.client, 1, b=2))
        many = producer.run(add.enqueue_many_async(producer.client,
                                                   [add.call(a=i, b=i) for i in range(3)]))
    later = add.options(delay=600, priority=-1)
    if producer.kind == "sync":
        delayed = later.enqueue(producer.client, a=5, b=6)
    else:
        delayed = producer.run(later.enqueue_async(producer.client, a=5, b=6))
    assert many == 3
    assert sql("SELECT args FROM jobs WHERE id = %s", one) == [({"a": 1, "b": 2},)]
    assert sql("SELECT priority, run_at > now() + interval '9 minutes' FROM jobs "
               "WHERE id = %s", delayed) == [(-1, True)]


def test_unreachable_database_is_the_same_error_fast(database_url: str) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    for kind in ("sync", "async"):
        p = Producer(kind, url, connect_timeout=1)
        try:
            with pytest.raises(DatabaseUnavailable, match="unreachable"):
                p.enqueue("add", {"a": 1, "b": 2}, validate=False)
        finally:
            p.close()
