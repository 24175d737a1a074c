"""A worker's counters exist at zero from its start, so rate() sees their first increment."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from skiplock import metrics


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_known_label_combinations_start_at_zero() -> None:
    metrics.declare_series(["q-series-a", "q-series-b"], ["t-series"], ["claimer"])
    for queue in ("q-series-a", "q-series-b"):
        for name in ("skiplock_jobs_claimed_total", "skiplock_jobs_succeeded_total",
                     "skiplock_jobs_cancelled_total", "skiplock_jobs_dead_total"):
            assert _value(name, queue=queue, task="t-series") == 0.0, (name, queue)
        assert _value("skiplock_jobs_released_total", queue=queue) == 0.0
    assert _value("skiplock_worker_service_failures_total", service="claimer") == 0.0
    for reason in metrics.STOP_REASONS:
        assert _value("skiplock_runs_stopped_total", reason=reason) is not None
    # declaring again keeps what was counted
    metrics.JOBS_CLAIMED.labels("q-series-a", "t-series").inc(3)
    metrics.declare_series(["q-series-a"], ["t-series"], [])
    assert _value("skiplock_jobs_claimed_total", queue="q-series-a", task="t-series") == 3.0


def _declared_with(prefix: str) -> int:
    """Series in the registry with a queue label of this prefix (unique to one test case)."""
    return sum(1 for metric in (*metrics._PER_QUEUE_TASK, metrics.JOBS_RELEASED)
               for family in metric.collect() for sample in family.samples
               if sample.name.endswith("_total")
               and sample.labels.get("queue", "").startswith(prefix))


# all 8 (3 x 41: to the last series, 984 + 3 + 13), fewer, one, only the per-queue one, none
@pytest.mark.parametrize(("n_queues", "n_tasks"), [
    (1, 1), (3, 41), (20, 25), (1, 500), (1, 985), (1001, 1), (1, 5000)])
def test_all_metrics_together_never_exceed_the_cap(n_queues: int, n_tasks: int) -> None:
    """One budget for every metric: 8 per-pair metrics x 1000 pairs no longer declares 8000
    series. Whole metrics in their order (the rare events first), fixed sets before them."""
    prefix = f"q-cap-{n_queues}x{n_tasks}-"
    queues = [f"{prefix}{i}" for i in range(n_queues)]
    tasks = [f"t-cap-{i}" for i in range(n_tasks)]
    services = ["claimer", "executor"]
    declared = metrics.declare_series(queues, tasks, services)
    fixed = len(metrics.STOP_REASONS) + len(metrics.DB_OPERATIONS) + len(services)
    assert declared <= metrics.MAX_DECLARED_SERIES
    assert _declared_with(prefix) + fixed == declared  # the count is what the registry got
    budget = metrics.MAX_DECLARED_SERIES - fixed
    released = n_queues <= budget
    per_pair = (budget - (n_queues if released else 0)) // (n_queues * n_tasks)
    expect = min(per_pair, len(metrics._PER_QUEUE_TASK))
    assert declared == fixed + (n_queues if released else 0) + expect * n_queues * n_tasks
    # which metrics: the first `expect` of the priority order, each for every pair
    for i, metric in enumerate(metrics._PER_QUEUE_TASK):
        name = metric._name + "_total"
        assert (_value(name, queue=queues[-1], task=tasks[-1]) is not None) == (i < expect)
    assert (_value("skiplock_jobs_released_total", queue=queues[0]) is not None) == released


def test_too_many_pairs_are_left_to_first_use() -> None:
    queues = [f"q-many-{i}" for i in range(metrics.MAX_DECLARED_SERIES + 1)]
    metrics.declare_series(queues[:-1], ["t-many"], [])
    assert _value("skiplock_jobs_claimed_total", queue="q-many-0", task="t-many") is None
    assert _value("skiplock_jobs_dead_total", queue="q-many-0", task="t-many") is None
    assert _value("skiplock_jobs_released_total", queue="q-many-0") is None  # 11 + 1000 > cap
    metrics.declare_series(queues[:900], ["t-many"], [])
    assert _value("skiplock_jobs_released_total", queue="q-many-0") == 0.0
    assert _value("skiplock_jobs_claimed_total", queue="q-many-0", task="t-many") is None


class _Job:
    def __init__(self, queue: str, task: str) -> None:
        self.queue, self.task = queue, task


# no deadline: each example reads the process-wide registry six times, which the rest of the
# unit suite has filled by then (327 ms an example seen on a loaded 2-core machine)
@settings(deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["q-count-a", "q-count-b", "q-count-ü"]),
                          st.sampled_from(["t-count-x", "t-count-y"])), max_size=60))
def test_count_jobs_adds_each_job_to_its_queue_and_task(pairs: list[tuple[str, str]]) -> None:
    """Counted once per (queue, task) of a batch, the counters still move by one per job."""
    every = [(q, t) for q in ("q-count-a", "q-count-b", "q-count-ü")
             for t in ("t-count-x", "t-count-y")]
    before = {p: _value("skiplock_jobs_claimed_total", queue=p[0], task=p[1]) or 0.0
              for p in every}
    metrics.count_jobs(metrics.JOBS_CLAIMED, [_Job(q, t) for q, t in pairs])
    for p in every:
        after = _value("skiplock_jobs_claimed_total", queue=p[0], task=p[1]) or 0.0
        assert after - before[p] == pairs.count(p), p
