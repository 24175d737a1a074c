"""Leader election: the pure assessment and one elector round against an in-memory Lease
store that honours resourceVersion like the API server (409 on a stale write)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from skiplock_operator.leader import Elector, Observed, assess
from skiplock_operator.settings import OperatorSettings
from tests.unit.operator_fakes import Clock


class Leases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = itertools.count(1)
        self.down = False

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise TimeoutError("read timed out")
        return copy.deepcopy(self.lease)

    def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._put(body)

    def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._put(body)

    def _put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(next(self.rv))
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str | None:
        holder = (self.lease or {}).get("spec", {}).get("holderIdentity")
        return str(holder) if holder else None


def elector(store: Leases, me: str, clock: Clock) -> Elector:
    return Elector(store, "skiplock-operator", "ops", me, 15, 10, 2,  # type: ignore[arg-type]
                   clock=clock)


def test_assess() -> None:
    assert assess(None, "a", None, 0, 15)[0] == "create"
    lease = {"spec": {"holderIdentity": "b", "renewTime": "t1"}}
    action, seen = assess(lease, "a", None, 100, 15)
    assert action == "follow" and seen == Observed("b", "t1", 0, 100)
    # the record did not move for a lease duration, by our clock: take it
    assert assess(lease, "a", seen, 114.9, 15)[0] == "follow"
    assert assess(lease, "a", seen, 115, 15)[0] == "take"
    # it moved: the holder is alive, the wait starts again
    moved = {"spec": {"holderIdentity": "b", "renewTime": "t2"}}
    action, seen2 = assess(moved, "a", seen, 120, 15)
    assert action == "follow" and seen2 is not None and seen2.seen_at == 120
    assert assess({"spec": {"holderIdentity": None}}, "a", None, 0, 15)[0] == "take"
    assert assess({"spec": {"holderIdentity": "a"}}, "a", None, 0, 15)[0] == "renew"


def test_exactly_one_leads_and_the_other_takes_over_after_the_lease() -> None:
    store, clock = Leases(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.step() and not b.step()
    assert store.holder == "a"
    for _ in range(10):  # a renews every 2 s: b never takes over
        clock.t += 2
        assert a.step() and not b.step()
    # a freezes (no renewals): it stops leading after the renew deadline by itself ...
    clock.t += 10
    assert not a.is_leader
    # ... and b takes the lease once it has not moved for a lease duration
    b.step()
    clock.t += 5
    assert b.step() and store.holder == "b"
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
    # a comes back: it follows
    clock.t += 2
    assert not a.step() and b.step()


def test_a_race_for_a_free_lease_has_one_winner() -> None:
    store, clock = Leases(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    a.step()
    a.release()
    assert store.holder is None and not a.is_leader
    # both saw it free; b writes first, a's write carries a stale resourceVersion
    lease = store.get_lease("ops", "skiplock-operator")
    assert b.step()
    real = store.get_lease
    store.get_lease = lambda namespace, name: copy.deepcopy(lease)  # type: ignore[method-assign]
    assert not a.step() and "409" in (a.problem or "")
    store.get_lease = real  # type: ignore[method-assign]
    assert store.holder == "b"


def test_an_unreachable_api_server_ends_leadership_within_the_renew_deadline() -> None:
    store, clock = Leases(), Clock()
    a = elector(store, "a", clock)
    assert a.step()
    store.down = True
    clock.t += 2
    assert a.step()  # one failed renewal: still within the deadline
    clock.t += 8
    assert not a.step() and "TimeoutError" in (a.problem or "")


def test_settings_refuse_a_renew_deadline_past_the_lease() -> None:
    with pytest.raises(ValueError, match="renew_deadline_seconds"):
        OperatorSettings(lease_duration_seconds=10, renew_deadline_seconds=10)
    s = OperatorSettings(identity="pod-a")
    assert (s.lease_duration_seconds, s.renew_deadline_seconds, s.retry_period_seconds) == (
        15, 10, 2)
