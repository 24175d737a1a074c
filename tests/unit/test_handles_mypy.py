"""mypy --strict against typed task handles: a wrong argument name or type at an enqueue call
site is an error, the right call is not (mypy itself runs, on two small files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TASKS = '''
from skiplock import App, JobContext, declare

app = App()


@app.task(queue="mail")
def send_email(ctx: JobContext, to: str, subject: str, retries: int = 0) -> bool:
    return True


@app.task
async def resize(ctx: JobContext, image_id: int) -> None:
    return None


# what a producer in another service holds: the signature only, nothing imported with it
# (a stub's body: `...` when it returns None, else this, which mypy takes for a stub)
@declare("send_email")
def send_email_stub(ctx: JobContext, to: str, subject: str, retries: int = 0) -> bool:
    raise NotImplementedError
'''

GOOD = '''
from skiplock import AsyncClient, Client, JobContext
from tasks import resize, send_email, send_email_stub


def produce(client: Client) -> int:
    a: int = send_email.enqueue(client, "a@example.com", subject="hi")
    b = send_email_stub.options(delay=5).enqueue(client, to="b@example.com", subject="x",
                                                 retries=2)
    c = send_email.enqueue_many(client, [send_email.call("c@example.com", "y")])
    client.enqueue("send_email", {"to": "d@example.com", "subject": "by name"})
    return a + b + c


async def produce_async(client: AsyncClient) -> int:
    return await resize.enqueue_async(client, image_id=7)


def called_directly(ctx: JobContext) -> bool:
    return send_email(ctx, "e@example.com", "direct")
'''

# each line ends with the error code mypy must report on it
BAD = '''
from skiplock import AsyncClient, Client
from tasks import resize, send_email, send_email_stub


def produce(client: Client, aclient: AsyncClient) -> None:
    send_email.enqueue(client, too="a@example.com", subject="hi")  # E: call-arg
    send_email.enqueue(client, "a@example.com", subject=3)  # E: arg-type
    send_email_stub.enqueue(client, to="b@example.com")  # E: call-arg
    resize.enqueue(client, image_id="seven")  # E: arg-type
    resize.enqueue(aclient, image_id=7)  # E: arg-type
    send_email.enqueue_many(client, [resize.call(image_id=1)])  # E: list-item
    x: str = send_email.enqueue(client, "a@example.com", "s")  # E: assignment
'''


def test_mypy_accepts_the_right_calls_and_rejects_the_wrong_ones(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    env = {**os.environ, "MYPYPATH": f"{ROOT / 'worker'}:{tmp_path}"}
    # A cache of its own (other options than `make lint`'s: sharing one made each overwrite
    # the other's entries, and a concurrent lint could read a half-written one), kept under
    # the ignored .mypy_cache so that reruns stay warm.
    cache = ROOT / ".mypy_cache" / "test_handles_mypy"
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(cache), "--config-file", os.devnull,
         "good.py", "bad.py", "tasks.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert not [e for e in errors if not e.startswith("bad.py:")], out.stdout + out.stderr
    expected = {i + 1: m[1] for i, line in enumerate(textwrap.dedent(BAD).splitlines())
                if (m := re.search(r"# E: ([\w-]+)$", line))}
    found: dict[int, set[str]] = {}
    for e in errors:
        m = re.match(r"bad\.py:(\d+): error: .*\[([\w-]+)\]$", e)
        assert m, e
        found.setdefault(int(m[1]), set()).add(m[2])
    assert set(found) == set(expected), out.stdout
    for line, code in expected.items():
        assert code in found[line], (line, found[line], out.stdout)
