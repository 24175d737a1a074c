"""The worker: a set of small services under one supervisor.

- ``claimer``: claims runnable jobs into free slots (backpressure: pauses while outcomes wait);
- ``executor``: runs each claimed job's handler and turns what it did into an outcome;
- ``completer``: writes outcomes in fenced batches, splitting a batch the database refuses;
- ``lease_renewer``: the heartbeat that extends the leases of running jobs;
- ``listener``: LISTEN for new jobs (polling covers the gaps);
- ``rescuer``: returns jobs whose worker stopped renewing their lease;
- ``registry``: this worker's row in the worker registry, and what its peers can run;
- ``monitor``: the health snapshot behind ``/livez``.

A service that fails unexpectedly is restarted with capped backoff, or takes the worker down
(``WorkerFailed``, a non-zero exit) when it keeps failing: a worker never keeps claiming jobs
it can no longer finish.
"""

from .core import Worker, WorkerFailed, make_worker_id

__all__ = ["Worker", "WorkerFailed", "make_worker_id"]
