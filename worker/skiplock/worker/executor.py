"""Runs claimed jobs' handlers and turns what each did into an outcome for the completer.

Stopping a run (a cancel request, a deadline): the handler is told (``ctx.cancelled``; an async
handler is also cancelled at its next await) and gets ``cancel_grace`` seconds. Whatever it
does then, the attempt's outcome is the stop's: cancelled (the job ends cancelled), or "timed
out after N s" (retried per the task's policy). A handler still running after the grace is
abandoned: the outcome is written without it, so the job moves on, and its late result is
discarded. A thread cannot be killed, so an abandoned sync handler keeps its slot (the
worker claims one job less) until it returns; when every slot is held that way, /livez fails
and the pod is restarted, which is the only way to get those threads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import logs, metrics, tracing
from ..app import App, JobContext, StopSignal, Task
from ..catalogue import validate_args
from ..db import ClaimedJob, Failure
from ..errors import InvalidArguments, PermanentError, Snooze
from ..outcomes import NotStorable, describe_exception, storable_result, storable_text
from ..retry import backoff_delay
from .rollout import decide_unfit
from .state import Kind, Outcome, Run, WorkerState

log = logging.getLogger("skiplock.worker")


class Executor:
    """Starts one asyncio task per claimed job. Not a loop: a job task that fails in its own
    bookkeeping (never a handler's exception, which is an outcome) is reported to the
    supervisor and its run forgotten, so its lease expires instead of being renewed forever."""

    name = "executor"

    def __init__(
        self,
        state: WorkerState,
        app: App,
        *,
        max_result_bytes: int,
        unrunnable_grace: float,
        report_failure: Callable[[str, BaseException], bool],
        cancel_grace: float = 10.0,
    ) -> None:
        self.state = state
        self.app = app
        self.max_result_bytes = max_result_bytes
        self.unrunnable_grace = unrunnable_grace
        self.cancel_grace = cancel_grace
        self.report_failure = report_failure
        self.threads = ThreadPoolExecutor(
            max_workers=state.concurrency, thread_name_prefix="skiplock-job"
        )

    def start_all(self, jobs: list[ClaimedJob]) -> None:
        """Start a claimed batch: one task per job, the claimed counter moved once per
        (queue, task) of the batch rather than once per job."""
        now = time.monotonic()
        for job in jobs:
            run = Run(job, now)
            self.state.owned[job.id] = run
            task = asyncio.create_task(self.execute(run))
            # under an eager task factory (3.12+) a job may have ended inside create_task:
            # nothing left to track, and execute's end found no entry to remove
            if not task.done():
                run.task = self.state.executing[job.id] = task
        metrics.count_jobs(metrics.JOBS_CLAIMED, jobs)

    async def execute(self, run: Run) -> None:
        job = run.job
        try:
            with logs.bind(job_id=job.id, task=job.task, attempt=job.attempt, queue=job.queue):
                await self._execute(run)
        except asyncio.CancelledError:
            raise  # the worker is shutting down (the run was released first)
        except Exception as exc:
            log.error("job %d: the executor failed around its handler", job.id, exc_info=exc)
            # An attempt that failed like any other (counted, retried per the policy): not a
            # run left to renew its lease forever, nor one handed back without counting.
            if run.executing:
                self.fail(run, f"the worker failed around the handler: {describe_exception(exc)}",
                          1.0, permanent=False)
            self.report_failure(self.name, exc)
        finally:
            # Bookkeeping inside the task, not in a done callback: one loop turn less per job.
            # (run.task, not asyncio.current_task(): that costs a getpid() call on 3.11.)
            if run.task is not None and self.state.executing.get(job.id) is run.task:
                del self.state.executing[job.id]
            if run.abandoned:
                self.state.abandoned.discard(run)
                metrics.ABANDONED.set(len(self.state.abandoned))
                log.warning("job %d attempt %d: the abandoned handler returned after %.1fs; "
                            "its slot is free again", job.id, job.attempt,
                            time.monotonic() - run.started)
            if self.state.more_waiting:
                self.state.wake.set()

    async def _execute(self, run: Run) -> None:
        job = run.job
        task = self.app.tasks.get(job.task)
        if task is None:
            known = ", ".join(sorted(self.app.tasks)) or "none"
            self._unfit(run, f"unknown task {job.task!r}: this worker runs {known}")
            return
        timeout = job.timeout or task.timeout
        run.signal = StopSignal()
        ctx = JobContext(
            job.id, job.attempt, job.max_attempts, job.queue, job.task, self.state.worker_id,
            timeout, job.snoozes, run.signal,
        )
        try:
            _check_args(task.func, ctx, job.args)
            # The declared JSON types too: peers are judged by them (rollout.capable_peers).
            # With no arguments there is no type to check (_check_args saw what is missing).
            if job.args:
                validate_args(job.task, task.params, job.args)
        except (TypeError, InvalidArguments) as exc:
            self._unfit(run, f"arguments do not fit task {job.task!r}: {exc}")
            return
        started = time.perf_counter()
        limit = self.max_result_bytes
        if timeout is not None:
            run.timers.append(asyncio.get_running_loop().call_later(
                timeout, self.stop_run, run, "timeout", f"timed out after {timeout:g}s"))
        if run.stop is not None:  # cancelled while its arguments were checked
            self.finish(run, self._stop_outcome(run, "before the handler started"))
            return
        # The attempt's span (the otel extra, with an SDK configured; skiplock/tracing.py):
        # around the handler only, so its own spans are children (the contextvars copied for
        # a sync handler's thread carry it) and its exception is recorded on the span.
        span = (tracing.attempt_span(job.task, job.queue, job.id, job.attempt, job.trace_context)
                if tracing.active() else contextlib.nullcontext())
        try:
            with span:
                if task.is_async:
                    result_json = _as_json(await task.func(ctx, **job.args), limit)
                else:
                    # The result is checked in the handler's thread: a multi-megabyte result
                    # is serialised there, not on the event loop every service shares.
                    # run_in_executor does not carry contextvars: copy them so the handler's
                    # own log lines get the job's fields.
                    call = functools.partial(_call_sync, task.func, ctx, job.args, limit)
                    result_json = await asyncio.get_running_loop().run_in_executor(
                        self.threads, contextvars.copy_context().run, call
                    )
        except asyncio.CancelledError:
            if not run.task_cancelled:
                raise  # the worker is shutting down (the run was released first)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            self.finish(run, self._stop_outcome(run, "the handler was cancelled"))
        except Exception as exc:
            if run.stop is not None:
                how = f"the handler stopped with {describe_exception(exc, traceback_frames=0)}"
                self.finish(run, self._stop_outcome(run, how.partition("\n")[0][:300]))
            else:
                self._failed(run, task, exc)
        else:
            if run.stop is not None:
                # A result that came after the stop is not the attempt's: a cancelled job
                # stores none, and an attempt past its deadline timed out.
                self.finish(run, self._stop_outcome(run, "the handler returned; result discarded"))
            else:
                self.finish(run, Outcome(run, Kind.SUCCEEDED, result_json=result_json))
        finally:
            metrics.child(metrics.JOB_SECONDS, job.queue, job.task).observe(
                time.perf_counter() - started
            )

    def _failed(self, run: Run, task: Task, exc: Exception) -> None:
        """The handler raised (and was not told to stop): the outcome its exception means."""
        job = run.job
        if isinstance(exc, Snooze):
            if job.snoozes >= task.max_snoozes:
                message = (f"snoozed {job.snoozes} times: the task allows max_snoozes="
                           f"{task.max_snoozes}; the job is dead rather than snooze for ever")
                self.fail(run, message, 0.0, permanent=True)
                log.warning("job %d: %s", job.id, message)
            else:
                self.finish(run, Outcome(run, Kind.SNOOZED, delay=exc.seconds))
        elif isinstance(exc, NotStorable):
            self.fail(run, str(exc), 0.0, permanent=True)
            log.warning("job %d failed permanently: %s", job.id, exc)
        elif isinstance(exc, PermanentError):
            # describe_exception, not str(exc): a hostile __str__ must not kill the executor
            error = describe_exception(exc, traceback_frames=0)
            self.fail(run, error, 0.0, permanent=True)
            log.warning("job %d failed permanently: %s", job.id, error)
        else:
            error = describe_exception(exc)
            self.fail(run, error, backoff_delay(task.backoff, job.attempt), permanent=False)
            log.info("job %d attempt %d/%d failed: %s", job.id, job.attempt, job.max_attempts,
                     error.partition("\n")[0][:300])

    # -- stopping a run ------------------------------------------------------------------------

    def cancel(self, job_id: int, reason: str) -> bool:
        """A cancel request for a job this worker runs; False when it runs no such job now."""
        run = self.state.owned.get(job_id)
        if run is None or not run.executing:
            return False  # finished meanwhile: the completion statement sees the request
        self.stop_run(run, "cancel", f"cancelled by {reason}")
        return True

    def stop_run(self, run: Run, kind: str, message: str) -> None:
        """Tell the handler to stop, and give up on it after the grace."""
        if run.stop is not None or not run.executing or not self.state.holds(run.job):
            return
        run.stop, run.stop_message = kind, message
        job = run.job
        log.info("job %d attempt %d: %s; telling the handler to stop (grace %.0fs)",
                 job.id, job.attempt, message, self.cancel_grace)
        metrics.RUNS_STOPPED.labels(kind).inc()
        if run.signal is None:
            # Not started yet: _execute sees run.stop before it calls the handler. (Cancelling
            # a task that has not run yet would skip all of execute(), finally included.)
            return
        run.signal.set(message)
        task = self.app.tasks.get(job.task)
        job_task = self.state.executing.get(job.id)
        if task is not None and task.is_async and job_task is not None:
            run.task_cancelled = True  # tells this cancel from the worker's own at shutdown
            job_task.cancel()
        run.timers.append(
            asyncio.get_running_loop().call_later(self.cancel_grace, self._give_up, run))

    def _give_up(self, run: Run) -> None:
        """The handler did not stop within the grace: write the stop's outcome without it."""
        if not run.executing:
            return
        run.abandoned = True
        self.state.abandoned.add(run)
        # Its task leaves `executing` (keyed by job id: a retry of the job claimed here again
        # must not overwrite it and hide the busy thread); free_slots counts it as abandoned,
        # and the shutdown drain does not wait for it (its outcome is written).
        if self.state.executing.get(run.job.id) is not None:
            del self.state.executing[run.job.id]
        metrics.ABANDONED.set(len(self.state.abandoned))
        log.warning("job %d attempt %d: the handler did not stop within %.0fs; it is abandoned "
                    "(its slot stays taken until it returns; %d abandoned now)", run.job.id,
                    run.job.attempt, self.cancel_grace, len(self.state.abandoned))
        self.finish(run, self._stop_outcome(
            run, f"the handler did not stop within {self.cancel_grace:g}s and was abandoned"))

    def _stop_outcome(self, run: Run, how: str) -> Outcome:
        job = run.job
        text = storable_text(f"{run.stop_message}; {how}")
        if run.stop == "cancel":
            # Written as a failure: the completion statement ends it cancelled (the request
            # is stored), with who asked in its history; never retried.
            failure = Failure(job.id, job.attempt, text, 0.0, True)
        else:
            task = self.app.tasks.get(job.task)
            delay = backoff_delay(task.backoff, job.attempt) if task is not None else 1.0
            failure = Failure(job.id, job.attempt, text, delay, False)
        return Outcome(run, Kind.FAILED, failure=failure)

    def _unfit(self, run: Run, why: str) -> None:
        """A job this version cannot run: leave it to a peer that can, wait, or fail it."""
        job = run.job
        own = self.app.tasks.get(job.task)
        own_params = dict(own.params) if own is not None else None
        decision = decide_unfit(why, job.task, job.args, job.queue, self.state.peers, own_params,
                                job.unrunnable_for, self.unrunnable_grace)
        if decision.action == "dead":
            self.fail(run, decision.message, 0.0, permanent=True)
            return
        if decision.action == "hand_back":
            metrics.HANDED_BACK.labels(job.queue, job.task).inc()
            self.state.skip_ids.add(job.id, (job.task, job.queue, job.args, own_params))
            kind = Kind.HANDED_BACK
        else:
            metrics.WAITING_FOR_WORKER.labels(job.queue, job.task).inc()
            kind = Kind.DEFERRED
        log.info("job %d: %s", job.id, decision.message)
        self.finish(run, Outcome(run, kind, reason=storable_text(decision.message),
                                 delay=decision.delay))

    def fail(self, run: Run, error: str, delay: float, *, permanent: bool) -> None:
        job = run.job
        failure = Failure(job.id, job.attempt, storable_text(error), delay, permanent)
        self.finish(run, Outcome(run, Kind.FAILED, failure=failure))

    def finish(self, run: Run, outcome: Outcome) -> None:
        if not run.executing:
            # the late end of an abandoned handler: the run's outcome was given without it
            log.info("job %d attempt %d: the abandoned handler ended (%s); discarded",
                     run.job.id, run.job.attempt, outcome.kind.value)
            return
        run.executing = False
        for timer in run.timers:
            timer.cancel()
        run.timers.clear()
        if self.state.still_ours(run.job):
            self.state.outcomes.add(outcome)

    def shutdown(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)


def _as_json(result: Any, limit: int) -> str:
    # None, the common no-result case, needs no check
    return "null" if result is None else storable_result(result, limit)


def _call_sync(func: Callable[..., Any], ctx: JobContext, args: dict[str, Any], limit: int) -> str:
    # Stopped while waiting for a pool thread: the handler never starts.
    ctx.raise_if_cancelled()
    return _as_json(func(ctx, **args), limit)


@functools.lru_cache(maxsize=1024)
def _keyword_shape(func: Any) -> tuple[str, frozenset[str], frozenset[str], bool] | None:
    """(first parameter, accepted names, required names, takes **kwargs) for a handler whose
    fit to keyword arguments is decided by names alone; None when only bind() can tell."""
    params = list(inspect.signature(func).parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return None
    names: set[str] = set()
    required: set[str] = set()
    var_kw = False
    for p in params[1:]:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is inspect.Parameter.POSITIONAL_ONLY:
            return None
        elif p.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(p.name)
            if p.default is inspect.Parameter.empty:
                required.add(p.name)
    return params[0].name, frozenset(names), frozenset(required), var_kw


def _check_args(func: Any, ctx: JobContext, args: dict[str, Any]) -> None:
    """Raise TypeError (bind's message) when the arguments do not fit the handler.

    inspect.signature + bind cost a fifth of a no-op job's CPU; the cached shape answers the
    common case and bind() still explains every misfit."""
    shape = _keyword_shape(func)
    if shape is not None:
        first, names, required, var_kw = shape
        keys = args.keys()
        if first not in keys and required <= keys and (var_kw or keys <= names):
            return
    inspect.signature(func).bind(ctx, **args)
