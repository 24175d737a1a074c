"""Task signatures as data, and argument validation against them (pure functions).

Workers record each task's parameters in the database when they start, so a producer that
has never imported the task module can still reject an unknown task or bad arguments.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InvalidArguments, UnknownTask

# JSON types a parameter annotation maps to; anything else is accepted as "any".
_JSON_TYPES: dict[Any, str] = {
    int: "integer",
    float: "number",
    str: "string",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


def _json_types(annotation: Any) -> list[str] | None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        found: list[str] = []
        for arg in typing.get_args(annotation):
            sub = _json_types(arg)
            if sub is None:
                return None
            found.extend(sub)
        return sorted(set(found))
    base = origin or annotation
    name = _JSON_TYPES.get(base)
    if name is None:
        return None
    return ["integer", "number"] if name == "number" else [name]


def describe_params(func: Callable[..., Any]) -> dict[str, Any]:
    """The handler's parameters after ``ctx``: names, required, JSON types, **kwargs."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    params = list(inspect.signature(func).parameters.values())[1:]  # skip the JobContext
    described: dict[str, Any] = {"params": [], "var_keyword": False}
    for p in params:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            described["var_keyword"] = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        described["params"].append(
            {
                "name": p.name,
                "required": p.default is inspect.Parameter.empty,
                "types": _json_types(hints.get(p.name, p.annotation)),
            }
        )
    return described


def _json_type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def validate_args(task: str, params: Mapping[str, Any], args: Mapping[str, Any]) -> None:
    """Raise InvalidArguments naming every argument that does not fit."""
    declared = {p["name"]: p for p in params.get("params", [])}
    problems: list[str] = []
    missing = [n for n, p in declared.items() if p["required"] and n not in args]
    if missing:
        problems.append("missing required " + ", ".join(repr(m) for m in missing))
    if not params.get("var_keyword"):
        unknown = sorted(set(args) - set(declared))
        if unknown:
            problems.append(
                "unexpected "
                + ", ".join(repr(u) for u in unknown)
                + f" (accepted: {', '.join(declared) or 'none'})"
            )
    for name, value in args.items():
        spec = declared.get(name)
        if spec is None or not spec.get("types"):
            continue
        actual = _json_type_of(value)
        if actual not in spec["types"]:
            problems.append(f"{name!r} must be {' or '.join(spec['types'])}, got {actual}")
    if problems:
        raise InvalidArguments(f"arguments for task {task!r} do not fit: " + "; ".join(problems))


def check_known(task: str, catalogue: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """Return the task's entry, or raise UnknownTask listing what is known."""
    entry = catalogue.get(task)
    if entry is None:
        known = ", ".join(sorted(catalogue)) or "none"
        raise UnknownTask(
            f"unknown task {task!r}: running workers registered {known}. "
            "Check the name, or start a worker that defines it (or pass validate=False)."
        )
    return entry
