"""The rules for queue, task and schema names, checked wherever a name enters.

Names are not free-form: each queue is a stats subquery, a Prometheus series and a dashboard
history line, and the schema name is spliced into identifiers PostgreSQL truncates or refuses
past 63 bytes (``<schema>_jobs`` and ``<schema>_control`` are NOTIFY channels) and into libpq's
``options`` (where a space would start another ``-c`` setting).
"""

from __future__ import annotations

import re

# The JobQueue CRD's pattern for spec.queues (deploy/00-crd.yaml, charts/skiplock): a queue the
# operator cannot scale is not one a producer should be able to create. It implies the cap.
MAX_QUEUE_NAME = 128
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")

# The jobs table's CHECK (jobs_task_valid).
MAX_TASK_NAME = 256

# PostgreSQL's identifier limit (NAMEDATALEN - 1), and the longest suffix a schema name gets.
MAX_IDENTIFIER_BYTES = 63
SCHEMA_SUFFIXES = ("_jobs", "_control")
MAX_SCHEMA_NAME = MAX_IDENTIFIER_BYTES - max(map(len, SCHEMA_SUFFIXES))  # 55
SCHEMA_PATTERN = rf"^[a-z_][a-z0-9_]{{0,{MAX_SCHEMA_NAME - 1}}}$"
_SCHEMA = re.compile(rf"[a-z_][a-z0-9_]{{0,{MAX_SCHEMA_NAME - 1}}}")


def queue_problem(queue: object) -> str | None:
    """What is wrong with a queue name to enqueue into, or None."""
    if not isinstance(queue, str):
        return f"queue name must be text, got {type(queue).__name__}"
    if not queue:
        return "queue name must not be empty"
    if len(queue) > MAX_QUEUE_NAME:
        return f"queue name is {len(queue)} characters long; at most {MAX_QUEUE_NAME}"
    if not _QUEUE.fullmatch(queue):
        return (
            f"queue name {queue[:60]!r} is not allowed: use letters, digits and '_', '.', ':', "
            "'-', starting with a letter or digit (e.g. 'mail' or 'billing.invoices')"
        )
    return None


def task_problem(task: object) -> str | None:
    """What is wrong with a task name, or None (the message starts with "task name")."""
    if not isinstance(task, str) or not task.strip():
        return "task name must be a non-empty string"
    if len(task) > MAX_TASK_NAME:
        return f"task name is {len(task)} characters long; at most {MAX_TASK_NAME}"
    if task != task.strip() or not task.isprintable():
        return (
            f"task name {task[:60]!r} must be printable text without leading or trailing "
            "white space (no control characters, NUL or lone surrogates)"
        )
    return None


def schema_problem(schema: object) -> str | None:
    """What is wrong with a schema name, or None."""
    if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
        shown = repr(schema[:70]) if isinstance(schema, str) else type(schema).__name__
        return (
            f"schema name {shown} must be a lower-case SQL identifier (letters, digits, "
            f"underscore; not starting with a digit) of at most {MAX_SCHEMA_NAME} characters, so "
            f"that {' and '.join('<schema>' + s for s in SCHEMA_SUFFIXES)} fit PostgreSQL's "
            f"{MAX_IDENTIFIER_BYTES}-byte identifiers"
        )
    return None
