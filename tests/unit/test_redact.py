"""redact_url and scrub: whatever the URL looks like, its password is in no message.

The property tests build URLs and DSNs the way people get them wrong (an unencoded ``%``,
``@``, ``/``, space or quote in the password, the password in ``?password=``) and run them
through real libpq parsing and a real (refused) connection attempt, then check that neither
the password nor any 6-character piece of it is in what Skiplock would print."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from skiplock.db import Database, WorkerConnection, conninfo
from skiplock.errors import ConfigurationError, SkiplockError
from skiplock.redact import _PARSE_PROBLEMS, parse_problem, redact_url, scrub, secrets_of
from tests.support.pgserver import free_port

HOSTILE = "%@/: ?#&='\"\\[]"
# printable ASCII, the characters that break URLs and DSNs, and some non-ASCII text
PASSWORDS = st.text(
    alphabet=st.sampled_from(HOSTILE)
    | st.characters(min_codepoint=0x21, max_codepoint=0x7E)
    | st.sampled_from("éß€中😀"),
    min_size=8,
    max_size=40,
)


def leaked(password: str, text: str, public: str = "") -> str | None:
    """The first piece of ``password`` (or of its percent-encoded form) found in ``text``;
    a 6-character piece that Skiplock's own wording has ("IPLOCK" of SKIPLOCK_DATABASE_URL,
    which hypothesis found) does not count, nor does a password that is one of its words
    (hypothesis tried "SKIPLOCK"), nor a piece of the URL's ``public`` parts (hypothesis
    found "1/jobs" of a port ending in 1 and the database name)."""
    for secret in {password, quote(password, safe="")}:
        if secret in text and secret not in boilerplate() and secret not in public:
            return secret
        for i in range(len(secret) - 5):
            piece = secret[i:i + 6]
            if piece in text and piece not in boilerplate() and piece not in public:
                return piece
    return None


@functools.cache
def boilerplate() -> str:
    """What Skiplock says for every form of a URL with a plain password, and every meaning of
    a libpq parse error: the words that are not the password's."""
    port = free_port()
    said = [connect_error(url) for url in urls("Xq7Zv9Kw", port).values()]
    said += [connect_error(f"postgresql://app:{p}@127.0.0.1:{port}/jobs")
             for p in ("a%zz", "a b", "a/b")]
    # and what the redaction itself writes ("<unparseable database url>": hypothesis tried
    # the password "00base u")
    said += [redact_url(url) for p in ("Xq7Zv9Kw", "a%zz", "a b", "a/b", "a b=c")
             for url in urls(p, port).values()]
    said += [meaning for _, meaning in _PARSE_PROBLEMS]
    return "\n".join(said).replace(str(port), "")


def urls(password: str, port: int) -> dict[str, str]:
    """The ways a password ends up in a database URL, right and wrong."""
    dsn_quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return {
        "url raw": f"postgresql://app:{password}@127.0.0.1:{port}/jobs",
        "url encoded": f"postgresql://app:{quote(password, safe='')}@127.0.0.1:{port}/jobs",
        "query raw": f"postgresql://app@127.0.0.1:{port}/jobs?password={password}",
        "query encoded": f"postgresql://app@127.0.0.1:{port}/jobs?password={quote(password)}",
        "dsn quoted": f"host=127.0.0.1 port={port} user=app password='{dsn_quoted}' dbname=jobs",
        "dsn raw": f"host=127.0.0.1 port={port} user=app password={password} dbname=jobs",
        "dsn raw last": f"host=127.0.0.1 port={port} password={password}",
    }


def connect_error(url: str) -> str:
    """What a worker says when it tries ``url`` (a refused port: no server needed), and what
    psycopg and psycopg_pool log meanwhile."""

    async def attempt() -> str:
        conn = WorkerConnection(url, schema="skiplock", connect_timeout=1, statement_timeout=1,
                                application_name="test")
        try:
            async with conn.cursor("connect") as cur:
                await cur.execute("SELECT 1")
        finally:
            await conn.close()
        return "connected"

    try:
        return asyncio.run(attempt())
    except SkiplockError as exc:
        return str(exc)


