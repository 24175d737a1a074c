"""Prometheus metrics a worker exposes (optional HTTP endpoint, SKIPLOCK_METRICS_PORT)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOBS_CLAIMED = Counter("skiplock_jobs_claimed", "Jobs claimed by this worker", ["queue", "task"])
JOBS_SUCCEEDED = Counter("skiplock_jobs_succeeded", "Jobs that succeeded", ["queue", "task"])
JOBS_RETRIED = Counter("skiplock_jobs_retried", "Failed attempts scheduled for retry", ["queue", "task"])
JOBS_DEAD = Counter("skiplock_jobs_dead", "Jobs that went dead here", ["queue", "task"])
JOBS_RELEASED = Counter("skiplock_jobs_released", "Jobs handed back at shutdown", ["queue"])
JOB_SECONDS = Histogram(
    "skiplock_job_duration_seconds", "Handler run time", ["queue", "task"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)
CLAIM_SECONDS = Histogram(
    "skiplock_claim_duration_seconds", "Time for one claim transaction",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
LEASE_RENEWALS = Counter("skiplock_lease_renewals", "Leases extended by heartbeats")
LEASES_LOST = Counter("skiplock_leases_lost", "Heartbeats that found the job no longer ours")
STALE_WRITES = Counter("skiplock_stale_writes_rejected",
                       "Completions rejected by the fence (another worker owns the job now)")
DB_ERRORS = Counter("skiplock_database_errors", "Database operations that failed", ["operation"])
RESCUED = Counter("skiplock_leases_rescued", "Expired leases returned to the queue or marked dead")
