"""enqueue_many's COPY data (both clients): rows rendered as COPY text, block by block as
the jobs are prepared, so the server stores one block while the producer prepares the next.

Rendering here rather than with psycopg's ``write_row`` is what the bulk path's speed rests
on: one string per block and one ``write`` for it, where ``write_row`` adapted every field of
every row (docs/benchmarks.md "Bulk enqueue"). The format is PostgreSQL's COPY text format:
tab between fields, newline after a row, ``\\N`` for NULL, and a backslash, tab, newline or
carriage return inside a field escaped with a backslash. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .errors import InvalidArguments

if TYPE_CHECKING:  # annotations only: db.py imports this module
    from .db import NewJob

NULL = "\\N"
# What COPY text gives a meaning to inside a field; everything else is data as it is (NUL
# never gets here: JSON escapes it, names and keys refuse it).
_SPECIAL = {ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}


def copy_field(value: str | None) -> str:
    """One text field in COPY text format."""
    if value is None:
        return NULL
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_SPECIAL)
    return value


def copy_text(jobs: Sequence[NewJob]) -> str:
    """The rows of copy_jobs (sql/bulk.sql) for ``jobs``: queue, task, args, priority,
    max_attempts, trace_context, concurrency_key."""
    f = copy_field
    return "".join([
        f"{f(j.queue)}\t{f(j.task)}\t{f(j.args_json)}\t{j.priority}\t{j.max_attempts}\t"
        f"{f(j.trace_context)}\t{f(j.concurrency_key)}\n"
        for j in jobs
    ])


class CopyBatch:
    """The COPY text of one enqueue_many, rendered block by block as ``blocks`` (prepared
    jobs) yields them, and kept: a retry on a fresh connection sends the same rows again and
    then goes on preparing where the first attempt stopped. What preparing a block raised is
    kept too, and raised again by every later ``texts()``: a batch whose preparation failed
    never completes (its rows are not all there). ``total`` is how many jobs the batch holds
    (what errors name); ``count`` how many were rendered so far."""

    def __init__(self, blocks: Iterator[Sequence[NewJob]], total: int) -> None:
        self._blocks = blocks
        self._texts: list[str] = []
        self._failure: Exception | None = None
        self.total = total
        self.count = 0

    @classmethod
    def of(cls, jobs: Sequence[NewJob]) -> CopyBatch:
        """Jobs already prepared, as one block."""
        return cls(iter([jobs]), len(jobs))

    def prime(self) -> CopyBatch:
        """Prepare and render the first block now, before any connection is taken: a batch
        of one block is then checked in full before anything is sent (a bad job in a later
        block stops the COPY, and nothing is stored either way)."""
        if not self._texts:
            self._render_next()
        return self

    def _render_next(self) -> bool:
        if self._failure is not None:
            raise self._failure
        try:
            jobs = next(self._blocks, None)
        except Exception as exc:
            self._failure = exc
            raise
        if jobs is None:
            return False
        self._texts.append(copy_text(jobs))
        self.count += len(jobs)
        return True

    def texts(self) -> Iterator[str]:
        """Every block's COPY text, those rendered before first. Whatever preparing a block
        raises (InvalidArguments naming the job) comes out of this iterator."""
        i = 0
        while i < len(self._texts) or self._render_next():
            yield self._texts[i]
            i += 1
        if self.count != self.total:  # never: a batch either fails or renders every job
            raise RuntimeError(f"COPY batch rendered {self.count} of {self.total} jobs")


class CopyRefused(Exception):
    """Ends a COPY whose next block could not be prepared or encoded, and carries the reason
    out of the insert transaction, which must not retry it (the reason may be any exception
    of the caller's, a psycopg one among them). psycopg sends this exception's text to the
    server as the COPY's failure (the server logs it), so it says nothing of the job: the
    producer's own error, which may quote its arguments, is raised after the transaction."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("a job of the batch failed the producer's checks; nothing is stored")
        self.cause = cause


def next_block(texts: Iterator[str], codec: str) -> bytes | None:
    """The next block of a CopyBatch in ``codec`` (the connection's encoding: UTF-8 on every
    Skiplock connection, db.conninfo), or None at the end; CopyRefused for what preparing it
    raised (a refused job's InvalidArguments, or anything else from the caller's specs) or
    for text the encoding cannot carry."""
    try:
        text = next(texts)
    except StopIteration:
        return None
    except Exception as exc:
        raise CopyRefused(exc) from None
    try:
        return text.encode(codec)
    except UnicodeEncodeError as exc:  # not met in UTF-8: the checks refuse lone surrogates
        raise CopyRefused(InvalidArguments(
            f"a job's text cannot be sent as {exc.encoding} ({exc.reason}): task names and "
            "concurrency keys must be valid Unicode text")) from None
