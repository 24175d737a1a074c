"""Prometheus metrics for the operator, labelled by JobQueue."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

_L = ("namespace", "jobqueue")

BACKLOG = Gauge("skiplock_operator_backlog", "Runnable plus stuck jobs (capped)", _L)
IN_FLIGHT = Gauge("skiplock_operator_in_flight", "Running jobs with a live lease", _L)
DEAD = Gauge("skiplock_operator_dead", "Dead jobs (capped)", _L)
DESIRED = Gauge("skiplock_operator_desired_replicas", "Replicas the decision asked for", _L)
REPLICAS = Gauge("skiplock_operator_replicas",
                 "Replicas of the worker Deployment (its status.replicas)", _L)
READY_REPLICAS = Gauge("skiplock_operator_ready_replicas",
                       "Ready replicas of the worker Deployment", _L)
AVAILABLE_REPLICAS = Gauge("skiplock_operator_available_replicas",
                           "Available replicas of the worker Deployment", _L)
DATABASE_UP = Gauge("skiplock_operator_database_up", "1 if the last stats query worked", _L)
PAUSED = Gauge("skiplock_operator_queues_paused",
               "1 while every queue of the JobQueue is paused (skiplock queue pause)", _L)
# One series per condition type: 1 while the condition is True (alert on Ready == 0).
CONDITION = Gauge("skiplock_operator_condition",
                  "1 while the JobQueue's condition is True, else 0", (*_L, "type"))
SCALE_EVENTS = Counter("skiplock_operator_scale_events_total", "Replica changes",
                       (*_L, "direction"))
RECONCILE_ERRORS = Counter("skiplock_operator_reconcile_errors_total",
                           "Polls that ended in an error", (*_L, "reason"))
STATS_SECONDS = Histogram("skiplock_operator_stats_query_seconds",
                          "Time to read queue stats from Postgres", _L,
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
# Not per JobQueue: what the operator costs the API server, by verb (get, patch, ...).
KUBE_CALLS = Counter("skiplock_operator_kube_calls_total",
                     "Kubernetes API calls made by the operator's polls and leader election",
                     ("verb",))
LEADER = Gauge("skiplock_operator_leader", "1 while this replica holds the leader Lease")

_GAUGES = (BACKLOG, IN_FLIGHT, DEAD, DESIRED, REPLICAS, READY_REPLICAS, AVAILABLE_REPLICAS,
           DATABASE_UP, PAUSED)


def forget(namespace: str, jobqueue: str, condition_types: tuple[str, ...] = ()) -> None:
    """Drop a deleted JobQueue's series so dashboards don't show stale numbers."""
    for gauge in _GAUGES:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, jobqueue)
    for type_ in condition_types:
        with contextlib.suppress(KeyError):
            CONDITION.remove(namespace, jobqueue, type_)