TABLE = [
    # (url, what redact_url says, the password)
    ("postgresql://app:s3cretpw@db.internal:5432/jobs", "app@db.internal:5432/jobs", "s3cretpw"),
    ("postgresql://app:Hunter%zzSecret@db:5432/jobs", "app@db:5432/jobs", "Hunter%zzSecret"),
    ("postgresql://app:Hunter Secret@db/jobs", "app@db/jobs", "Hunter Secret"),
    ("postgresql://app:Hun@ter@Secret@db:5432/jobs", "app@db:5432/jobs", "Hun@ter@Secret"),
    ("postgresql://app:Hunter/Secret@db:5432/jobs", "app@db:5432/jobs", "Hunter/Secret"),
    ("postgresql://app:Hun?t#erSecret@db/jobs", "app@db/jobs", "Hun?t#erSecret"),
    ("postgresql://app@db:5432/jobs?password=HunterSecret", "app@db:5432/jobs", "HunterSecret"),
    ("postgresql://db/jobs?sslmode=require&password=Hunter%zz", "db/jobs", "Hunter%zz"),
    ("postgresql://app:Hunter%40Secret@h1:5432,h2:5433/jobs", "app@h1:5432,h2:5433/jobs",
     "Hunter%40Secret"),
    ("host=db user=app password=HunterSecret dbname=jobs", "app@db/jobs", "HunterSecret"),
    ("host=db password='Hunter Secret' user=app", "app@db", "Hunter Secret"),
    (r"host=db password='Hun\'ter Secret' port=5432", "db:5432", "Hun'ter Secret"),
    ("host=db password='HunterSecret", "<unparseable database url>", "HunterSecret"),
    ("host=db password=Hunter Secret", "<unparseable database url>", "Hunter Secret"),
    ("HunterSecret", "<unparseable database url>", "HunterSecret"),
    ("postgresql://Hunter%zzSecret", "Hunter%zzSecret", None),  # a host name, not secret
    ("", "<no database url>", None),
]


@pytest.mark.parametrize(("url", "shown", "password"), TABLE)
def test_redact_url_shows_only_names(url: str, shown: str, password: str | None) -> None:
    assert redact_url(url) == shown
    if password:
        assert password not in redact_url(url)
        assert password in secrets_of(url)
        assert password not in scrub(f'could not use "{url}" ({password})', url)


def test_a_malformed_part_is_shown_as_a_question_mark() -> None:
    # libpq reads "app:Hunter" as host:port here; the summary never shows a piece of it.
    assert redact_url("postgresql://us er:pw@db/jo bs") == "?@db/?"
    assert redact_url("postgresql://app@db:54x32/jobs") == "app@db:?/jobs"


def test_scrub_removes_quoted_pieces_that_libpq_read_from_the_password() -> None:
    # an unencoded "/" ends libpq's authority: "Hun" becomes the port, "app" the host
    url = "postgresql://app:Hun/terSecret@127.0.0.1/jobs"
    assert scrub('invalid integer value "Hun" for connection option "port"', url) == (
        'invalid integer value "***" for connection option "port"')
    # an unencoded "@": libpq's host is the rest of the password plus the real host
    url = "postgresql://app:Hun@terSecret@127.0.0.1/jobs"
    assert scrub("failed to resolve host 'terSecret@127.0.0.1': Name or service not known",
                 url) == "failed to resolve host '***@127.0.0.1': Name or service not known"
    # quotes in the password make the quoting ambiguous: the pieces are masked all the same
    url = "postgresql://app:0@'0000\"@127.0.0.1:1/jobs"
    assert scrub("failed to resolve host ''0000\"@127.0.0.1': x", url) == (
        "failed to resolve host '***@127.0.0.1': x")
    # "password=..." in free text, with a quoted value holding a space and an escaped quote
    assert scrub(r"options: password='a\' b' host=x", None) == "options: password=*** host=x"


