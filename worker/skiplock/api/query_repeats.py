"""A query parameter that takes one value is refused when a request repeats it.

FastAPI keeps the last of ``?after=a&after=b`` and drops the rest without a word, so a client
that builds its query string wrongly (a merged link, a retry that appended instead of
replaced) reads a page it did not ask for. A route's list parameters (``queue=``, ``state=``)
are meant to repeat; every other declared one gets a 422 that names it. Undeclared parameters
stay ignored, as FastAPI ignores them.
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

_SEQUENCES = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Set)


def takes_many(annotation: Any) -> bool:
    """Whether a parameter's type is a sequence (of one type, or optional)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return takes_many(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(takes_many(a) for a in typing.get_args(annotation) if a is not type(None))
    return origin in _SEQUENCES or annotation in _SEQUENCES


def repeated(items: Iterable[tuple[str, str]], single: frozenset[str]) -> list[str]:
    """The names in ``single`` that occur more than once in a query's items, in name order."""
    counts = Counter(name for name, _ in items if name in single)
    return sorted(name for name, n in counts.items() if n > 1)


def single_valued_names(dependant: Dependant) -> frozenset[str]:
    """The query parameters of a route (its dependencies' too) that take one value; a
    pydantic model declared as ``Query()`` contributes its fields."""
    names: set[str] = set()
    for field in dependant.query_params:
        annotation = field.field_info.annotation
        model = typing.get_origin(annotation) or annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(f.alias or n for n, f in model.model_fields.items()
                         if not takes_many(f.annotation))
        elif not takes_many(annotation):
            names.add(field.alias)
    for sub in dependant.dependencies:
        names |= single_valued_names(sub)
    return frozenset(names)


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
