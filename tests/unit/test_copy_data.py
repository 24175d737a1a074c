"""enqueue_many's COPY text (copy_data.py) and its block-by-block preparation (preparation.py):
the escaping against a decoder of PostgreSQL's COPY text format, the replay a retry needs,
and the blocks against prepare_job job by job (the one definition of a job's checks)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock.copy_data import CopyBatch, CopyRefused, copy_field, copy_text, next_block
from skiplock.db import NewJob
from skiplock.errors import InvalidArguments, UnknownTask
from skiplock.preparation import (
    CatalogueSnapshot,
    copyable_specs,
    prepare_blocks,
    prepare_job,
    prepare_many,
)

_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v"}


def decode_field(field: str) -> str | None:
    """A field of COPY text as PostgreSQL reads it (the subset of escapes it defines that a
    renderer may emit; an octal or hex escape would be read as such, so none may appear by
    accident: every backslash the data holds must come out doubled)."""
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\":
            nxt = field[i + 1]
            assert nxt in _ESCAPES, f"a backslash before {nxt!r} would mean something else"
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def decode_rows(text: str) -> list[list[str | None]]:
    """COPY text back into rows of fields: rows end with a newline, fields split on tabs."""
    assert text.endswith("\n") or not text
    return [[decode_field(f) for f in line.split("\t")] for line in text[:-1].split("\n")] \
        if text else []


# Text the way a hostile producer writes it: every COPY metacharacter, end-of-data markers,
# "\N", non-ASCII, astral characters (no NUL and no lone surrogate: text refuses both, and
# the checks refuse them before they get here).
hostile_text = st.lists(
    st.one_of(
        st.sampled_from(["\\", "\t", "\n", "\r", ".", "N", "\\.", "\\N", "é", "😀", " "]),
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    ),
    max_size=20,
).map("".join)


@given(hostile_text)
def test_a_field_reads_back_as_it_was_written(value: str) -> None:
    rendered = copy_field(value)
    assert not re.search("[\t\n\r]", rendered)  # would split the field or the row
    assert decode_field(rendered) == value


def test_null_is_the_one_unescaped_backslash_n() -> None:
    assert copy_field(None) == "\\N"
    assert decode_field(copy_field("\\N")) == "\\N"  # the text "\N" is not NULL


def _job(task: str = "t", queue: str = "default", args_json: str = "{}",
         key: str | None = None, trace: str | None = None, priority: int = 0,
         max_attempts: int = 5) -> NewJob:
    return NewJob(task, {}, args_json, queue, priority, max_attempts,
                  concurrency_key=key, trace_context=trace)


@given(st.lists(st.tuples(hostile_text, hostile_text, st.one_of(st.none(), hostile_text),
                          st.one_of(st.none(), hostile_text),
                          st.integers(-32768, 32767), st.integers(1, 2**31 - 1)),
                max_size=8))
def test_rows_read_back_field_for_field(rows: list[tuple[Any, ...]]) -> None:
    jobs = [_job(task=t or "t", args_json=a, key=k, trace=tr, priority=p, max_attempts=m)
            for t, a, k, tr, p, m in rows]
    decoded = decode_rows(copy_text(jobs))
    assert decoded == [[j.queue, j.task, j.args_json, str(j.priority), str(j.max_attempts),
                        j.trace_context, j.concurrency_key] for j in jobs]


def _blocks_of(*blocks: Sequence[NewJob], fail_after: int | None = None
               ) -> Iterator[Sequence[NewJob]]:
    for i, block in enumerate(blocks):
        if fail_after is not None and i == fail_after:
            raise InvalidArguments("job #5: secret-value is not allowed")
        yield block


def test_a_retry_sends_the_blocks_again_then_goes_on_preparing() -> None:
    a, b, c = [_job("a")], [_job("b"), _job("b")], [_job("c")]
    batch = CopyBatch(_blocks_of(a, b, c), total=4).prime()
    assert batch.count == 1  # primed: the first block is prepared before any connection
    first = batch.texts()
    assert [next(first), next(first)] == [copy_text(a), copy_text(b)]  # then the link drops
    again = list(batch.texts())  # the retry, on a fresh connection
    assert again == [copy_text(a), copy_text(b), copy_text(c)]
    assert batch.count == batch.total == 4
    assert list(batch.texts()) == again  # rendered once, kept


def test_a_refused_block_ends_the_copy_with_a_message_that_quotes_nothing() -> None:
    batch = CopyBatch(_blocks_of([_job("a")], [_job("b")], fail_after=1), total=2).prime()
    texts = batch.texts()
    assert next_block(texts, "utf-8") == copy_text([_job("a")]).encode()
    with pytest.raises(CopyRefused) as info:
        next_block(texts, "utf-8")
    # psycopg sends str(exception) to the server, which logs it: nothing of the job's
    assert "secret" not in str(info.value) and "job #" not in str(info.value)
    assert isinstance(info.value.cause, InvalidArguments)
    assert "job #5" in str(info.value.cause)
    assert next_block(iter([]), "utf-8") is None


def test_a_batch_whose_preparation_failed_never_completes_on_a_retry() -> None:
    """The retry after a lost link (or after an error of the caller's that looks like one)
    must not find the preparing iterator ended and commit the blocks rendered before."""
    batch = CopyBatch(_blocks_of([_job("a")], [_job("b")], fail_after=1), total=2).prime()
    for _attempt in range(3):
        texts = batch.texts()
        assert next(texts) == copy_text([_job("a")])
        with pytest.raises(InvalidArguments, match="job #5"):
            next(texts)
    assert batch.count == 1


def test_a_batch_that_ends_short_of_its_total_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="rendered 1 of 2 jobs"):
        list(CopyBatch(iter([[_job("a")]]), total=2).texts())


def test_text_the_encoding_cannot_carry_is_the_producers_error_and_quotes_nothing() -> None:
    texts = iter([copy_text([_job("t\ud800-s3cr3t")])])  # a lone surrogate: not UTF-8
    with pytest.raises(CopyRefused) as info:
        next_block(texts, "utf-8")
    assert "s3cr3t" not in str(info.value) and "s3cr3t" not in str(info.value.cause)
    assert isinstance(info.value.cause, InvalidArguments)
    assert "valid Unicode" in str(info.value.cause)


# ---- the blocks against prepare_job, job by job --------------------------------------------

CATALOGUE = CatalogueSnapshot({
    "add": {"params": {"params": [{"name": "a", "required": True, "types": ["integer"]},
                                  {"name": "b", "required": True, "types": ["integer"]}]},
            "queue": "math", "max_attempts": 3},
    "keyed": {"params": {"params": [], "var_keyword": True}, "queue": "default",
              "max_attempts": 5, "limits": {"key": "arg:tenant", "key_limit": 2}},
    "whole": {"params": {"params": [], "var_keyword": True}, "queue": "q",
              "max_attempts": 2, "limits": {"concurrency_limit": 4}},
})

spec_values: dict[str, st.SearchStrategy[Any]] = {
    "task": st.sampled_from(["add", "keyed", "whole", "unknown", "", " x", "a\tb", "t" * 257,
                             7, None]),
    "args": st.one_of(
        st.none(), st.just({}),
        st.dictionaries(st.sampled_from(["a", "b", "tenant", "c"]),
                        st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none(),
                                  st.floats(allow_nan=True), st.just({1, 2})),
                        max_size=3)),
    "queue": st.sampled_from(["default", "q.1", "", "bad queue", "x" * 129, 3]),
    "priority": st.one_of(st.integers(-40_000, 40_000), st.just(True), st.just(1.5),
                          st.just("1")),
    "max_attempts": st.one_of(st.integers(-1, 3), st.just(2**31), st.just(False)),
}
specs_strategy = st.lists(
    st.fixed_dictionaries({"task": spec_values["task"]},
                          optional={k: v for k, v in spec_values.items() if k != "task"}),
    max_size=12)


def _one_by_one(specs: Sequence[Mapping[str, Any]], catalogue: Any) -> list[NewJob] | str:
    """The reference: prepare_job per job, its error prefixed with the job's index."""
    out = []
    for i, spec in enumerate(specs):
        try:
            out.append(prepare_job(
                spec["task"], spec.get("args"), queue=spec.get("queue"),
                priority=spec.get("priority", 0), max_attempts=spec.get("max_attempts"),
                max_args_bytes=1 << 20, catalogue=catalogue))
        except (InvalidArguments, UnknownTask) as exc:
            return f"{type(exc).__name__}: job #{i}: {exc}"
    return out


@settings(max_examples=300, deadline=None)
@given(specs_strategy, st.integers(1, 5), st.booleans())
def test_blocks_prepare_exactly_what_prepare_job_does_job_by_job(
        specs: list[dict[str, Any]], size: int, checked: bool) -> None:
    catalogue = CATALOGUE if checked else None
    expected = _one_by_one(specs, catalogue)
    try:
        blocks = list(prepare_blocks(specs, max_args_bytes=1 << 20, catalogue=catalogue,
                                     size=size))
    except (InvalidArguments, UnknownTask) as exc:
        assert f"{type(exc).__name__}: {exc}" == expected
        return
    assert [job for block in blocks for job in block] == expected
    assert all(1 <= len(block) <= size for block in blocks)
    assert prepare_many(specs, max_args_bytes=1 << 20, catalogue=catalogue) == expected


def test_integers_only_for_priority_and_max_attempts() -> None:
    for bad in (True, 1.0, "1", None):
        with pytest.raises(InvalidArguments, match="priority must be an integer"):
            prepare_job("t", priority=bad, max_args_bytes=100, catalogue=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArguments, match="max_attempts must be an integer"):
        prepare_job("t", max_attempts=2.0, max_args_bytes=100, catalogue=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArguments, match="max_attempts must be from 1 to 2147483647"):
        prepare_job("t", max_attempts=2**31, max_args_bytes=100, catalogue=None)


class _Index:
    """An int-like (numpy's integers are these): accepted where an integer is asked for."""

    def __index__(self) -> int:
        return 7


def test_an_int_like_priority_is_its_integer() -> None:
    job = prepare_job("t", priority=_Index(), max_attempts=_Index(),  # type: ignore[arg-type]
                      max_args_bytes=100, catalogue=None)
    assert (job.priority, job.max_attempts) == (7, 7)
    assert type(job.priority) is int


_EXTRAS = {"run_at": dt.datetime(2030, 1, 1, tzinfo=dt.UTC), "unique_key": "k", "timeout": 5}


@given(st.lists(st.fixed_dictionaries(
    {"task": st.just("t")},
    optional={"args": st.just({"a": 1}), "priority": st.integers(-3, 3),
              **{k: st.one_of(st.none(), st.just(v)) for k, v in _EXTRAS.items()}}),
    min_size=1, max_size=6))
def test_copy_is_chosen_from_the_specs_as_from_the_prepared_jobs(
        specs: list[dict[str, Any]]) -> None:
    prepared = prepare_many(specs, max_args_bytes=100, catalogue=None)
    plain = all(j.run_at is None and j.unique_key is None and j.timeout is None
                for j in prepared)
    assert copyable_specs(specs) == plain