def test_parse_problem_never_repeats_the_quoted_piece() -> None:
    assert parse_problem('invalid percent-encoded token: "Hunter%zzSecret"') == (
        "a '%' not followed by two hex digits (write '%' as %25)")
    assert parse_problem('something new: "Hunter%zzSecret"') == "libpq cannot parse it"


@pytest.mark.parametrize(("url", "_shown", "password"), [r for r in TABLE if r[2]])
def test_a_real_connection_attempt_prints_no_password(url: str, _shown: str,
                                                      password: str) -> None:
    port = free_port()
    url = re.sub(r"@db(:\d+)?", f"@127.0.0.1:{port}", url).replace("host=db", "host=127.0.0.1")
    url = url.replace(",h2:5433", "")
    message = connect_error(url)
    assert leaked(password, message) is None, message
    assert message != "connected"


def test_the_issue_example_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        conninfo("postgresql://app:Hunter%zzSecret@db:5432/jobs", "skiplock", 1.0, 1.0)
    assert str(caught.value) == (
        "the database URL (app@db:5432/jobs) is malformed: a '%' not followed by two hex digits "
        "(write '%' as %25). Fix SKIPLOCK_DATABASE_URL (--database-url): percent-encode special "
        "characters in the user and password ('%' as %25, '@' as %40, '/' as %2F, a space as "
        "%20), or use a key=value DSN with the password in single quotes (a quote or backslash "
        "in it escaped with a backslash).")


@settings(max_examples=200, deadline=None)
@given(password=PASSWORDS)
@example(password="Hunter%zzSecret")
@example(password="00base u")
@example(password="Hun ter=Sec ret")
@example(password="'HunterSecret")
@example(password='Hun"ter@Sec/ret')
@example(password="Hunter\\Secret\\")
@example(password="/v1/jobs/batch")
def test_no_form_of_the_url_prints_the_password(password: str) -> None:
    port = free_port()
    # the same URLs with a password of characters PASSWORDS never draws: what they show
    # besides the password (user, host, port, database, the URL's own syntax)
    public = " ".join(urls("\u2603" * 8, port).values())
    for form, url in urls(password, port).items():
        if form.startswith("dsn raw") and re.search(r"\s[^\s=]*=", password):
            # Unquoted, " key=value" in a password IS another keyword to libpq (the user typed
            # a DSN that sets that option): not a password any reader could tell apart.
            continue
        for text in (redact_url(url), scrub(url, url), scrub(f"bad url {url!r}", url),
                     connect_error(url)):
            piece = leaked(password, text, public)
            assert piece is None, (form, url, text, piece)


@pytest.mark.parametrize(("url", "_shown", "password"), [r for r in TABLE if r[2]][:8])
def test_the_pool_logs_no_password(url: str, _shown: str, password: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    # psycopg_pool logs each failed connection attempt in its own words ("failed to resolve
    # host 'terSecret@127.0.0.1'" for an unencoded "@"): SecretFilter scrubs those too.
    url = re.sub(r"@db(:\d+)?", f"@127.0.0.1:{free_port()}", url)
    url = url.replace("host=db", "host=127.0.0.1").replace(",h2:5433", "")
    caplog.set_level(logging.DEBUG)
    try:
        with Database(url, connect_timeout=0.5) as db:
            db.now()
    except SkiplockError as exc:
        message = str(exc)
    assert "is malformed" in message or "is unreachable" in message, message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert leaked(password, logged + message) is None, logged + message


def test_settings_never_show_the_url() -> None:
    from skiplock.settings import Settings

    s = Settings(database_url=f"postgresql://app:Hunter{MARK_}@db/jobs")
    assert MARK_ not in repr(s) and MARK_ not in str(s)


MARK_ = "Zq9SecretRepr"
