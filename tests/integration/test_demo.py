"""`skiplock demo` (the README's first command) on a given database and on the embedded one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", *args, "demo", "--jobs", "40"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)


def test_demo_on_a_given_database(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    done = run_demo("--database-url", database_url, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rejected at enqueue, nothing stored: unknown task 'resize_image'" in done.stdout
    assert "SIGKILLed worker pid" in done.stdout
    assert "results written: 48 (one per succeeded job: yes)" in done.stdout
    assert "demo finished: every job is terminal" in done.stdout


@pytest.mark.timeout(300)
def test_demo_on_the_embedded_postgres() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    done = run_demo(env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting an embedded PostgreSQL" in done.stdout
    assert "demo finished: every job is terminal" in done.stdout
