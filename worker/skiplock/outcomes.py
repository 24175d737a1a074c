"""Make a job's outcome storable before it is written: results as jsonb, errors as text.

Postgres refuses values that Python's json module happily produces (``\\u0000``, lone
surrogates, very deep nesting) and one refused value fails the whole statement, so a single bad
result would sink every outcome in its completion batch. Everything here is decided in Python,
per outcome, before the batch is built.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import deque
from typing import TypeAlias

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "MAX_DEPTH",
    "MAX_ERROR_CHARS",
    "NotStorable",
    "describe_exception",
    "storable_result",
    "storable_text",
]

# Postgres's json parser recurses once per nesting level and gives up at max_stack_depth (15
# with the default 2MB: 10,000 levels parse, 20,000 do not), far below what Python builds
# without noticing; 256 leaves room for smaller stacks and the array a batch wraps results in.
# The cap also bounds our own walk: a 100,000-deep list costs 256 steps, not 100,000.
MAX_DEPTH: int = 256
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
MAX_ERROR_CHARS = 4000

_PREFIX = "result is not storable: "
_MESSAGE_CHARS = 300
_KEY_CHARS = 40  # a key longer than this is shown cut in a path
_TYPE_CHARS = 80
_PATH_HEAD_CHARS = 40
_PATH_TAIL_CHARS = 80
_SIZE_SETTING = "SKIPLOCK_MAX_RESULT_BYTES"

# One encoder for every call: json.dumps with keyword arguments builds a new one each time,
# which is most of the cost for a small result. check_circular is off because the markers it
# keeps cost time on every container; a cycle still fails (RecursionError) and the walk names it.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, check_circular=False, separators=(",", ":")
)
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# For reducing encoder output to its skeleton of brackets and string quotes.
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")
_NOT_SKELETON = bytes(set(range(256)) - set(b'[]{}"'))

# A location in the value as a linked list (parent, key-or-index), root None: extending a path
# is one tuple, and the text is built only when there is something to report.
_Path: TypeAlias = "tuple[_Path, str | int] | None"


class NotStorable(ValueError):
    """A result Postgres would refuse; the message says what and where, e.g.
    'result is not storable: NUL character at $.x[2]'."""


def storable_result(value: object, max_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> str:
    """The result as the compact JSON text to store (separators (',', ':')), or NotStorable."""
    try:
        text: str | None = _ENCODER.encode(value)
    except MemoryError:
        raise
    except Exception:
        # TypeError (not JSON), ValueError (NaN, huge int), RecursionError (deep or circular),
        # or whatever a dict subclass's items() raises: the walk says what and where.
        text = None
    if text is not None:
        size = _checked_size(text)
        if size is not None:
            if size > max_bytes:
                raise NotStorable(_message(_size_problem(size, max_bytes)))
            return text
    # Something is wrong, or looks wrong (the text "\u0000" typed by the handler, brackets in
    # strings): the walk is the authority and names the place.
    problem = _find_problem(value, max_bytes)
    if problem is not None:
        raise NotStorable(_message(problem))
    if text is None:
        try:
            text = _ENCODER.encode(value)
        except MemoryError:
            raise
        except Exception as exc:
            # The walk accepts only what the encoder accepts, so this needs a process near its
            # recursion limit or a dict subclass whose items() changes between calls.
            raise NotStorable(_message(f"JSON encoding failed at $ ({_type_label(exc)})")) from exc
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise NotStorable(_message(_size_problem(size, max_bytes)))
    return text


def storable_text(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Error text Postgres always accepts: NUL removed, lone surrogates written as \\udXXX
    escapes (visible, not silently dropped), at most `limit` characters (cut with a suffix like
    ' … [1234 more characters cut]' that itself fits in the limit)."""
    if limit < 0:
        raise ValueError("limit must be >= 0 characters")
    # A str subclass may override replace() and friends; work on the plain string it holds.
    text = str.__str__(text)
    if (
        len(text) <= limit
        and (text.isascii() or not _SURROGATE.search(text))
        and ("\x00" not in text)
    ):
        return text
    text = text.replace("\x00", "")
    text = _SURROGATE.sub(_escape_surrogate, text)
    if len(text) <= limit:
        return text
    # The suffix's length depends on the count it reports, and that count on how much the
    # suffix leaves room for: iterate to the fixed point (two rounds at most in practice).
    keep = limit
    while True:
        suffix = f" … [{len(text) - keep} more characters cut]"
        if len(suffix) >= limit:
            return text[:limit]  # no room for an explanation; the limit still holds
        if limit - len(suffix) == keep:
            return text[:keep] + suffix
        keep = limit - len(suffix)


