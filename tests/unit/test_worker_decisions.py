"""Pure decisions of the worker: rolling-deploy hand-backs, health, the supervisor's budget."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock.catalogue import describe_params
from skiplock.db import Peer
from skiplock.worker.health import assess, stale
from skiplock.worker.rollout import RECHECK_SECONDS, capable_peers, decide_unfit
from skiplock.worker.state import SkipList
from skiplock.worker.supervisor import Supervisor


def v1(ctx: object, image_id: int) -> None: ...


def v2(ctx: object, image_id: int, width: int) -> None: ...


Q = frozenset({"default"})
PEERS = {"new:1": Peer(Q, {"resize": describe_params(v2), "thumbnail": describe_params(v1)}),
         "old:1": Peer(Q, {"resize": describe_params(v1)}),
         "elsewhere:1": Peer(frozenset({"emails"}), {"thumbnail": describe_params(v1)})}


def test_a_job_a_live_peer_can_run_is_handed_back() -> None:
    d = decide_unfit("unknown task 'thumbnail'", "thumbnail", {"image_id": 1}, "default",
                     PEERS, None, None, 0)
    assert d.action == "hand_back" and "new:1" in d.message
    # a peer that does not serve the job's queue cannot run it
    assert capable_peers("thumbnail", {"image_id": 1}, "emails", PEERS, None) == ["elsewhere:1"]
    assert capable_peers("thumbnail", {"image_id": 1}, "other", PEERS, None) == []


def test_arguments_pick_the_version_that_fits() -> None:
    assert capable_peers("resize", {"image_id": 1}, "default", PEERS, None) == ["old:1"]
    assert capable_peers("resize", {"image_id": 1, "width": 5}, "default", PEERS, None) == [
        "new:1"]
    assert capable_peers("resize", {"image_id": "x"}, "default", PEERS, None) == []


def test_a_peer_of_our_own_version_is_not_capable() -> None:
    """Else two workers of one version would hand a job they both refuse to each other."""
    own = describe_params(v1)
    assert capable_peers("resize", {"image_id": 1}, "default", PEERS, own) == []


def test_a_peer_row_of_another_shape_is_not_capable() -> None:
    odd = {"w:1": Peer(Q, {"resize": {"params": [{"name": "image_id"}]}})}  # no "required"
    assert capable_peers("resize", {"image_id": 1}, "default", odd, None) == []


def test_nobody_can_run_it_waits_then_dies_with_the_reason() -> None:
    why = "unknown task 'ghost': this worker runs resize"
    first = decide_unfit(why, "ghost", {}, "default", PEERS, None, None, 120)
    assert first.action == "defer" and first.delay == RECHECK_SECONDS
    assert first.message.startswith(why)
    near_end = decide_unfit(why, "ghost", {}, "default", PEERS, None, 118.5, 120)
    assert near_end.action == "defer" and near_end.delay == pytest.approx(1.5)
    dead = decide_unfit(why, "ghost", {}, "default", PEERS, None, 121, 120)
    assert dead.action == "dead"
    assert dead.message == f"{why}; no live worker can run it for 121s"
    at_once = decide_unfit(why, "ghost", {}, "default", {}, None, None, 0)
    assert at_once.action == "dead" and at_once.message == f"{why}; no live worker can run it"


@given(waited=st.none() | st.floats(0, 1e6), grace=st.floats(0, 1e5))
def test_a_deferral_never_outlives_the_grace(waited: float | None, grace: float) -> None:
    d = decide_unfit("x", "ghost", {}, "default", {}, None, waited, grace)
    if d.action == "defer":
        assert 0 < d.delay <= RECHECK_SECONDS
        assert (waited or 0) + d.delay <= grace + 1e-6
    else:
        assert d.action == "dead" and (waited or 0) >= grace


def test_health_fails_on_a_down_service_or_old_outcomes() -> None:
    assert assess([], 0, None, 30, at=0).healthy
    assert assess([], 5, 14.9, 30, at=0).healthy
    late = assess([], 5, 15.1, 30, at=0)
    assert not late.healthy and "5 outcome(s) not written" in late.problems[0]
    assert assess(["service completer restarting"], 0, None, 30, at=0).problems == (
        "service completer restarting",)
    frozen = stale(assess([], 0, None, 30, at=0), now=100, max_age=10)
    assert not frozen.healthy and "event loop is stuck" in frozen.problems[0]


def test_skip_list_is_bounded_and_forgets_jobs_no_peer_can_run() -> None:
    s = SkipList(limit=3)
    for i in range(5):
        s.add(i, ("a" if i % 2 else "b", "default", {}, None))
    assert s.ids() == [2, 3, 4]
    s.keep(lambda job: job[0] == "a")
    assert s.ids() == [3]


def test_supervisor_restarts_then_gives_up() -> None:
    fatal: list[str] = []

    class Flaky:
        name = "flaky"
        calls = 0

        async def run(self) -> None:
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError(f"boom {self.calls}")
            await asyncio.Event().wait()

    class Broken:
        name = "broken"

        async def run(self) -> None:
            raise RuntimeError("always")

    class Quitter:
        name = "quitter"

        async def run(self) -> None:
            return None

    async def main() -> Supervisor:
        sup = Supervisor(fatal.append, lambda: False, max_restarts=3, window=60)
        flaky = Flaky()
        for s in (flaky, Broken(), Quitter()):
            sup.start(s)
        for _ in range(400):
            if len(fatal) >= 2:
                break
            await asyncio.sleep(0.05)
        assert flaky.calls == 3 and "flaky" not in sup.down
        await sup.stop(grace=5)
        return sup

    sup = asyncio.run(main())
    assert sup.restarts["flaky"] == 2
    assert any("service broken failed 4 times" in f for f in fatal)
    assert any("service quitter failed" in f and "returned while the worker runs" in f
               for f in fatal)
    assert "broken" in sup.down and "quitter" in sup.down


def test_stop_gives_up_on_a_service_that_ignores_cancellation(
        caplog: pytest.LogCaptureFixture) -> None:
    """A service that swallows its cancellation must not hold the worker's shutdown (its last
    writes and releases come after the services stop): stop() returns after its timeout,
    names the service and says where it waits."""

    class Stubborn:
        name = "stubborn"

        give_in = False

        async def run(self) -> None:
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if self.give_in:  # so that the test's own loop can end
                        raise
                    # else: the bug being survived

    class Polite:
        name = "polite"

        async def run(self) -> None:
            await asyncio.sleep(3600)

    async def main() -> tuple[list[str], float, Supervisor]:
        sup = Supervisor(lambda why: None, lambda: True)
        stubborn = Stubborn()
        sup.start(stubborn)
        sup.start(Polite())
        await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        stuck = await sup.stop(grace=0.3)
        took = asyncio.get_running_loop().time() - started
        stubborn.give_in = True
        sup.tasks["stubborn"].cancel()
        await asyncio.wait([sup.tasks["stubborn"]], timeout=2)
        return stuck, took, sup

    with caplog.at_level("ERROR", logger="skiplock.worker"):
        stuck, took, sup = asyncio.run(main())
    assert stuck == ["stubborn"]
    assert 0.3 <= took < 2.0, took
    assert sup.tasks["polite"].cancelled()
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert "service stubborn did not stop within 0.3s" in message, message
    assert "in run" in message and "test_worker_decisions.py" in message, message
    assert "polite" not in message


def test_cancel_watcher_stops_when_cancelled_as_its_wake_up_comes() -> None:
    """The wake event set and the task cancelled in the same loop step: on 3.11 a wait_for
    around the event returns its result and drops the cancellation, and a `while True`
    service then never stops (a worker that hung in its shutdown)."""
    from skiplock.worker.cancel_watcher import CancelWatcher
    from skiplock.worker.state import WorkerState

    async def main() -> bool:
        state = WorkerState("w:1:x", 2, 30)
        watcher = CancelWatcher(state, None, 3600, lambda job_id, reason: None)  # type: ignore[arg-type]
        task = asyncio.create_task(watcher.run())
        for _ in range(3):
            await asyncio.sleep(0)  # it now waits on its event
        watcher.wake.set()
        task.cancel()
        await asyncio.wait([task], timeout=2)
        return task.cancelled()

    assert asyncio.run(main())
