"""Keep secrets out of logs and error messages.

A database URL may be malformed in any way a person can type it (an unencoded ``@``, ``/``,
``%`` or space in the password, the password in a ``?password=`` query parameter, a key=value
DSN with quotes and backslashes). Nothing here trusts the URL to be well formed: the summary is
built from the parts that are never secret (user, host, port, database), each shown only when
it is made of characters a name has, and the scrubber removes every span of the URL that could
be the password, however libpq or a person would read it.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote

# Characters a user, database or host name has; anything else in one of them is shown as "?"
# (a malformed URL can shift a piece of the password into the place of a name).
_NAME = re.compile(r"[A-Za-z0-9_.%+$~-]{1,128}")
_HOST = re.compile(r"[A-Za-z0-9_.%:\[\],-]{1,255}")
_PORT = re.compile(r"[0-9,]{1,64}")
_URL_SCHEME = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.-]*://")
# ``password = value`` in free text (a DSN echoed in a driver message): a quoted value with
# backslash escapes, or a bare one up to white space.
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
# A query parameter that carries the password (``?password=...&``, ``&passfile`` is a path).
# To the end of the URL: an unencoded "&" or "#" in it would make the rest look like more
# parameters, which are as secret.
_QUERY_PASSWORD = re.compile(r"[?&]password=(.*)", re.IGNORECASE | re.DOTALL)
# What libpq quotes with "..." and psycopg (its own DNS lookup) with '...'.
_QUOTED = re.compile(r'"([^"]*)"|\'([^\']*)\'')


def _shown(value: str | None, pattern: re.Pattern[str]) -> str | None:
    if not value:
        return None
    return value if pattern.fullmatch(value) else "?"


def _describe(user: str | None, host: str | None, port: str | None, db: str | None) -> str:
    shown_user = _shown(user, _NAME)
    shown_port = _shown(port, _PORT)
    shown_db = _shown(db, _NAME)
    return (
        (f"{shown_user}@" if shown_user else "")
        + (_shown(host, _HOST) or "localhost")
        + (f":{shown_port}" if shown_port else "")
        + (f"/{shown_db}" if shown_db else "")
    )


def _url_parts(url: str) -> tuple[str | None, str, str | None, str | None, list[tuple[int, int]]]:
    """(user, host, port, db, secret spans) of a URL, read without trusting its syntax.

    The userinfo ends at the *last* ``@``: an unencoded ``@``, ``/``, ``?`` or ``#`` in the
    password is the common mistake, and libpq (which stops at the first ``@`` or ``/``) then
    reads part of the password as the host or port. Everything from the first ``:`` of the
    userinfo to that ``@`` is treated as secret, and so is every ``password=`` query value."""
    start = _URL_SCHEME.match(url)
    offset = start.end() if start else 0
    query = _QUERY_PASSWORD.search(url, offset)
    spans: list[tuple[int, int]] = [(query.start(1), len(url))] if query else []
    # an "@" inside the query's password is not the end of the userinfo
    rest = url[offset:query.start(1)] if query else url[offset:]
    user: str | None = None
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        colon = userinfo.find(":")
        user = userinfo if colon < 0 else userinfo[:colon]
        if colon >= 0:
            spans.append((offset + colon + 1, offset + at))
        hostpart = rest[at + 1:]
    else:
        hostpart = rest
    authority, _, tail = hostpart.partition("/")
    authority = re.split(r"[?#]", authority, maxsplit=1)[0]
    db = re.split(r"[?#]", tail, maxsplit=1)[0] if tail else None
    host, port = authority, None
    if not authority.endswith("]") and ":" in authority:
        # the last host's port (a multi-host URL lists host:port,host:port)
        head, _, maybe_port = authority.rpartition(":")
        if "]" not in maybe_port:
            host, port = head, maybe_port
    return user, host, port, db, spans


def _dsn_pairs(dsn: str) -> tuple[dict[str, str], list[tuple[int, int]]] | None:
    """The keywords of a key=value DSN, and the spans of its password values; None when it does
    not parse (libpq's rules: ``key = value``, a value quoted with ``'`` and ``\\`` escapes)."""
    pairs: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return pairs, spans
        key_start = i
        while i < n and not dsn[i].isspace() and dsn[i] != "=":
            i += 1
        key = dsn[key_start:i].lower()
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n or dsn[i] != "=" or not key:
            return None
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        value_start = i
        chars: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while i < n and dsn[i] != "'":
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(dsn[i])
                i += 1
            if i >= n:  # unterminated: the rest of the string is the value
                if key == "password":
                    spans.append((value_start, n))
                return None
            i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(dsn[i])
                i += 1
        if key == "password":
            spans.append((value_start, i))
        pairs[key] = "".join(chars)


def redact_url(url: str | None) -> str:
    """Describe a database URL or DSN without its password: ``user@host:port/db``.

    A part that does not look like a name (a malformed URL can put a piece of the password
    there) is shown as ``?``; a DSN that does not parse is not described at all."""
    if not url:
        return "<no database url>"
    if _URL_SCHEME.match(url):
        return _describe(*_url_parts(url)[:4])
    parsed = _dsn_pairs(url)
    if parsed is None:
        return "<unparseable database url>"
    pairs = parsed[0]
    return _describe(pairs.get("user"), pairs.get("host") or pairs.get("hostaddr"),
                     pairs.get("port"), pairs.get("dbname"))


def _secret_spans(url: str) -> list[tuple[int, int]]:
    if _URL_SCHEME.match(url):
        return _url_parts(url)[4]
    parsed = _dsn_pairs(url)
    if parsed is not None:
        return parsed[1]
    # Unparseable (an unquoted space in the password, a quote left open): everything after
    # each "password=" may be the password; with no such keyword, all of it may be.
    return [(m.start(2), len(url)) for m in _KEYWORD_PASSWORD.finditer(url)] or [(0, len(url))]


def secrets_of(url: str | None) -> list[str]:
    """Every string that may be (part of) the URL's password: the raw spans, and their
    percent-decoded and unquoted forms, longest first."""
    if not url:
        return []
    found: set[str] = set()
    for start, end in _secret_spans(url):
        raw = url[start:end]
        for candidate in (raw, unquote(raw), raw.strip("'"), unquote(raw.strip("'")),
                          raw.strip("'").replace("\\'", "'").replace("\\\\", "\\")):
            if candidate:
                found.add(candidate)
                found.add(repr(candidate)[1:-1])  # as a repr() or a log's %r shows it
    return sorted(found, key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """Remove a URL's password (and the URL itself) from a driver message.

    Besides the password itself (raw and decoded), a quoted token in the text that overlaps
    the password's place in the URL is removed: libpq quotes what it could not read (``invalid
    integer value "pa" for connection option "port"`` for ``app:pa/ss@host``)."""
    if url:
        text = text.replace(url, redact_url(url))
        spans = _secret_spans(url)
        secrets = secrets_of(url)

        def quoted(m: re.Match[str]) -> str:
            token = m.group(1) if m.group(1) is not None else m.group(2)
            # as written, and unescaped (psycopg shows a host name as repr() would)
            forms = {token, token.replace("\\\\", "\\").replace("\\'", "'")}
            # one character ('%', '@') is a piece of any password: not worth hiding alone
            if len(token) > 1 and any(
                any(form in s for s in secrets)
                or any(
                    start < pos + len(form) and pos < end
                    for start, end in spans
                    for pos in _positions(url, form)
                )
                for form in forms
            ):
                return m.group(0)[0] + "***" + m.group(0)[-1]
            return m.group(0)

        # pieces first, while the text still has them as the URL had them
        text = _mask_pieces(text, url, spans)
        # the whole secrets next: a quote inside the password would pair up with another
        for secret in secrets:
            text = text.replace(secret, "***")
        text = _QUOTED.sub(quoted, text)
    return _KEYWORD_PASSWORD.sub(r"\1***", text)


_PIECE = 4  # shorter pieces of a URL are too common in any text to mask on sight


def _mask_pieces(text: str, url: str, spans: list[tuple[int, int]]) -> str:
    """Mask every character of ``text`` that is a secret character of ``url`` within a shared
    run of at least _PIECE characters: libpq and psycopg quote pieces of a malformed URL
    (``failed to resolve host ''0000"@127.0.0.1'`` for the password ``0@'0000"``), and quotes
    in the password make their quoting ambiguous. The URL is also tried as repr() shows it
    (psycopg does, for a host name)."""
    masked = [False] * len(text)
    for variant, variant_spans in (
        (url, spans),
        _escaped(url, spans, {"\\": "\\\\", "'": "\\'"}),
    ):
        for start, end in variant_spans:
            for first in range(max(0, start - _PIECE + 1), min(end, len(variant) - _PIECE + 1)):
                piece = variant[first:first + _PIECE]
                lo, hi = max(start, first) - first, min(end, first + _PIECE) - first
                for at in _positions(text, piece):
                    for i in range(at + lo, at + hi):
                        masked[i] = True
    if not any(masked):
        return text
    out, previous = [], False
    for ch, hidden in zip(text, masked, strict=True):
        if hidden and not previous:
            out.append("***")
        elif not hidden:
            out.append(ch)
        previous = hidden
    return "".join(out)


def _escaped(url: str, spans: list[tuple[int, int]], table: dict[str, str]
             ) -> tuple[str, list[tuple[int, int]]]:
    """``url`` with characters replaced per ``table``, and ``spans`` moved to match."""
    where: list[int] = []
    out: list[str] = []
    length = 0
    for ch in url:
        where.append(length)
        out.append(table.get(ch, ch))
        length += len(out[-1])
    where.append(length)
    return "".join(out), [(where[a], where[b]) for a, b in spans]


def _positions(haystack: str, needle: str) -> list[int]:
    found, at = [], haystack.find(needle)
    while at >= 0:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found


# libpq's parse errors, each quoting a piece of the URL (often the password), and what they
# mean without it. Matched on the message's start; anything else is described generically.
_PARSE_PROBLEMS = (
    ("invalid percent-encoded token", "a '%' not followed by two hex digits (write '%' as %25)"),
    ("unexpected spaces found", "a space in the URL (write it as %20)"),
    ('missing "="', "a word without '=' (an unquoted space in a value? quote it: "
                    "password='a b')"),
    ("unterminated quoted string", "a quote that is opened and never closed"),
    ("invalid connection option", "an option name libpq does not know"),
    ("invalid URI query parameter", "a query parameter libpq does not know"),
    ("invalid port", "a port that is not a number"),
    ("invalid integer value", "a number that is not a number"),
    ("end of string reached when looking for matching", "an IPv6 '[' that is never closed"),
    ("unexpected character", "a character libpq does not expect there"),
)


def parse_problem(text: str) -> str:
    """What a libpq parse error says, without the piece of the URL it quotes."""
    for prefix, meaning in _PARSE_PROBLEMS:
        if text.startswith(prefix):
            return meaning
    return "libpq cannot parse it"


# Every URL this process was given (conninfo registers each): what SecretFilter scrubs from
# log records that other libraries make (psycopg_pool logs "error connecting in 'pool-1':
# failed to resolve host '<a piece of the password>'" when an unencoded "@" moved it there).
_KNOWN_URLS: set[str] = set()
_KNOWN_LOCK = threading.Lock()


def remember(url: str | None) -> None:
    if url:
        with _KNOWN_LOCK:
            _KNOWN_URLS.add(url)


def scrub_known(text: str) -> str:
    """``text`` scrubbed of every URL this process was given."""
    with _KNOWN_LOCK:
        urls = sorted(_KNOWN_URLS, key=len, reverse=True)
    for url in urls:
        text = scrub(text, url)
    return text


class SecretFilter(logging.Filter):
    """Scrub a record's message (and its traceback's text) of every known database URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_known(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub_known(logging.Formatter().formatException(record.exc_info))
        return True
