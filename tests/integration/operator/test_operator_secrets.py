"""The operator with each database URL of the secrets table (tests/integration/secret_urls.py)
in the Secret a JobQueue references, against a real kube-apiserver and Postgres: the password
is in no status, condition, event or operator log line, and each JobQueue says what is wrong."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.integration.operator.conftest import Cluster
from tests.integration.operator.envtest import OperatorThread
from tests.integration.secret_urls import assert_no_password, cases
from tests.support.pgserver import PgServer
from tests.support.waits import holds, wait_until

pytestmark = pytest.mark.slow

# the condition DatabaseReachable each outcome ends in: (status, reason, message starts)
EXPECTED = {
    "malformed": ("False", "DatabaseUrlInvalid", ("the database URL (",)),
    # it migrates first; while a failed migration waits for its retry the poll reads stats,
    # which fail the same way (CI saw the stats poll's message last)
    "unreachable": ("False", "DatabaseUnavailable",
                    ("migrate: database at ", "queue stats: database at ")),
    "ok": ("True", "StatsRead", ("read stats for queue(s) default",)),
}


def spec(secret: str) -> dict[str, Any]:
    return {"queues": ["default"], "database": {"urlSecretRef": {"name": secret}},
            "worker": {"image": "skiplock/worker:test"},
            "scaling": {"pollIntervalSeconds": 1, "maxReplicas": 2}}


def test_no_password_in_status_events_or_logs(cluster: Cluster, operator: OperatorThread,
                                              pg: PgServer, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    caplog.set_level(logging.DEBUG)
    table = cases(pg.port, "skiplock_template")
    for i, case in enumerate(table):
        cluster.secret(f"db-{i}", case.url)
        cluster.create_jobqueue(f"q-{i}", **spec(f"db-{i}"))

    def settled() -> bool:
        for i, case in enumerate(table):
            c = cluster.condition(f"q-{i}", "DatabaseReachable")
            if not c or (c["status"], c["reason"]) != EXPECTED[case.outcome][:2]:
                return False
        return True

    wait_until(settled, 90, message="every JobQueue's DatabaseReachable condition",
               interval=0.5)
    # a few more polls: repeated warnings, retries, psycopg_pool's own log lines
    holds(settled, 3, "the conditions stay as they are")
    events = cluster.events()
    for i, case in enumerate(table):
        c = cluster.condition(f"q-{i}", "DatabaseReachable")
        assert c is not None and c["message"].startswith(EXPECTED[case.outcome][2]), (case, c)
        if case.outcome == "unreachable":
            assert " is unreachable " in c["message"] or " refused " in c["message"], c
        mine = [e for e in events if e.involved_object.name == f"q-{i}"]
        if case.outcome != "ok":
            assert [e for e in mine if e.reason == EXPECTED[case.outcome][1]
                    and e.type == "Warning"], (case.name, [e.reason for e in mine])
        assert_no_password(case, json.dumps(cluster.jobqueue(f"q-{i}")),
                           json.dumps([e.message for e in events]), caplog.text)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for case in table:
        assert_no_password(case, logged)
    # the operator still says where it failed, redacted, for whoever reads its log
    assert "postgres@127.0.0.1" in json.dumps([e.message for e in events])
