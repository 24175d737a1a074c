"""Queue, task and schema names: the limits exactly, the pattern's edges, injection attempts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from skiplock import App
from skiplock.db import Database, WorkerConnection, conninfo
from skiplock.errors import ConfigurationError
from skiplock.names import (
    MAX_SCHEMA_NAME,
    QUEUE_PATTERN,
    queue_problem,
    schema_problem,
    task_problem,
)
from skiplock.settings import Settings
from skiplock_operator.models import InvalidSpec, parse_spec
from tests.conftest import ROOT

CRDS = [ROOT / "deploy" / "00-crd.yaml",
        ROOT / "charts" / "skiplock" / "crds" / "jobqueues.skiplock.dev.yaml"]


@pytest.mark.parametrize("queue", [
    "a", "0", "default", "billing.invoices", "a:b-c_d.e", "A" * 128, "9" + "-" * 127])
def test_queue_names_that_are_allowed(queue: str) -> None:
    assert queue_problem(queue) is None


@pytest.mark.parametrize(("queue", "problem"), [
    ("", "queue name must not be empty"),
    ("A" * 129, "queue name is 129 characters long; at most 128"),
    ("a" * 10_000, "queue name is 10000 characters long; at most 128"),
    ("-mail", "is not allowed"), (".mail", "is not allowed"), (":mail", "is not allowed"),
    ("_mail", "is not allowed"), ("mail box", "is not allowed"), ("mail\n", "is not allowed"),
    ("mail\x00", "is not allowed"), ("mail/x", "is not allowed"), ("<script>", "is not allowed"),
    ("é", "is not allowed"), ("١٢٣", "is not allowed"),  # Arabic-Indic digits: not [0-9]
    ("a\ud800", "is not allowed"), ("x'; DROP TABLE jobs; --", "is not allowed"),
    (5, "queue name must be text, got int"), (None, "queue name must be text, got NoneType"),
])
def test_queue_names_that_are_refused(queue: object, problem: str) -> None:
    assert problem in (queue_problem(queue) or "")


def test_the_queue_rule_is_the_crds() -> None:
    for crd in CRDS:
        assert f"pattern: '{QUEUE_PATTERN}'" in crd.read_text(), crd


@settings(max_examples=500)
@given(st.text(max_size=140))
def test_the_queue_rule_matches_the_crd_pattern(queue: str) -> None:
    # the CRD's (ECMA) pattern read as a full match: "$" must not allow a trailing newline
    crd_allows = re.fullmatch(QUEUE_PATTERN.strip("^$"), queue) is not None
    assert (queue_problem(queue) is None) == crd_allows


@pytest.mark.parametrize("task", ["a", "send_email", "mod.sub:func", "x" * 256, "<b>é 中</b>"])
def test_task_names_that_are_allowed(task: str) -> None:
    assert task_problem(task) is None


@pytest.mark.parametrize(("task", "problem"), [
    ("", "task name must be a non-empty string"),
    ("   ", "task name must be a non-empty string"),
    ("x" * 257, "task name is 257 characters long; at most 256"),
    (" lead", "without leading or trailing white space"),
    ("trail ", "without leading or trailing white space"),
    ("new\nline", "no control characters"), ("nul\x00", "no control characters"),
    ("lone\ud800", "no control characters"), (7, "task name must be a non-empty string"),
])
def test_task_names_that_are_refused(task: object, problem: str) -> None:
    found = task_problem(task)
    assert found is not None and found.startswith("task name") and problem in found


def test_app_refuses_a_task_no_producer_could_enqueue() -> None:
    app = App()
    with pytest.raises(ValueError, match="task name is 257 characters long"):
        app.task(name="x" * 257)(lambda ctx: None)
    with pytest.raises(ValueError, match="queue name 'mail box' is not allowed"):
        app.task(name="ok", queue="mail box")(lambda ctx: None)
    assert "ok" not in app.tasks


@pytest.mark.parametrize("length", range(55, 64))
def test_schema_names_fit_every_derived_identifier(length: int) -> None:
    name = "s" * length
    ok = length <= MAX_SCHEMA_NAME == 55
    assert (schema_problem(name) is None) == ok
    if ok:
        for derived in (f"{name}_jobs", f"{name}_control"):
            assert len(derived.encode()) <= 63
        assert Settings(SKIPLOCK_SCHEMA=name).schema_name == name
    else:
        assert len(f"{name}_control".encode()) > 63
        with pytest.raises(ValidationError, match="at most 55 characters"):
            Settings(SKIPLOCK_SCHEMA=name)


INJECTIONS = [
    "x -c statement_timeout=0", "x,public -c search_path=evil", "skiplock;drop", "Skiplock",
    "1abc", "", "a-b", "a b", "a\nb", "a'b", 'a"b', "a\\b", "é", "a\x00", "skiplock ", "x" * 64]


@pytest.mark.parametrize("schema", INJECTIONS)
def test_a_schema_name_cannot_inject_settings(schema: str) -> None:
    with pytest.raises(ValidationError, match="must be a lower-case SQL identifier"):
        Settings(SKIPLOCK_SCHEMA=schema)
    # every connection is built by conninfo, whoever built the Database or WorkerConnection
    with pytest.raises(ConfigurationError, match="must be a lower-case SQL identifier"):
        conninfo("postgresql://app@127.0.0.1/jobs", schema, 1, 1)
    with pytest.raises(ConfigurationError, match="must be a lower-case SQL identifier"):
        Database("postgresql://app@127.0.0.1/jobs", schema=schema)
    with pytest.raises(ConfigurationError, match="must be a lower-case SQL identifier"):
        WorkerConnection("postgresql://app@127.0.0.1/jobs", schema=schema, connect_timeout=1,
                         statement_timeout=1, application_name="t")


def test_the_operator_applies_the_same_schema_rule() -> None:
    spec = {"queues": ["mail"], "database": {"urlSecretRef": {"name": "db"}, "schema": "s" * 55},
            "worker": {"image": "x", "app": "m:app"}}
    assert parse_spec(spec).database.schema_name == "s" * 55
    spec["database"]["schema"] = "s" * 56  # type: ignore[index]
    with pytest.raises(InvalidSpec, match="at most 55 characters"):
        parse_spec(spec)
    for crd in CRDS:
        text = crd.read_text()
        assert "maxLength: 55" in text and "pattern: '^[a-z_][a-z0-9_]{0,54}$'" in text, crd


@pytest.mark.parametrize("schema", ["x -c statement_timeout=0", "s" * 56])
def test_the_cli_validates_schema(schema: str) -> None:
    # --schema used to go through model_copy, which skips validation, into libpq's options
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}",
           "SKIPLOCK_DATABASE_URL": "postgresql://app@127.0.0.1:1/jobs"}
    out = subprocess.run([sys.executable, "-m", "skiplock", "--schema", schema, "stats"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.startswith(
        f"skiplock: error: SKIPLOCK_SCHEMA (--schema): schema name {schema!r} must be a "
        "lower-case SQL identifier"), out.stderr
    assert "Traceback" not in out.stderr
    # the same from the environment, which used to end in a traceback
    out = subprocess.run([sys.executable, "-m", "skiplock", "stats"],
                         env={**env, "SKIPLOCK_SCHEMA": schema},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    assert out.stderr.startswith("skiplock: error: SKIPLOCK_SCHEMA (--schema): schema name")
