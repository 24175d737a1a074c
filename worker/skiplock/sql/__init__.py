"""Named SQL: the schema, the migrations and every query, loaded from .sql files."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """Every query in queries.sql, keyed by its ``-- name:`` line."""
    text = _read("queries.sql")
    parts = _NAME.split(text)
    found: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise RuntimeError(f"query {name!r} is defined twice in queries.sql")
        found[name] = body.strip().rstrip(";")
    return found


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