def describe_exception(exc: BaseException, traceback_frames: int = 5) -> str:
    """'TypeName: message\\n<last frames of the traceback>' passed through storable_text. Must
    never raise: an exception whose __str__ raises or returns a non-str gives
    '<unprintable TypeName: __str__ raised ValueError>' or similar."""
    try:
        name = _type_name(type(exc))
        message = _exception_message(exc, name)
        header = f"{name}: {message}" if message else name  # as Python prints ValueError()
        frames = _frames_text(exc, traceback_frames)
    except Exception:
        # Defence in depth: everything above is written not to raise; if it does anyway, an
        # error record that says so beats losing the job's failure.
        return "<unprintable exception>"
    if not frames:
        return storable_text(header)
    # The frames get at most half the room, so a huge message cannot push them all out, and a
    # short message leaves them the rest.
    frames = storable_text(frames, MAX_ERROR_CHARS // 2)
    header = storable_text(header, MAX_ERROR_CHARS - len(frames) - 1)
    return storable_text(f"{header}\n{frames}")


# ---------------------------------------------------------------------------------------------


def _checked_size(text: str) -> int | None:
    """UTF-8 size of encoder output if nothing in it needs the walk, else None."""
    # The one-character test is a memchr; most results have no backslash at all.
    if "\\" in text and "\\u0000" in text:
        return None
    if text.isascii():
        size = len(text)
    else:
        try:
            # Encoding finds any surrogate and measures the size in one C pass.
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return None
    if size > 2 * MAX_DEPTH and _deeper_than(text, MAX_DEPTH):
        return None
    return size


def _deeper_than(text: str, limit: int) -> bool:
    """Whether encoder output (free of surrogates) nests arrays and objects over limit deep.

    Every step is a C pass over the text: a regex or a Python loop over it would cost more than
    encoding it did.
    """
    # Fewer opening brackets than that, even counting those inside strings, settles it: this is
    # the only cost for nearly every result.
    if text.count("[") + text.count("{") <= limit:
        return False
    data = text.encode("utf-8")  # '\\', '"' and brackets are never inside a multi-byte sequence
    if b"\\" in data:
        # Escapes are pairs, so removing "\\\\" first and then '\\"' leaves only the quotes
        # that open or close strings.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    skeleton = data.translate(_OBJECTS_AS_ARRAYS, _NOT_SKELETON)
    if b'"' in skeleton:
        # Adjacent quotes enclose nothing structural; the rest are strings holding brackets.
        skeleton = skeleton.replace(b'""', b"")
        if b'"' in skeleton:
            skeleton = b"".join(skeleton.split(b'"')[::2])
    # Balanced brackets only now; each round removes the innermost level.
    for _ in range(limit):
        if not skeleton:
            return False
        skeleton = skeleton.replace(b"[]", b"")
    return bool(skeleton)


def _find_problem(value: object, max_bytes: int) -> str | None:
    """The first thing Postgres (or the encoder) would refuse in value, in document order, as
    a message body without the prefix; None if there is none.

    Iterative on purpose: a recursive walk would fail on exactly the deep values it must
    reject. The checks and their order mirror the C encoder (None, True, False, str, int,
    float, list/tuple, dict; subclasses accepted), so the walk accepts what the encoder writes.
    """
    # A lower bound of the encoded size (one byte per character, no escapes) so that a value
    # far over the limit stops the walk early instead of being walked to the end.
    size = 0
    # The containers enclosing the current item, by depth, for cycle detection. The list holds
    # the objects themselves so that an id cannot be reused while it is on the chain (a subclass
    # may hand out fresh containers that nothing else keeps alive).
    chain: list[object] = []
    on_chain: set[int] = set()
    stack: list[tuple[object, _Path, int]] = [(value, None, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or item is True:
            size += 4
        elif item is False:
            size += 5
        elif isinstance(item, str):
            problem = _text_problem(item, "")
            if problem is not None:
                return f"{problem} at {_render(path)}"
            size += len(item) + 2
        elif isinstance(item, int):
            digits = _int_text(item)
            if digits is None:
                return f"integer with more than {_int_digit_limit()} digits at {_render(path)}"
            size += len(digits)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{_float_name(item)} at {_render(path)}"
            size += len(float.__repr__(item))
        elif isinstance(item, list | tuple | dict):
            if depth >= MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels at {_render(path)}"
            for gone in chain[depth:]:
                on_chain.discard(id(gone))
            del chain[depth:]
            if id(item) in on_chain:
                return f"circular reference at {_render(path)}"
            chain.append(item)
            on_chain.add(id(item))
            if isinstance(item, dict):
                members = _members(item, path)
                if isinstance(members, str):
                    return members
                size += 2 + max(2 * len(members) - 1, 0)
                for key, member in reversed(members):
                    size += len(key) + 2
                    stack.append((member, (path, key), depth + 1))
            else:
                try:
                    # What the encoder does too: exact lists and tuples are read directly, a
                    # subclass through its __iter__.
                    elements = list(item)
                except Exception as exc:
                    return _unreadable(item, path, exc)
                size += 2 + max(len(elements) - 1, 0)
                for index in range(len(elements) - 1, -1, -1):
                    stack.append((elements[index], (path, index), depth + 1))
        else:
            return f"object of type {_type_label(item)} at {_render(path)} is not JSON"
        if size > max_bytes:
            return f"$ is over the {_size_text(max_bytes, max_bytes)} limit ({_SIZE_SETTING})"
    return None


def _members(item: dict[object, object], path: _Path) -> list[tuple[str, object]] | str:
    """A dict's members with keys converted as json converts them, or the problem with one."""
    try:
        pairs = [(key, member) for key, member in item.items()]
    except Exception as exc:
        return _unreadable(item, path, exc)
    members: list[tuple[str, object]] = []
    for key, member in pairs:
        converted = _key_text(key)
        if converted is None:
            if isinstance(key, float):
                return f"{_float_name(key)} key at {_render(path)}"
            if isinstance(key, int):
                limit = _int_digit_limit()
                return f"integer key with more than {limit} digits at {_render(path)}"
            return f"key of type {_type_label(key)} at {_render(path)} is not JSON"
        problem = _text_problem(converted, " in key")
        if problem is not None:
            return f"{problem} at {_render((path, converted))}"
        members.append((converted, member))
    return members


def _unreadable(item: object, path: _Path, exc: Exception) -> str:
    kind, error = _type_label(item), _type_label(exc)
    return f"object of type {kind} at {_render(path)} could not be read ({error})"


def _key_text(key: object) -> str | None:
    # json's own conversion and order of tests: str, float, True, False, None, int.
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, float):
        return float.__repr__(key) if math.isfinite(key) else None
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, int):
        return _int_text(key)
    return None


def _text_problem(text: str, where: str) -> str | None:
    if "\x00" in text:
        return f"NUL character{where}"
    if not text.isascii():
        found = _SURROGATE.search(text)
        if found is not None:
            return f"lone surrogate U+{ord(found.group()):04X}{where}"
    return None


def _int_text(number: int) -> str | None:
    try:
        return int.__repr__(number)
    except ValueError:  # over sys.get_int_max_str_digits(), exactly when json.dumps fails
        return None


def _int_digit_limit() -> int:
    return sys.get_int_max_str_digits()


def _float_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"


def _render(path: _Path) -> str:
    segments: list[str] = []
    while path is not None:
        path, key = path
        segments.append(_segment(key))
    segments.reverse()
    if sum(map(len, segments)) <= _PATH_HEAD_CHARS + _PATH_TAIL_CHARS:
        return "$" + "".join(segments)
    # A deep path keeps where it starts and where it ends; the middle is counted, not shown.
    head: list[str] = []
    used = 0
    for segment in segments:
        if used + len(segment) > _PATH_HEAD_CHARS and head:
            break
        head.append(segment)
        used += len(segment)
    tail: list[str] = []
    used = 0
    for segment in reversed(segments[len(head) :]):
        if used + len(segment) > _PATH_TAIL_CHARS and tail:
            break
        tail.append(segment)
        used += len(segment)
    tail.reverse()
    hidden = len(segments) - len(head) - len(tail)
    middle = f"…({hidden} more)…" if hidden else ""
    return "$" + "".join(head) + middle + "".join(tail)


def _segment(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    if len(key) <= _KEY_CHARS and _IDENTIFIER.fullmatch(key):
        return "." + key
    cut = len(key) > _KEY_CHARS
    # json quoting escapes NUL and control characters; surrogates it leaves raw, so write them
    # as the \\uXXXX escapes they would be in JSON.
    quoted = _SURROGATE.sub(_escape_surrogate, json.dumps(key[:_KEY_CHARS], ensure_ascii=False))
    return f"[{quoted}…]" if cut else f"[{quoted}]"


def _escape_surrogate(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"


def _size_problem(size: int, max_bytes: int) -> str:
    return (
        f"$ is {_size_text(size, max_bytes)}, over the {_size_text(max_bytes, size)} limit "
        f"({_SIZE_SETTING})"
    )


def _size_text(size: int, other: int) -> str:
    """size for a person; in bytes when rounding would make it look equal to other."""
    shown, other_shown = _human(size), _human(other)
    if shown == other_shown and size != other:
        return f"{size:,} B"
    return shown


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def _message(body: str) -> str:
    return storable_text(_PREFIX + body, _MESSAGE_CHARS)


def _type_label(obj: object) -> str:
    # Short enough that the path after it survives the cap on the message's length.
    return storable_text(_type_name(type(obj)), _TYPE_CHARS)


def _type_name(kind: type) -> str:
    # As Python's traceback prints it: builtins bare, others with their module. Read through
    # type's own descriptors and copied to plain str, so a hostile metaclass or str subclass
    # cannot run code here.
    try:
        name = type.__dict__["__qualname__"].__get__(kind)
        module = type.__dict__["__module__"].__get__(kind)
    except Exception:
        return "<unnamed type>"
    name = str.__str__(name) if isinstance(name, str) else "<unnamed type>"
    module = str.__str__(module) if isinstance(module, str) else None
    if module is not None and module not in ("builtins", "__main__"):
        return f"{module}.{name}"
    return name


def _exception_message(exc: BaseException, name: str) -> str:
    try:
        message = type(exc).__str__(exc)
    except Exception as problem:
        return f"<unprintable {name}: __str__ raised {_type_name(type(problem))}>"
    if not isinstance(message, str):
        return f"<unprintable {name}: __str__ returned {_type_name(type(message))}>"
    return str.__str__(message)


def _frames_text(exc: BaseException, count: int) -> str:
    if count <= 0:
        return ""
    # walk the traceback ourselves rather than through the traceback module: it would read
    # source files through linecache, and this module does no I/O.
    frames: deque[tuple[str, int | None, str]] = deque(maxlen=count)
    total = 0
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, tb.tb_lineno, code.co_qualname))
        total += 1
        tb = tb.tb_next
    lines = [f"  … {total - len(frames)} earlier frames"] if total > len(frames) else []
    lines += [f'  File "{file}", line {line}, in {function}' for file, line, function in frames]
    return "\n".join(lines)
