import collections
import enum
import json
import math
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock.outcomes import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_DEPTH,
    MAX_ERROR_CHARS,
    NotStorable,
    _deeper_than,
    _find_problem,
    describe_exception,
    storable_result,
    storable_text,
)

PREFIX = "result is not storable: "
MiB = 1024 * 1024
SURROGATE = re.compile("[\ud800-\udfff]")
# A NUL escape in JSON text: "\u0000" preceded by an even number of backslashes (an odd number
# means the handler's string held the six characters \u0000, which is fine).
NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# --- an independent, deliberately simple model of what is storable ---------------------------


def bad_text(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def bad_int(number: int) -> bool:
    return abs(number) >= 10 ** sys.get_int_max_str_digits()


def key_str(key: object) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, float):
        return float.__repr__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    assert isinstance(key, int)
    return int.__repr__(key)


def bad_key(key: object) -> bool:
    if isinstance(key, str):
        return bad_text(key)
    if isinstance(key, float):
        return not math.isfinite(key)
    if key is None or isinstance(key, bool):
        return False
    if isinstance(key, int):
        return bad_int(key)
    return True


def bad(value: object, depth: int = 0) -> bool:
    """True if Postgres (or json) would refuse value; recursive, so for small values only."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(value, str):
        return bad_text(value)
    if isinstance(value, int):
        return bad_int(value)
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        return depth >= MAX_DEPTH or any(bad(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return depth >= MAX_DEPTH or any(bad_key(k) or bad(v, depth + 1) for k, v in value.items())
    return True


def depth(value: object) -> int:
    if isinstance(value, list | tuple):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def normalised(value: object) -> object:
    if isinstance(value, list | tuple):
        return [normalised(item) for item in value]
    if isinstance(value, dict):
        return {key_str(k): normalised(v) for k, v in value.items()}
    return value


def reference_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def strings_in(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    return []


# --- strategies --------------------------------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Listish(list):
    pass


class Unserialisable:
    pass


TRICKY = ["\\", '"', "[", "]", "{", "}", "é", "😀", "\u2028", "\n", "\x1f"]
# Not NUL or surrogates, but they make the encoder's output look suspicious to the fast path.
LOOKALIKES = ["\\u0000", "a\\u0000b", "\\\\u0000", "\\ud83d", "[[[[", "{{{{"]

any_char = (
    st.characters(codec=None, categories=None)
    | st.characters(categories=["Cs"])  # lone surrogates, rare in the line above
    | st.sampled_from(["\x00", "\ud83d", "\udc00", *TRICKY])
)
clean_char = st.characters(exclude_categories=["Cs"], exclude_characters="\x00") | st.sampled_from(
    TRICKY
)
any_text = st.text(any_char, max_size=6) | st.sampled_from(LOOKALIKES)
clean_text = st.text(clean_char, max_size=6) | st.sampled_from(LOOKALIKES)

limit = sys.get_int_max_str_digits()
# built by map: hypothesis reprs its strategies, and repr() of these ints raises ValueError
fine_big_ints = st.sampled_from([1, -1]).map(lambda sign: sign * (10**limit - 1))
bad_big_ints = st.tuples(st.sampled_from([1, -1]), st.sampled_from([limit, limit + 700])).map(
    lambda sign_digits: sign_digits[0] * 10 ** sign_digits[1]
)

clean_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | fine_big_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text
    | st.just(Colour.RED)
    | clean_text.map(Text)
)
# a clean text with one NUL or lone surrogate somewhere in it
bad_text_values = st.builds(
    lambda a, b, c: a + b + c, any_text, st.sampled_from(["\x00", "\ud83d", "\udfff"]), any_text
)
bad_scalars = (
    st.sampled_from([math.nan, math.inf, -math.inf])
    | bad_text_values
    | bad_big_ints
    | st.builds(Unserialisable)
    | st.builds(object)
    | st.sets(st.integers(), max_size=2)
    | st.binary(max_size=3)
    | st.complex_numbers(max_magnitude=10)
)
clean_keys = (
    clean_text
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)
bad_keys = (
    bad_text_values
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | bad_big_ints
    | st.tuples(st.integers())
    | st.frozensets(st.integers(), max_size=2)
    | st.binary(max_size=2)
)


def json_like(
    scalars: st.SearchStrategy[object], keys: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.lists(inner, max_size=4).map(tuple)
            | st.lists(inner, max_size=3).map(Listish)
            | st.dictionaries(keys, inner, max_size=4)
            | st.dictionaries(keys, inner, max_size=3).map(collections.OrderedDict)
        ),
        max_leaves=12,
    )


clean_values = json_like(clean_scalars, clean_keys)
# Mostly clean, so that a bad thing is usually alone and the "iff" is tested both ways.
any_values = json_like(
    st.one_of(clean_scalars, clean_scalars, clean_scalars, bad_scalars),
    st.one_of(clean_keys, clean_keys, clean_keys, bad_keys),
)
max_bytes = st.integers(min_value=0, max_value=400) | st.just(DEFAULT_MAX_RESULT_BYTES)


def assert_good_message(message: str) -> None:
    assert message.startswith(PREFIX)
    assert "$" in message
    assert "\x00" not in message
    message.encode("utf-8")  # no surrogates
    assert len(message) <= 300


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=400)
@given(any_values, max_bytes)
def test_result_is_stored_faithfully_or_refused_with_a_storable_message(
    value: object, limit_bytes: int
) -> None:
    try:
        text = storable_result(value, limit_bytes)
    except NotStorable as refused:
        assert_good_message(str(refused))
        return
    assert json.loads(text) == normalised(value)
    assert text == reference_json(value)
    assert len(text.encode("utf-8")) <= limit_bytes
    assert NUL_ESCAPE.search(text) is None
    assert not any(bad_text(s) for s in strings_in(json.loads(text)))


@settings(max_examples=400)
@given(any_values, max_bytes)
def test_refused_exactly_when_something_is_bad_or_too_big(value: object, limit_bytes: int) -> None:
    expected = bad(value) or len(reference_json(value).encode("utf-8")) > limit_bytes
    try:
        storable_result(value, limit_bytes)
    except NotStorable:
        assert expected
    else:
        assert not expected


@settings(max_examples=300)
@given(clean_values)
def test_clean_values_are_always_stored(value: object) -> None:
    assert json.loads(storable_result(value)) == normalised(value)


# strings made only of what the text check must see through
soup_text = st.text(st.sampled_from('"\\[]{}a'), max_size=8)
bracket_soup = st.recursive(
    soup_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(soup_text, inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=600)
@given(clean_values | bracket_soup, st.integers(0, 8))
def test_nesting_is_read_from_the_text_as_the_value_has_it(value: object, levels: int) -> None:
    # MAX_DEPTH is fixed, so the text check is tested with small limits on shallow values,
    # whose strings are full of brackets, quotes and backslashes.
    assert _deeper_than(reference_json(value), levels) == (depth(value) > levels)


@settings(max_examples=300)
@given(clean_values)
def test_a_clean_value_exactly_at_the_limit_fits_and_one_byte_less_does_not(
    value: object,
) -> None:
    size = len(reference_json(value).encode("utf-8"))
    assert storable_result(value, size) == reference_json(value)
    assert "limit" in refusal(value, size - 1)
    # the walk's early size stop is a lower bound: never refuses what fits
    assert _find_problem(value, size) is None


@settings(max_examples=400)
@given(any_values, max_bytes)
def test_the_walk_agrees_with_the_model_and_never_overestimates_size(
    value: object, limit_bytes: int
) -> None:
    # The walk runs only when the fast path is in doubt; test it on every value directly.
    problem = _find_problem(value, 10**12)
    assert (problem is None) == (not bad(value)), problem
    if not bad(value) and _find_problem(value, limit_bytes) is not None:
        assert len(reference_json(value).encode("utf-8")) > limit_bytes


@given(
    st.text(any_char, max_size=80) | st.text(any_char, min_size=300, max_size=600),
    st.integers(0, 200),
)
def test_storable_text_is_always_storable(text: str, limit_chars: int) -> None:
    out = storable_text(text, limit_chars)
    assert "\x00" not in out
    out.encode("utf-8")
    assert len(out) <= limit_chars
    if not bad_text(text) and len(text) <= limit_chars:
        assert out == text


@given(st.text(any_char, min_size=1, max_size=600), st.integers(40, 300))
def test_storable_text_keeps_the_head_and_says_how_much_was_cut(
    text: str, limit_chars: int
) -> None:
    cleaned = SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text.replace("\x00", ""))
    out = storable_text(text, limit_chars)
    if len(cleaned) <= limit_chars:
        assert out == cleaned
    else:
        head, suffix = out.split(" … [", 1)
        assert cleaned.startswith(head)
        assert suffix == f"{len(cleaned) - len(head)} more characters cut]"
        assert len(out) == limit_chars


class Hostile(str):
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no")

    __hash__ = str.__hash__


def make_exception(kind: str, message: str) -> BaseException:
    def raising_str(self: BaseException) -> str:
        raise ValueError(message)

    def recursive_str(self: BaseException) -> str:
        return str(self)

    behaviours: dict[str, object] = {
        "raises": raising_str,
        "returns int": lambda self: 42,
        "returns None": lambda self: None,
        "returns hostile str": lambda self: Hostile(message),
        "recurses": recursive_str,
    }
    if kind == "plain":
        return ValueError(message)
    if kind == "args":
        return KeyError(message, b"\x00", object())
    if kind == "nameless":
        cls = type("Odd", (Exception,), {})
        cls.__qualname__ = "Odd\x00\ud83d" + message
        cls.__module__ = Hostile("mod")
        return cls(message)
    return type("Weird", (Exception,), {"__str__": behaviours[kind]})(message)


def raise_nested(exc: BaseException, depth: int) -> None:
    if depth:
        raise_nested(exc, depth - 1)
    raise exc


@given(
    st.sampled_from(
        [
            "plain",
            "args",
            "nameless",
            "raises",
            "returns int",
            "returns None",
            "returns hostile str",
            "recurses",
        ]
    ),
    st.text(any_char, max_size=40) | st.builds(lambda c, n: c * n, any_char, st.integers(0, 9000)),
    st.integers(0, 12),
    st.integers(-1, 8),
)
def test_describe_exception_never_raises_and_is_storable(
    kind: str, message: str, depth: int, frames: int
) -> None:
    exc = make_exception(kind, message)
    try:
        raise_nested(exc, depth)
    except Exception as caught:
        out = describe_exception(caught, frames)
    assert "\x00" not in out
    out.encode("utf-8")
    assert 0 < len(out) <= MAX_ERROR_CHARS
    if frames > 0:
        assert 'File "' in out
        # the test's own frame and depth + 1 of raise_nested
        assert out.count("\n  File ") == min(frames, depth + 2)


# --- hand-picked cases -------------------------------------------------------------------------


def refusal(value: object, limit_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> str:
    with pytest.raises(NotStorable) as refused:
        storable_result(value, limit_bytes)
    message = str(refused.value)
    assert_good_message(message)
    return message


def nested_list(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_nul_in_a_string_is_named_with_its_path() -> None:
    assert refusal({"x": "a\u0000b"}) == "result is not storable: NUL character at $.x"
    assert refusal({"x": [1, 2, "\x00"]}) == "result is not storable: NUL character at $.x[2]"


def test_nan_and_infinity() -> None:
    assert refusal(float("nan")) == "result is not storable: NaN at $"
    assert refusal({"a": [0, 1, 2, math.inf]}) == "result is not storable: Infinity at $.a[3]"
    assert refusal([-math.inf]) == "result is not storable: -Infinity at $[0]"
    assert refusal({math.nan: 1}) == "result is not storable: NaN key at $"


def test_lone_surrogates_in_values_and_keys() -> None:
    assert refusal({"k": ["x\ud83d"]}) == "result is not storable: lone surrogate U+D83D at $.k[0]"
    # a "pair" is two lone surrogates to Python; to Postgres an unpaired escape each
    assert refusal("\ud83d\ude00") == "result is not storable: lone surrogate U+D83D at $"
    assert refusal({"\udc80": 1}) == (
        'result is not storable: lone surrogate U+DC80 in key at $["\\udc80"]'
    )


def test_a_100000_deep_list_is_refused_without_recursion_error() -> None:
    message = refusal(nested_list(100_000))
    assert message.startswith("result is not storable: nested deeper than 256 levels at $[0][0]")
    assert "more)" in message


@pytest.mark.parametrize("container", ["list", "dict"])
def test_depth_limit_is_exactly_max_depth(container: str) -> None:
    def deep(levels: int) -> object:
        value: object = "leaf"
        for _ in range(levels):
            value = [value] if container == "list" else {"k": value}
        return value

    assert json.loads(storable_result(deep(MAX_DEPTH))) == deep(MAX_DEPTH)
    assert "nested deeper than 256 levels" in refusal(deep(MAX_DEPTH + 1))


def test_brackets_inside_strings_are_not_nesting() -> None:
    value = ["[" * 1000 + "{" * 1000, {"[[[": "]]]" * 500}, '\\"[[', "\\", '"', "\n[" * 300]
    assert json.loads(storable_result(value)) == value
    deep = nested_list(MAX_DEPTH - 1)
    assert json.loads(storable_result(["[\\" * 300, deep, '"]' * 300])) == [
        "[\\" * 300,
        deep,
        '"]' * 300,
    ]
    assert "nested deeper" in refusal(["[\\" * 300, [deep], '"]' * 300])


def test_deep_but_shallower_than_json_recursion_limit_is_caught_on_the_fast_path() -> None:
    # 300 levels encode fine in Python, so only the depth check on the text can refuse them
    value = nested_list(300)
    reference_json(value)
    assert "nested deeper than 256 levels" in refusal(value)


def test_text_of_backslash_u0000_is_not_a_nul() -> None:
    for text in ["\\u0000", "a\\u0000", "\\\\\\u0000"]:
        assert json.loads(storable_result({"t": text})) == {"t": text}
    assert refusal(["\\u0000", "\\\x00"]) == "result is not storable: NUL character at $[1]"


def test_a_3_mib_string_over_a_1_mib_limit() -> None:
    assert refusal("a" * (3 * MiB), MiB) == (
        "result is not storable: $ is 3.0 MiB, over the 1.0 MiB limit (SKIPLOCK_MAX_RESULT_BYTES)"
    )


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    assert storable_result("é" * 400_000, MiB)  # 800,000 bytes
    assert "over the 1.0 MiB limit" in refusal("é" * 600_000, MiB)  # 1,200,000 bytes
    just_over = "a" * (MiB - 1)  # plus two quotes
    assert "1,048,577 B, over the 1,048,576 B limit" in refusal(just_over, MiB)
    assert storable_result("a" * (MiB - 2), MiB)


def test_a_huge_bad_value_stops_at_the_size_limit() -> None:
    value = ["x" * 1000] * 10_000 + [{1, 2}]
    assert refusal(value, MiB) == (
        "result is not storable: $ is over the 1.0 MiB limit (SKIPLOCK_MAX_RESULT_BYTES)"
    )
    assert "object of type set at $[10000]" in refusal(value, 100 * MiB)


def test_circular_references() -> None:
    loop: list[object] = [1]
    loop.append(loop)
    assert refusal(loop) == "result is not storable: circular reference at $[1]"
    me: dict[str, object] = {"a": {}}
    me["a"] = {"b": [me]}
    assert refusal(me) == "result is not storable: circular reference at $.a.b[0]"


def test_shared_references_are_not_circular() -> None:
    shared = {"x": [1, 2]}
    assert json.loads(storable_result([shared, shared, {"again": shared}])) == [
        shared,
        shared,
        {"again": shared},
    ]


def test_path_rendering() -> None:
    assert refusal({"a b": math.nan}) == 'result is not storable: NaN at $["a b"]'
    assert refusal({"ok_1": {"2x": [0, {'q"': math.nan}]}}) == (
        'result is not storable: NaN at $.ok_1["2x"][1]["q\\""]'
    )
    assert refusal({7: math.nan}) == 'result is not storable: NaN at $["7"]'
    long_key = "k" * 500
    message = refusal({long_key: math.nan})
    assert message == f'result is not storable: NaN at $["{"k" * 40}"…]'
    assert refusal({"a\x00b": 1}) == (
        'result is not storable: NUL character in key at $["a\\u0000b"]'
    )


def test_type_names_and_bad_keys() -> None:
    assert refusal({"a": [Unserialisable()]}) == (
        "result is not storable: object of type tests.unit.test_outcomes.Unserialisable "
        "at $.a[0] is not JSON"
    )
    assert refusal(b"x") == "result is not storable: object of type bytes at $ is not JSON"
    assert refusal({(1, 2): 1}) == "result is not storable: key of type tuple at $ is not JSON"


def test_message_with_a_long_hostile_type_name_is_capped() -> None:
    cls = type("X", (), {})
    cls.__qualname__ = "N\x00\ud83d" * 1000
    message = refusal([cls()])
    assert "more characters cut] at $[0] is not JSON" in message


def test_big_integers() -> None:
    fine = 10**limit - 1
    assert storable_result([fine]) == f"[{fine}]"
    assert refusal({"n": [0, 10**limit]}) == (
        f"result is not storable: integer with more than {limit} digits at $.n[1]"
    )


def test_keys_convert_as_json_converts_them() -> None:
    assert json.loads(storable_result({True: 1, False: 2, None: 3, 1.5: 4, 10: 5})) == {
        "true": 1,
        "false": 2,
        "null": 3,
        "1.5": 4,
        "10": 5,
    }


def test_subclasses_are_encoded_as_json_encodes_them() -> None:
    class Sneaky(list):
        def __iter__(self):
            return iter([math.nan])

    # the encoder iterates a list subclass (it reads only exact lists and tuples directly)
    with pytest.raises(ValueError):
        reference_json(Sneaky([1]))
    assert refusal(Sneaky([1])) == "result is not storable: NaN at $[0]"
    assert storable_result({Colour.RED: Colour.RED, "t": Text("x")}) == '{"1":1,"t":"x"}'


def test_a_dict_whose_items_raise_is_refused_not_crashed() -> None:
    class Broken(dict):
        def items(self):
            raise KeyError("gone")

    assert "could not be read (KeyError)" in refusal({"x": Broken(a=1)})


def test_compact_output() -> None:
    assert storable_result({"sum": 3}) == '{"sum":3}'
    assert storable_result({"é": ["ü", 1.5, None, True]}) == '{"é":["ü",1.5,null,true]}'
    assert storable_result(()) == "[]"


def test_storable_text_examples() -> None:
    assert storable_text("a\x00b\ud83dc") == "ab\\ud83dc"
    assert storable_text("x" * 100, 40) == "x" * 13 + " … [87 more characters cut]"
    assert storable_text("x" * 100, 10) == "x" * 10
    assert storable_text("", 0) == ""
    with pytest.raises(ValueError):
        storable_text("x", -1)


def test_describe_exception_examples() -> None:
    def handler() -> None:
        raise ValueError("boom\x00 \udc80")

    try:
        handler()
    except ValueError as exc:
        text = describe_exception(exc)
    first, *frames = text.split("\n")
    assert first == "ValueError: boom \\udc80"
    assert frames[-1].endswith(", in test_describe_exception_examples.<locals>.handler")
    assert describe_exception(ValueError()) == "ValueError"
    assert describe_exception(make_exception("raises", "x")) == (
        "tests.unit.test_outcomes.Weird: "
        "<unprintable tests.unit.test_outcomes.Weird: __str__ raised ValueError>"
    )
    assert describe_exception(make_exception("returns int", "x")).endswith("__str__ returned int>")


def test_describe_exception_keeps_frames_when_the_message_is_huge() -> None:
    try:
        raise_nested(RuntimeError("m" * 100_000), 20)
    except RuntimeError as exc:
        text = describe_exception(exc, traceback_frames=3)
    assert len(text) <= MAX_ERROR_CHARS
    assert "more characters cut]" in text
    assert "  … 19 earlier frames" in text
    assert text.count("\n  File ") == 3


def test_fresh_containers_from_a_subclass_are_not_mistaken_for_cycles() -> None:
    # each element is new and referenced by nothing else, so its id could be reused at once
    class Fresh(list):
        def __iter__(self):
            return iter([[[i]] for i in range(3)])

    value = [Fresh([0]), Fresh([0]), {"f": Fresh([0])}]
    assert _find_problem(value, MiB) is None
    assert json.loads(storable_result(value)) == [[[[0]], [[1]], [[2]]]] * 2 + [
        {"f": [[[0]], [[1]], [[2]]]}
    ]
