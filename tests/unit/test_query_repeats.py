"""Which query parameters take one value, and which of them a query repeats."""

from __future__ import annotations

from collections import deque
from collections.abc import MutableSequence, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Optional

from fastapi import Depends, FastAPI, Query
from fastapi.routing import APIRoute
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from skiplock.api.query_repeats import repeated, single_valued_names, takes_many


def test_takes_many_sees_through_optional_and_annotated() -> None:
    class Names(list[str]):
        pass

    for many in (list[int], Optional[list[str]], list[int] | None,  # noqa: UP045 - both spellings
                 Annotated[list[str], Field(max_length=3)], Sequence[str], set[int],
                 tuple[int, ...], deque[str], MutableSequence[str], Names, list):
        assert takes_many(many), many
    for one in (int, str | None, Optional[int], Annotated[int, Field(ge=1)], bool,  # noqa: UP045
                Annotated[str | None, Field(min_length=1)], str, bytes, AbstractSet[str]):
        assert not takes_many(one), one


names = st.sampled_from(["a", "b", "c", "d"])


@given(st.lists(st.tuples(names, st.text(max_size=3)), max_size=12),
       st.frozensets(names))
def test_repeated_names_exactly_the_single_valued_names_that_occur_twice(
        items: list[tuple[str, str]], single: frozenset[str]) -> None:
    got = repeated(items, single)
    expected = sorted({n for n, _ in items if n in single
                       and sum(1 for m, _ in items if m == n) > 1})
    assert got == expected


class Filter(BaseModel):
    state: list[str] = Field(default_factory=list)
    task: str | None = None
    since: Annotated[int | None, Field(alias="from")] = None


def test_a_routes_single_valued_names_include_a_query_models_fields() -> None:
    app = FastAPI()

    @app.get("/x")
    def x(q: Annotated[Filter, Query()], limit: int = 5,
          queue: Annotated[list[str], Query()] = [],
          after: str | None = None) -> None: ...

    route = next(r for r in app.routes if isinstance(r, APIRoute))
    assert single_valued_names(route.dependant) == {"task", "from", "limit", "after"}


def _tags(tag: str | None = None) -> str | None:
    return tag


def test_a_name_some_part_of_a_route_reads_as_a_list_may_repeat() -> None:
    app = FastAPI()

    @app.get("/y")
    def y(t: Annotated[str | None, Depends(_tags)],
          tag: Annotated[list[str], Query()] = [],
          page: int = 1) -> None: ...

    route = next(r for r in app.routes if isinstance(r, APIRoute))
    assert single_valued_names(route.dependant) == {"page"}
