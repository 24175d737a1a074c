"""The canonical request behind an idempotency key: equal requests hash equal, any difference
hashes differently and is named."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from skiplock.db import NewJob
from skiplock.idempotency import batch_request, differences, job_request, request_hash

_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                max_size=6)
_json = st.recursive(st.none() | st.booleans() | st.integers() | _text
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda i: st.lists(i, max_size=3) | st.dictionaries(_text, i, max_size=3),
                     max_leaves=8)
_jobs = st.builds(
    lambda task, args, queue, priority, attempts, run_at, delay, timeout, key: NewJob(
        task, args, json.dumps(args), queue, priority, attempts, run_at, delay, key, timeout),
    st.sampled_from(["a", "b"]), st.dictionaries(_text, _json, max_size=3),
    st.sampled_from(["q", "r"]), st.integers(-2, 2), st.integers(1, 3),
    st.none() | st.datetimes(timezones=st.just(dt.UTC)), st.none() | st.floats(0, 10),
    st.none() | st.sampled_from([1.0, 2.0]), st.none() | st.sampled_from(["k", "l"]))


def _hash(job: NewJob) -> str:
    return request_hash(job_request(job))


@given(_jobs, _jobs)
def test_hash_equal_exactly_when_the_requests_are_equal(a: NewJob, b: NewJob) -> None:
    ra, rb = job_request(a), job_request(b)
    assert (_hash(a) == _hash(b)) is (ra == rb)
    changed = {k for k in ra if ra[k] != rb[k]} - {"unique_key"}  # one key: always equal
    diff = differences(ra, rb)
    for field in changed:  # every difference is named
        assert field in diff, (field, diff)
    if not changed:
        assert diff == "the request differs"
    # the job's request stays small, whatever the arguments
    assert len(json.dumps(job_request(a))) < 1024


@given(_jobs, st.integers(-14, 14))
def test_key_order_and_the_zone_of_run_at_do_not_matter(job: NewJob, hours: int) -> None:
    zone = dt.timezone(dt.timedelta(hours=hours))
    other = job._replace(args=dict(reversed(list(job.args.items()))),
                         run_at=job.run_at.astimezone(zone) if job.run_at else None)
    assert _hash(other) == _hash(job)


def test_numbers_are_compared_as_stored() -> None:
    one: dict[str, Any] = {"x": 1}
    job = NewJob("t", one, "", "q", 0, 5)
    assert _hash(job) != _hash(job._replace(args={"x": 1.0}))
    assert _hash(job) != _hash(job._replace(args={"x": True}))


@given(st.lists(_jobs, min_size=1, max_size=4))
def test_a_batch_never_equals_a_single_job(jobs: list[NewJob]) -> None:
    batch = batch_request(jobs)
    assert request_hash(batch) != _hash(jobs[0])
    assert differences(job_request(jobs[0]), batch).startswith(
        "the key was first used for a single job, this request is a batch")
    assert request_hash(batch) != request_hash(batch_request(list(reversed(jobs)))) \
        or [job_request(j) for j in jobs] == [job_request(j) for j in reversed(jobs)]
