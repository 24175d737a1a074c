"""Database URLs and DSNs that carry a password the way people get it wrong, aimed at a real
test server (trust authentication: a password that arrives is accepted and ignored) or at a
closed port. Shared by the CLI, worker, API and operator secret tests."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from tests.support.pgserver import free_port

# Every password here contains MARK: no output may contain it, nor the password whole.
MARK = "Zq9Secret"


@dataclass(frozen=True)
class Case:
    name: str
    url: str
    password: str
    outcome: str  # "malformed", "unreachable" or "ok"


def cases(port: int, dbname: str) -> list[Case]:
    closed = free_port()
    host = f"127.0.0.1:{port}"
    p = f"Hunter%zz{MARK}"
    return [
        Case("percent not encoded", f"postgresql://postgres:{p}@{host}/{dbname}", p, "malformed"),
        Case("space in password", f"postgresql://postgres:Hunter {MARK}@{host}/{dbname}",
             f"Hunter {MARK}", "malformed"),
        Case("at sign not encoded", f"postgresql://postgres:Hun@ter{MARK}@{host}/{dbname}",
             f"Hun@ter{MARK}", "unreachable"),
        Case("slash not encoded", f"postgresql://postgres:Hunter/{MARK}@{host}/{dbname}",
             f"Hunter/{MARK}", "unreachable"),
        Case("quote and backslash", f"postgresql://postgres:Hu'n\"t\\er{MARK}@127.0.0.1:{closed}"
             f"/{dbname}", f"Hu'n\"t\\er{MARK}", "unreachable"),
        Case("password in query", f"postgresql://postgres@{host}/{dbname}?password={p}", p,
             "malformed"),
        Case("encoded, closed port",
             f"postgresql://postgres:{quote(p, safe='')}@127.0.0.1:{closed}/{dbname}", p,
             "unreachable"),
        Case("encoded, no such database",
             f"postgresql://postgres:{quote('H@/ %' + MARK, safe='')}@{host}/no_such_db",
             f"H@/ %{MARK}", "unreachable"),
        Case("dsn, closed port",
             f"host=127.0.0.1 port={closed} user=postgres password={MARK}x dbname={dbname}",
             f"{MARK}x", "unreachable"),
        Case("dsn quoted", f"host=127.0.0.1 port={port} user=postgres "
             f"password='Hun\\'ter {MARK}' dbname={dbname}", f"Hun'ter {MARK}", "ok"),
        Case("dsn quote not closed",
             f"host=127.0.0.1 port={port} password='Hunter {MARK} dbname={dbname}",
             f"Hunter {MARK}", "malformed"),
        Case("dsn space not quoted",
             f"host=127.0.0.1 port={port} password=Hunter {MARK} dbname={dbname}",
             f"Hunter {MARK}", "malformed"),
        Case("not a url at all", p, p, "malformed"),
    ]


def assert_no_password(case: Case, *outputs: str) -> None:
    for text in outputs:
        assert case.password not in text, (case.name, text)
        assert MARK not in text, (case.name, text)
        assert quote(case.password, safe="") not in text, (case.name, text)
