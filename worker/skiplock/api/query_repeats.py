"""A query parameter that takes one value is refused when a request repeats it.

FastAPI keeps the last of ``?after=a&after=b`` and drops the rest without a word, so a client
that builds its query string wrongly (a merged link, a retry that appended instead of
replaced) reads a page it did not ask for. A route's list parameters (``queue=``, ``state=``)
are meant to repeat; every other declared one gets a 422 that names it. Undeclared parameters
stay ignored, as FastAPI ignores them. The dashboard's HTML pages read their few parameters
themselves and keep the last, as a browser's form would send them once.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

# What FastAPI reads from a repeated query parameter (fastapi._compat's sequence types):
# these and their subclasses, except text.
_SEQUENCES = (list, tuple, set, frozenset, collections.deque, collections.abc.Sequence)


def takes_many(annotation: Any) -> bool:
    """Whether a parameter's type is a sequence (of one type, or optional), as FastAPI
    decides it."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return takes_many(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(takes_many(a) for a in typing.get_args(annotation) if a is not type(None))
    kind = origin or annotation
    return (isinstance(kind, type) and issubclass(kind, _SEQUENCES)
            and not issubclass(kind, (str, bytes)))


def repeated(items: Iterable[tuple[str, str]], single: frozenset[str]) -> list[str]:
    """The names in ``single`` that occur more than once in a query's items, in name order."""
    counts = Counter(name for name, _ in items if name in single)
    return sorted(name for name, n in counts.items() if n > 1)


def _query_names(dependant: Dependant) -> tuple[set[str], set[str]]:
    """The query parameters of a route and its dependencies: those that take one value and
    those that take many. A pydantic model declared as ``Query()`` contributes its fields."""
    single: set[str] = set()
    many: set[str] = set()
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        model = typing.get_origin(annotation) or annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for n, f in model.model_fields.items():
                (many if takes_many(f.annotation) else single).add(f.alias or n)
        else:
            (many if takes_many(annotation) else single).add(field.alias)
    for sub in dependant.dependencies:
        s, m = _query_names(sub)
        single |= s
        many |= m
    return single, many


def single_valued_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters of a route that take one value only: a name that some part of
    the route reads as a list may repeat."""
    single, many = _query_names(dependant)
    return frozenset(single - many)


async def reject_repeated(request: Request) -> None:
    """Dependency: 422 when the request repeats a single-valued query parameter of its route."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.query_params:
        return
    # Worked out per request (microseconds for a route's few fields) rather than kept:
    # nothing then outlives an application or mixes up two of them.
    names = repeated(request.query_params.multi_items(), single_valued_names(dependant))
    if names:
        raise RequestValidationError([
            {"type": "repeated", "loc": ("query", name),
             "msg": "given more than once; send it once", "input": None}
            for name in names])
