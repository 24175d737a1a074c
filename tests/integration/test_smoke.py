from skiplock import Client


def test_enqueue_and_read_back(database_url: str) -> None:
    with Client(database_url) as c:
        job_id = c.enqueue("add", {"a": 1, "b": 2})
        job = c.get_job(job_id)
    assert job is not None
    assert job["state"] == "queued"
    assert job["args"] == {"a": 1, "b": 2}
