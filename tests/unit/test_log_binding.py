"""logs.bind: the fields a block's log records get (a job's handler, a worker's loops)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from skiplock import logs


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Keep]:
    handler = _Keep()
    logger = logging.getLogger("skiplock.test-binding")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name, None) for name in ("worker_id", "job_id", "task")}


def test_nested_blocks_add_fields_and_each_exit_restores_the_outer_ones(kept: _Keep) -> None:
    log = logging.getLogger("skiplock.test-binding")
    with logs.bind(worker_id="w1"):
        with logs.bind(job_id=7, task="add"):
            log.info("inner")
            with logs.bind(job_id=8):  # an inner value wins
                log.info("innermost")
            log.info("inner again")
        log.info("outer")
    log.info("none")
    assert [_fields(r) for r in kept.records] == [
        {"worker_id": "w1", "job_id": 7, "task": "add"},
        {"worker_id": "w1", "job_id": 8, "task": "add"},
        {"worker_id": "w1", "job_id": 7, "task": "add"},
        {"worker_id": "w1", "job_id": None, "task": None},
        {"worker_id": None, "job_id": None, "task": None},
    ]


def test_an_exception_leaves_the_block_unbound(kept: _Keep) -> None:
    log = logging.getLogger("skiplock.test-binding")
    with pytest.raises(ZeroDivisionError), logs.bind(job_id=1):
        1 / 0
    log.info("after")
    assert _fields(kept.records[0])["job_id"] is None


def test_concurrent_tasks_keep_their_own_fields(kept: _Keep) -> None:
    """One binding per job task, 50 interleaved at every await: none sees another's."""
    log = logging.getLogger("skiplock.test-binding")

    async def job(n: int) -> None:
        with logs.bind(job_id=n):
            for _ in range(3):
                await asyncio.sleep(0)
                log.info("%d", n)

    async def main() -> None:
        with logs.bind(worker_id="w"):
            await asyncio.gather(*(job(n) for n in range(50)))

    asyncio.run(main())
    assert len(kept.records) == 150
    assert all(r.job_id == int(r.getMessage()) and r.worker_id == "w"  # type: ignore[attr-defined]
               for r in kept.records)


def test_one_binding_entered_twice_is_an_error_not_a_leak(kept: _Keep) -> None:
    binding = logs.bind(job_id=1)
    with binding, pytest.raises(RuntimeError, match="once per block"):
        binding.__enter__()
    logging.getLogger("skiplock.test-binding").info("after")
    assert _fields(kept.records[0])["job_id"] is None
