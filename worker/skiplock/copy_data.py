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
        f"{f(j.queue)}\t{f(j.task)}\t{f(j.args_json)}\t{int(j.priority)}\t{int(j.max_attempts)}\t"
        f"{f(j.trace_context)}\t{f(j.concurrency_key)}\n"
        for j in jobs
    ])


class CopyBatch:
    """The COPY text of one enqueue_many, rendered block by block as ``blocks`` (prepared
    jobs) yields them, and kept: a retry on a fresh connection sends the same rows again and
    then goes on preparing where the first attempt stopped. ``total`` is how many jobs the
    batch holds (what errors name); ``count`` how many were rendered so far (``total`` once
    ``texts()`` is exhausted)."""

    def __init__(self, blocks: Iterator[Sequence[NewJob]], total: int) -> None:
        self._blocks = blocks
        self._texts: list[str] = []
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
        jobs = next(self._blocks, None)
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


class CopyRefused(Exception):
    """Ends a COPY whose next block a job's checks refused. psycopg sends this exception's
    text to the server as the reason (the server logs it), so it says nothing of the job:
    the producer's own error, which may quote its arguments, is raised after the COPY."""

    def __init__(self, cause: Exception) -> None:
        super().__init__("a job of the batch failed the producer's checks; nothing is stored")
        self.cause = cause


def next_block(texts: Iterator[str]) -> str | None:
    """The next block of a CopyBatch, or None at the end; CopyRefused for what preparing it
    raised (a refused job's InvalidArguments, or anything else from the caller's specs)."""
    try:
        return next(texts)
    except StopIteration:
        return None
    except Exception as exc:
        raise CopyRefused(exc) from None
