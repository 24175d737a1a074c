"""The named-query loader's fragments: the jobs filter is written once and included by the
jobs list and the bulk actions; a query naming an unknown fragment fails at load time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from skiplock import sql


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    sql.queries.cache_clear()
    yield
    sql.queries.cache_clear()


def test_every_include_is_resolved_and_the_jobs_filter_is_shared() -> None:
    queries = sql.queries()
    assert not [name for name, text in queries.items() if "{{" in text or "}}" in text]
    condition = "j.last_error LIKE '%%' || replace(replace(replace("
    users = sorted(name for name, text in queries.items() if condition in text)
    assert users == ["bulk_pick", "count_matching", "search_jobs"]
    # bulk_pick looks twice (the first look, then the re-check under the row lock)
    assert queries["bulk_pick"].count(condition) == 2
    assert "job_filter" not in queries  # a fragment is not a query of its own


def test_an_unknown_fragment_fails_at_load_time(monkeypatch: pytest.MonkeyPatch,
                                               fresh_cache: None) -> None:
    files = {"a.sql": "-- name: q\nSELECT 1 FROM jobs AS j WHERE {{job_filtr}};\n"}
    monkeypatch.setattr(sql, "QUERY_FILES", tuple(files))
    monkeypatch.setattr(sql, "_read", files.__getitem__)
    with pytest.raises(RuntimeError, match=r"\{\{job_filtr\}\} names no fragment"):
        sql.queries()


def test_a_fragment_is_parenthesised_and_names_are_unique(monkeypatch: pytest.MonkeyPatch,
                                                          fresh_cache: None) -> None:
    files = {"a.sql": "-- fragment: f\n-- why\nx = 1 OR y = 2\n\n-- name: q\n"
                      "SELECT 1 WHERE {{f}} AND z;\n",
             "b.sql": "-- name: f\nSELECT 2;\n"}
    monkeypatch.setattr(sql, "_read", files.__getitem__)
    monkeypatch.setattr(sql, "QUERY_FILES", ("a.sql",))
    assert sql.queries() == {"q": "SELECT 1 WHERE (\n-- why\nx = 1 OR y = 2\n) AND z"}
    sql.queries.cache_clear()
    monkeypatch.setattr(sql, "QUERY_FILES", ("a.sql", "b.sql"))
    with pytest.raises(RuntimeError, match=r"'f' is defined in a\.sql and b\.sql"):
        sql.queries()


def test_a_clause_is_included_as_written_without_its_comment(
        monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    files = {"a.sql": "-- clause: cols\n-- why these\n-- and in this order\na, b\n\n"
                      "-- name: q\nSELECT {{cols}}, c FROM t;\n"}
    monkeypatch.setattr(sql, "_read", files.__getitem__)
    monkeypatch.setattr(sql, "QUERY_FILES", ("a.sql",))
    assert sql.queries() == {"q": "SELECT a, b, c FROM t"}


def test_every_claim_writes_and_returns_the_same_things() -> None:
    queries = sql.queries()
    claims = ("claim", "claim_limited", "claim_limited_unlocked")
    for name in claims:
        assert "locked_until = now() + make_interval(secs => %(lease_seconds)s)" in queries[name]
        assert "j.timeout_seconds, j.snoozes, j.trace_context" in queries[name]
    users = sorted(n for n, t in queries.items() if "attempts = j.attempts + 1" in t)
    assert users == sorted(claims)


def test_a_clause_with_a_comment_inside_fails_at_load_time(monkeypatch: pytest.MonkeyPatch,
                                                          fresh_cache: None) -> None:
    files = {"a.sql": "-- clause: cols\na, -- the second\nb\n\n"
                      "-- name: q\nSELECT {{cols}}, c FROM t;\n"}
    monkeypatch.setattr(sql, "_read", files.__getitem__)
    monkeypatch.setattr(sql, "QUERY_FILES", ("a.sql",))
    with pytest.raises(RuntimeError, match="clause 'cols' has a comment"):
        sql.queries()
