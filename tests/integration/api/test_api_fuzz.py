"""Property-based fuzzing of the served OpenAPI document with schemathesis: no 500s, every
response matches the schema, and a rejected request changes nothing in the database."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import checks
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode

from skiplock.api.config import ApiSettings
from skiplock.settings import Settings
from tests.integration.api.conftest import AUTH, TOKEN
from tests.integration.api.server import serve
from tests.support.pgserver import PgServer
from tests.tasks import app as task_app

_names = itertools.count()
# Everything a request could change, in one comparable value.
SNAPSHOT = ("SELECT md5(coalesce(string_agg(j::text, '|' ORDER BY j.id), '')) || "
            "(SELECT count(*) FROM skiplock.results)::text FROM skiplock.jobs AS j")


@pytest.fixture(scope="module")
def fuzz_db(pg: PgServer) -> Iterator[str]:
    name = f"fuzz{os.getpid()}_{next(_names)}"
    with pg.admin() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE skiplock_template")
    url = pg.url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        for t in task_app.tasks.values():
            conn.execute("INSERT INTO skiplock.tasks (name, params, max_attempts, queue)"
                         " VALUES (%s, %s, %s, %s)",
                         (t.name, psycopg.types.json.Jsonb(dict(t.params)), t.max_attempts,
                          t.queue))
        # A job in each state, so ids 1..5 exist and retry/cancel meet every transition.
        conn.execute("INSERT INTO skiplock.jobs (task, state, finished_at, locked_until, locked_by)"
                     " VALUES ('noop', 'queued', NULL, NULL, NULL),"
                     " ('noop', 'running', NULL, now() + interval '1 hour', 'w'),"
                     " ('noop', 'succeeded', now(), NULL, NULL),"
                     " ('noop', 'dead', now(), NULL, NULL),"
                     " ('noop', 'cancelled', now(), NULL, NULL)")
    yield url
    with pg.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def base_url(fuzz_db: str) -> Iterator[str]:
    with serve(Settings(database_url=fuzz_db, connect_timeout=2),
               ApiSettings(token=SecretStr(TOKEN), sample_interval=60)) as url:
        yield url


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def _check(case: schemathesis.Case, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
    # ``conn`` is autocommit: each snapshot sees everything committed before it
    before = conn.execute(SNAPSHOT).fetchone()
    # Reads and writes need a token. A negative case that left out the Authorization header
    # on purpose is sent without it (the answer must then be a 401), every other with the
    # write token, which may do everything.
    header_negative = case.meta is not None and case.meta.is_negative_at(
        ParameterLocation.HEADER)
    dropped = header_negative and "authorization" not in {
        k.lower() for k in (case.headers or {})}
    response = case.call(headers=None if dropped else AUTH, timeout=30)
    if dropped:
        # 401, or the body's own 400/422 when FastAPI fails to parse it before the check.
        assert response.status_code in (400, 401, 422), (case.method, case.path,
                                                          response.text)
    after = conn.execute(SNAPSHOT).fetchone()
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        assert before == after, (f"{case.method} {case.formatted_path} was rejected with "
                                 f"{response.status_code} but changed the database")
    case.validate_response(response, excluded_checks=[
        # A schema cannot say which task names workers registered or what arguments each
        # takes, so schema-valid bodies are often rightly refused with 422.
        checks.positive_data_acceptance,
    ])


# The schemathesis pytest plugin does not run under pytest 9 (it sets Function._nodeid), so
# the test drives each operation's Hypothesis strategy itself: valid and invalid data both.
@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_api_conforms_to_its_openapi_document(api_schema: schemathesis.schemas.BaseSchema,
                                              fuzz_db: str, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    # One connection for every case's snapshots, not one per case: connecting cost more than
    # the snapshot queries themselves, over some two thousand cases.
    with psycopg.connect(fuzz_db, autocommit=True) as conn:
        for operation in operations:
            if mode is GenerationMode.NEGATIVE and not list(operation.iter_parameters()):
                continue  # /healthz, /readyz: nothing to send that could be invalid
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def run(case: schemathesis.Case) -> None:
                _check(case, conn)

            try:
                run()
            except Exception as exc:
                exc.add_note(f"operation: {operation.label} ({mode.value})")
                raise
