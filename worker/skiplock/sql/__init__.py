"""Named SQL: the schema, the migrations and every query, loaded from .sql files."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

# A query starts at `-- name: x`; a fragment (a condition several queries share, such as the
# jobs filter) at `-- fragment: x`, and a query includes it with {{x}}, parenthesised; a clause
# (a piece of a statement several share, such as the claim's SET list) at `-- clause: x`,
# included with {{x}} as it is written.
_PART = re.compile(r"^-- (name|fragment|clause): (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"\{\{(\w+)\}\}")


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


# The .sql files that hold named queries, one per area (schema.sql and migrations hold none).
QUERY_FILES = ("queries.sql", "control.sql", "bulk.sql", "migrate.sql", "waits.sql",
               "schedules.sql", "limits.sql")


@cache
def queries() -> dict[str, str]:
    """Every named query of QUERY_FILES, keyed by its ``-- name:`` line, with each ``{{x}}``
    replaced by fragment x (parenthesised, so it composes with the AND or OR around it)."""
    found: dict[str, str] = {}
    fragments: dict[str, str] = {}
    clauses: dict[str, str] = {}
    where: dict[str, str] = {}
    for file in QUERY_FILES:
        parts = _PART.split(_read(file))
        for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
            if name in where:
                raise RuntimeError(f"{name!r} is defined in {where[name]} and {file}")
            {"name": found, "fragment": fragments, "clause": clauses}[kind][name] = (
                body.strip().rstrip(";"))
            where[name] = file

    def include(match: re.Match[str]) -> str:
        # An unknown name fails here, at import: a query that silently lost its filter
        # could act on every job.
        if match[1] in clauses:
            # without its leading comment: included mid-line, a comment would run on into
            # what follows the include, so a clause may have none elsewhere
            body = re.sub(r"\A(?:--[^\n]*\n)+", "", clauses[match[1]])
            if "--" in body:
                raise RuntimeError(f"clause {match[1]!r} has a comment after its first "
                                   "line: it would swallow what follows its include")
            return body
        if match[1] not in fragments:
            raise RuntimeError(f"{{{{{match[1]}}}}} names no fragment in {QUERY_FILES}")
        return f"(\n{fragments[match[1]]}\n)"

    return {name: _INCLUDE.sub(include, body) for name, body in found.items()}


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each migrations/NNNN_name.sql, in order."""
    folder = resources.files(__package__).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..N without gaps, found {versions}")
    return found


def schema() -> str:
    return _read("schema.sql")
