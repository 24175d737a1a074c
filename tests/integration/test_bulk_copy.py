"""enqueue_many's COPY path against a real server, from both clients: hostile text in every
field it renders reads back as it was sent, a batch of many blocks is stored whole, and a job
refused in a later block (after the COPY has started) stores nothing and leaves nothing of
itself in the server's log."""

from __future__ import annotations

import gc
import json
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiplock import Client, InvalidArguments, UnknownTask
from skiplock.preparation import COPY_BLOCK
from tests.integration.test_client_support import Producer
from tests.integration.test_core_enqueue import register_catalogue
from tests.support.pgserver import PgServer

Sql = Callable[..., list[tuple[Any, ...]]]

# COPY's metacharacters, its end-of-data marker and NULL spelling, non-ASCII and astral
# characters; no NUL and no lone surrogate (the checks refuse those, test_invalid_payload.py).
pieces = st.one_of(
    st.sampled_from(["\\", "\t", "\n", "\r", "\\.", "\\N", "\\t", "é", "😀", "'", '"', " "]),
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
)
hostile = st.lists(pieces, max_size=12).map("".join)
# task names are printable text without outer white space (names.py): backslashes and quotes
task_names = st.lists(st.one_of(st.sampled_from(["\\", "\\.", "\\N", "é", "😀", "'"]),
                                st.characters(categories=("L", "N", "P", "S"))),
                      min_size=1, max_size=12).map(lambda p: "x" + "".join(p))

KEYED_TASK = ("INSERT INTO tasks (name, params, max_attempts, queue, limits) VALUES "
              "('keyed_copy', '{\"params\": [], \"var_keyword\": true}', 5, 'default', "
              "'{\"key\": \"arg:tenant\", \"key_limit\": 2}') ON CONFLICT (name) DO NOTHING")


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(task_names, hostile, hostile), min_size=1, max_size=6))
def test_hostile_text_in_every_field_reads_back_as_sent(
        producer: Producer, sql: Sql, rows: list[tuple[str, str, str]]) -> None:
    sql(KEYED_TASK)
    tag = uuid.uuid4().hex
    unchecked = [{"task": task, "args": {"tag": tag, "v": value}} for task, value, _ in rows]
    keyed = [{"task": "keyed_copy", "args": {"tag": tag, "tenant": key}} for *_, key in rows]
    assert producer.enqueue_many(unchecked, validate=False) == len(rows)
    assert producer.enqueue_many(keyed) == len(rows)  # checked: the key comes from "tenant"
    stored = sql("SELECT task, args, concurrency_key FROM jobs WHERE args->>'tag' = %s "
                 "ORDER BY id", tag)
    assert stored == ([(s["task"], s["args"], None) for s in unchecked]
                      + [(s["task"], s["args"], s["args"]["tenant"]) for s in keyed])


def test_a_batch_of_many_blocks_is_stored_whole_in_order(producer: Producer, sql: Sql) -> None:
    n = 2 * COPY_BLOCK + 345
    assert producer.enqueue_many(
        [{"task": "add", "args": {"a": i, "b": 0}, "priority": i % 7} for i in range(n)],
        validate=False) == n
    stored = sql("SELECT (args->>'a')::int, priority FROM jobs ORDER BY id")
    assert stored == [(i, i % 7) for i in range(n)]


def test_a_job_refused_after_the_copy_started_stores_nothing_and_is_not_logged(
        producer: Producer, sql: Sql, pg: PgServer) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    bad = 2 * COPY_BLOCK + 222  # in the third block: the first two are on the server by then
    jobs: list[dict[str, Any]] = [{"task": "add", "args": {"a": i, "b": 0}} for i in range(bad)]
    jobs += [{"task": "add", "args": {}, "queue": f"{secret} queue"},
             {"task": "add", "args": {"a": 0, "b": 0}}]
    logged = pg.log.stat().st_size
    with pytest.raises(InvalidArguments, match=f"job #{bad}: queue name '{secret} queue'"):
        producer.enqueue_many(jobs, validate=False)
    assert sql("SELECT count(*) FROM jobs") == [(0,)]
    # the COPY was under way and was ended with a reason that quotes nothing of the job
    log = pg.log.read_text(errors="replace")[logged:]
    assert "failed the producer's checks" in log
    assert secret not in log
    # the same client goes on: its connection came back clean
    assert producer.enqueue_many([{"task": "add", "args": {"a": 1, "b": 1}}],
                                 validate=False) == 1
    assert sql("SELECT count(*) FROM jobs") == [(1,)]


def test_a_producer_error_that_is_not_a_check_ends_the_copy_the_same_way(
        producer: Producer, sql: Sql) -> None:
    class Exploding(Mapping[str, Any]):
        """args whose copy raises what no check catches (a caller's broken Mapping)."""

        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("broken mapping")

        def __iter__(self) -> Iterator[str]:
            raise RuntimeError("broken mapping")

        def __len__(self) -> int:
            return 1

    jobs: list[dict[str, Any]] = [{"task": "add", "args": {"a": i, "b": 0}}
                                  for i in range(COPY_BLOCK + 1)]
    jobs.append({"task": "add", "args": Exploding()})
    with pytest.raises(RuntimeError, match="broken mapping"):
        producer.enqueue_many(jobs, validate=False)
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


