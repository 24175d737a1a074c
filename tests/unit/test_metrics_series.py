"""A worker's counters exist at zero from its start, so rate() sees their first increment."""

from __future__ import annotations

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


def test_too_many_pairs_are_left_to_first_use() -> None:
    queues = [f"q-many-{i}" for i in range(metrics.MAX_DECLARED_PAIRS + 1)]
    metrics.declare_series(queues, ["t-many"], [])
    assert _value("skiplock_jobs_claimed_total", queue="q-many-0", task="t-many") is None
    assert _value("skiplock_jobs_released_total", queue="q-many-0") == 0.0
