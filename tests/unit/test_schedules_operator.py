"""The JobSchedule status the operator writes (skiplock_operator.schedules, pure parts) and the
spec model's rules (the same as the CRD's, for a cluster whose CRD is older or lacks CEL)."""

from __future__ import annotations

import datetime as dt

import pytest

from skiplock_operator.models import InvalidSpec, parse_schedule_spec, parse_spec
from skiplock_operator.schedules import Outcome, differs, row_name, source_of, status_of

T = dt.datetime(2026, 5, 1, 12, tzinfo=dt.UTC)
NEXT = dt.datetime(2026, 5, 2, 0, 30, tzinfo=dt.UTC)


def body(status: dict[str, object] | None = None) -> dict[str, object]:
    return {"metadata": {"name": "n", "namespace": "ns", "generation": 3},
            "status": status or {}}


def test_status_for_a_synced_schedule_then_an_outage() -> None:
    ok = Outcome(True, "Synced", "in the database", "ns/n", "reports", NEXT, None)
    first = status_of(body(), ok, T)
    assert first["observedGeneration"] == 3 and first["schedule"] == "ns/n"
    assert first["nextFireTime"] == "2026-05-02T00:30:00Z" and first["lastFireTime"] is None
    (ready,) = first["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Synced")
    # the same again an hour later: nothing to write
    again = status_of(body(first), ok, T + dt.timedelta(hours=1))
    assert not differs(first, again)
    # the database is down: Ready False, what was known stays, the transition time moves
    down = status_of(body(first), Outcome(False, "DatabaseUnavailable", "unreachable"),
                     T + dt.timedelta(hours=2))
    assert down["nextFireTime"] == first["nextFireTime"] and down["schedule"] == "ns/n"
    (cond,) = down["conditions"]
    assert (cond["status"], cond["reason"]) == ("False", "DatabaseUnavailable")
    assert cond["lastTransitionTime"] == "2026-05-01T14:00:00Z"


def test_names() -> None:
    assert row_name("ns", "n") == "ns/n" and source_of("ns", "n") == "crd:ns/n"


@pytest.mark.parametrize(("spec", "words"), [
    ({"task": "t"}, "jobQueueRef"),
    ({"jobQueueRef": "q", "task": "t"}, "exactly one of cron and everySeconds"),
    ({"jobQueueRef": "q", "task": "t", "cron": "* * * * *", "everySeconds": 1},
     "exactly one of cron and everySeconds"),
    ({"jobQueueRef": "q", "task": "t", "everySeconds": 1, "missed": "backfill"},
     "backfill needs backfill"),
    ({"jobQueueRef": "q", "task": "t", "everySeconds": 1, "typo": 1}, "spec.typo"),
])
def test_bad_specs(spec: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidSpec, match=words):
        parse_schedule_spec(spec)


def test_a_good_spec() -> None:
    s = parse_schedule_spec({"jobQueueRef": "q", "task": "t", "cron": "0 2 * * *",
                             "timezone": "Europe/Berlin", "missed": "backfill", "backfill": 2,
                             "graceSeconds": 30, "args": {"a": [1]}})
    assert (s.job_queue_ref, s.cron, s.every_seconds, s.backfill, s.grace_seconds) == (
        "q", "0 2 * * *", None, 2, 30)
    assert s.queue is None and s.paused is False and s.args == {"a": [1]}


def test_jobqueue_schedule_lead_seconds() -> None:
    base = {"queues": ["a"], "database": {"urlSecretRef": {"name": "db"}},
            "worker": {"image": "w"}}
    assert parse_spec(base).scaling.schedule_lead_seconds == 60
    lead = parse_spec({**base, "scaling": {"scheduleLeadSeconds": 300}})
    assert lead.scaling.schedule_lead_seconds == 300
    with pytest.raises(InvalidSpec, match="scheduleLeadSeconds"):
        parse_spec({**base, "scaling": {"scheduleLeadSeconds": -1}})