def test_copy_text_is_what_the_server_stores_for_json_escapes(producer: Producer,
                                                              sql: Sql) -> None:
    """Backslashes in the JSON text (its own escapes: \\n, \\", \\\\, \\u00e9) survive COPY's."""
    args = {"s": 'a\nb\t"c"\\d\\.\\N é 😀', "nested": {"k\\": ["\\", "\t"]}}
    assert producer.enqueue_many([{"task": "add", "args": args}], validate=False) == 1
    (row,) = sql("SELECT args::text, args FROM jobs")
    assert row[1] == args
    assert json.loads(row[0]) == args


def test_a_database_error_raised_by_a_spec_is_not_retried_as_a_lost_link(
        producer: Producer, sql: Sql) -> None:
    """A spec that raises psycopg's OperationalError (a lazy row of the caller's whose
    connection died) while its block is prepared, with earlier blocks on the server: the
    insert's retry-once-before-COMMIT must not take it for the COPY's own link, retry, and
    commit the blocks sent before."""

    class LazyRow(dict[str, Any]):
        """Its task is there (the client's passes before the COPY read it); its arguments
        are read only when its block is prepared."""

        def get(self, key: str, default: Any = None) -> Any:
            if key == "args":
                raise psycopg.OperationalError("the caller's own connection is gone")
            return super().get(key, default)

    jobs: list[Mapping[str, Any]] = [{"task": "add", "args": {"a": i, "b": 0}}
                                     for i in range(COPY_BLOCK + 500)]
    jobs += [LazyRow(task="add"), {"task": "add", "args": {"a": 0, "b": 0}}]
    with pytest.raises(psycopg.OperationalError, match="caller's own connection") as info:
        producer.enqueue_many(jobs, validate=False)
    # raised from inside the COPY (not by a check before it), once: no retry
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "enqueue_copy" in frames and "_blocks" in frames, frames
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


def test_nan_in_arguments_is_the_producers_error_before_the_server_sees_it(
        producer: Producer, sql: Sql, pg: PgServer) -> None:
    """jsonb refuses NaN; a COPY line it refuses is logged whole by the server."""
    logged = pg.log.stat().st_size
    for value in (float("nan"), float("inf")):
        with pytest.raises(InvalidArguments, match=r"job #1: .*JSON"):
            producer.enqueue_many([{"task": "add", "args": {"a": 1}},
                                   {"task": "add", "args": {"a": value, "pw": "s3cr3t-nan"}}],
                                  validate=False)
    assert "s3cr3t-nan" not in pg.log.read_text(errors="replace")[logged:]
    assert sql("SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_url_asking_for_sql_ascii_or_latin1_still_stores_any_text(
        kind: str, database_url: str, sql: Sql) -> None:
    """Skiplock's connections speak UTF-8 whatever the URL's client_encoding: under SQL_ASCII
    psycopg returned text as bytes (the catalogue check broke) and sent it as ASCII (COPY
    refused every non-ASCII name, key or argument); under LATIN1 an emoji could not be sent."""
    sql(KEYED_TASK)
    for encoding in ("SQL_ASCII", "LATIN1"):
        producer = Producer(kind, f"{database_url}?client_encoding={encoding}")
        try:
            assert producer.enqueue_many([{"task": "tâche_😀", "args": {"v": "é"}}],
                                         validate=False) == 1
            assert producer.enqueue_many([{"task": "keyed_copy",  # checked: the catalogue
                                           "args": {"tenant": "Zürich 😀"}}]) == 1
        finally:
            producer.close()
    assert sql("SELECT task, concurrency_key FROM jobs ORDER BY id") == [
        ("tâche_😀", None), ("keyed_copy", "Zürich 😀")] * 2


def test_an_unknown_task_in_a_later_block_needs_no_second_connection(
        database_url: str, sql: Sql) -> None:
    """The catalogue is read before the COPY takes its connection: with a pool of one, an
    unknown task in the second block is UnknownTask at once (it used to wait for a second
    connection to re-read the catalogue, and time out as "database unavailable")."""
    register_catalogue(database_url)
    with Client(database_url) as client:
        client.db._pool.resize(min_size=1, max_size=1)
        jobs = [{"task": "add", "args": {"a": 1, "b": 1}}] * COPY_BLOCK + [{"task": "nosuch"}]
        with pytest.raises(UnknownTask, match=f"job #{COPY_BLOCK}: .*nosuch"):
            client.enqueue_many(jobs)
        assert client.enqueue_many(jobs[:3]) == 3
    assert sql("SELECT count(*) FROM jobs") == [(3,)]


def test_the_collector_is_paused_while_the_jobs_are_read_and_restored_after(
        producer: Producer, sql: Sql) -> None:
    """No cyclic pass walks the call's jobs while it holds them (skiplock/collector.py); the
    collector is enabled again when the call returns or raises, from either client."""
    seen: list[bool] = []

    def jobs(n: int, bad_at: int | None = None) -> Iterator[dict[str, Any]]:
        for i in range(n):
            seen.append(gc.isenabled())
            yield {"task": "add", "args": {"a": i, "b": 0} if i != bad_at else {}}

    assert gc.isenabled()
    assert producer.enqueue_many(jobs(COPY_BLOCK + 5), validate=False) == COPY_BLOCK + 5
    assert gc.isenabled() and seen and not any(seen)
    seen.clear()
    refused = jobs(COPY_BLOCK + 5, bad_at=COPY_BLOCK + 2)
    with pytest.raises(InvalidArguments, match=f"job #{COPY_BLOCK + 2}"):
        producer.enqueue_many([{**j, "queue": "bad queue\x00"} if not j["args"] else j
                               for j in refused], validate=False)
    assert gc.isenabled()
    assert sql("SELECT count(*) FROM jobs") == [(COPY_BLOCK + 5,)]
