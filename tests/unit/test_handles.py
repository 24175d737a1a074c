"""Typed task handles (skiplock/handles.py): the pure parts, with a recording fake client."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from skiplock import App, InvalidArguments, JobContext, TaskHandle, declare

app = App()


@app.task(queue="mail", max_attempts=2)
def send(ctx: JobContext, to: str, subject: str = "hello", *, urgent: bool = False) -> str:
    """Send it."""
    return f"{to}:{subject}:{urgent}:{ctx.job_id}"


@app.task
async def later(ctx: JobContext, n: int) -> int:
    return n * 2


@app.task  # with **rest, ctx must be positional-only for mypy (Concatenate's prefix is)
def loose(ctx: JobContext, /, first: int, **rest: Any) -> dict[str, Any]:
    return {"first": first, **rest}


class Recorder:
    """Stands in for Client/AsyncClient: records what enqueue and enqueue_many got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def enqueue(self, task: str, args: Any = None, **options: Any) -> int:
        self.calls.append(("enqueue", (task, args), options))
        return 7

    def enqueue_many(self, jobs: Any) -> int:
        self.calls.append(("enqueue_many", list(jobs), {}))
        return len(self.calls[-1][1])


class AsyncRecorder(Recorder):
    async def enqueue(self, task: str, args: Any = None, **options: Any) -> int:  # type: ignore[override]
        return super().enqueue(task, args, **options)


def ctx() -> JobContext:
    return JobContext(job_id=3, attempt=1, max_attempts=2, queue="mail", task="send",
                      worker_id="w")


def test_a_handle_is_called_like_its_function() -> None:
    assert isinstance(send, TaskHandle)
    assert send(ctx(), "a@b", urgent=True) == "a@b:hello:True:3"
    assert send.__name__ == "send" and send.__doc__ == "Send it."
    assert list(inspect.signature(send).parameters) == ["ctx", "to", "subject", "urgent"]
    assert asyncio.iscoroutinefunction(later) and not asyncio.iscoroutinefunction(send)
    assert asyncio.run(later(ctx(), 4)) == 8
    assert app.tasks["send"].func is not send  # the worker runs the function itself
    assert app.tasks["send"].func(ctx(), "x") == "x:hello:False:3"


def test_arguments_are_named_and_checked() -> None:
    assert send.arguments("a@b") == {"to": "a@b"}  # defaults stay the handler's
    assert send.arguments("a@b", "s", urgent=True) == {"to": "a@b", "subject": "s",
                                                       "urgent": True}
    assert loose.arguments(1, colour="red") == {"first": 1, "colour": "red"}
    with pytest.raises(InvalidArguments, match="send"):
        send.arguments(too="a@b")  # type: ignore[call-arg]
    with pytest.raises(InvalidArguments, match="to"):
        send.arguments(to=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArguments):
        send.arguments("a", "b", "c")  # type: ignore[call-arg, arg-type]


def test_enqueue_passes_the_name_arguments_and_options() -> None:
    client = Recorder()
    assert send.enqueue(client, "a@b", subject="s") == 7  # type: ignore[arg-type]
    urgent = send.options(priority=-5, delay=30, unique_key="k")
    urgent.enqueue(client, "c@d")  # type: ignore[arg-type]
    first, second = client.calls
    assert first[1] == ("send", {"to": "a@b", "subject": "s"})
    assert first[2]["queue"] == "mail" and first[2]["priority"] == 0
    assert second[2] | {} == {**first[2], "priority": -5, "delay": 30, "unique_key": "k"}
    assert send.options().enqueue(client, "x") == 7  # type: ignore[arg-type]
    # the original is unchanged by options()
    assert client.calls[-1][2] == first[2]


def test_enqueue_async_and_many() -> None:
    client = AsyncRecorder()
    assert asyncio.run(later.enqueue_async(client, 3)) == 7  # type: ignore[arg-type]
    assert client.calls[0][1] == ("later", {"n": 3})
    n = send.enqueue_many(client, [send.call("a"), send.options(priority=2).call("b")])  # type: ignore[arg-type]
    assert n == 2
    jobs = client.calls[-1][1]
    assert [j["args"] for j in jobs] == [{"to": "a"}, {"to": "b"}]
    assert [j["priority"] for j in jobs] == [0, 2] and "delay" not in jobs[0]
    with pytest.raises(InvalidArguments, match="'later'"):
        send.enqueue_many(client, [later.call(1)])  # type: ignore[arg-type, list-item]
    with pytest.raises(InvalidArguments, match="run_at, not delay"):
        send.enqueue_many(client, [send.options(delay=1).call("a")])  # type: ignore[arg-type]


def test_declare_gives_a_handle_without_the_handler() -> None:
    @declare("send", queue="mail")
    def stub(ctx: JobContext, to: str, subject: str = "hello", *, urgent: bool = False) -> str:
        raise NotImplementedError

    client = Recorder()
    stub.enqueue(client, "a@b")  # type: ignore[arg-type]
    assert client.calls[0][1] == ("send", {"to": "a@b"})
    assert client.calls[0][2]["queue"] == "mail"
    with pytest.raises(TypeError, match="only declared"):
        stub(ctx(), "a@b")
    assert stub.params == send.params  # the same catalogue entry as the real handler
    with pytest.raises(ValueError, match="task name"):
        declare("x" * 300)(stub)
    for queue in ("", " bad"):
        with pytest.raises(ValueError, match="queue"):
            declare("ok", queue=queue)(stub)
    assert "send" in app.tasks and len(app.tasks) == 3  # declare registers nothing
