"""Helpers for the kind suite: kubectl, a self-healing port-forward to Postgres, waits with
deadlines, and a replica/backlog timeline that is saved as a PNG.

The waits and the end-state invariants are the ones the rest of the test suite uses
(``tests.support``): pytest puts the repository root on ``sys.path`` for ``e2e`` (a package,
like ``tests``), which is also how ``e2e.support`` itself is imported."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "e2e"
CACHE = Path(os.environ.get("SKIPLOCK_CACHE_DIR", "/var/cache/skiplock"))


def log(message: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 timeout: float = 120) -> str:
        proc = subprocess.run([str(self.binary), "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def apply(self, manifest: str, namespace: str | None = None) -> None:
        ns = ["-n", namespace] if namespace else []
        self(*ns, "apply", "-f", "-", input=manifest)


# The kind suite's polling policy: once a second, and a transient API or DB error (a pod or the
# port-forward being replaced) is a value to report on timeout, not a failure.
wait_for = functools.partial(wait_until, interval=1.0, retry_on=(Exception,))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PortForward:
    """``kubectl port-forward`` to a Service on a fixed local port, restarted whenever it dies
    (it does each time the Postgres pod behind it is replaced)."""

    def __init__(self, kubectl: Kubectl, namespace: str, target: str, remote_port: int) -> None:
        self.kubectl = kubectl
        self.namespace = namespace
        self.target = target
        self.remote_port = remote_port
        self.local_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, daemon=True)

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [str(self.kubectl.binary), "--kubeconfig", str(self.kubectl.kubeconfig), "-n",
             self.namespace, "port-forward", "--address", "127.0.0.1", self.target,
             f"{self.local_port}:{self.remote_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _keep_alive(self) -> None:
        while not self._stop.is_set():
            if self._proc is None or self._proc.poll() is not None:
                self._spawn()
            self._stop.wait(0.5)

    def __enter__(self) -> PortForward:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._kill()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Drop the forward (its pod is gone); the keeper starts a new one."""
        self._kill()


class Database:
    """Direct SQL access to the in-cluster Postgres through the port-forward."""

    def __init__(self, url: str, forward: PortForward) -> None:
        self.url = url
        self.forward = forward

    def query(self, sql: str, *params: Any, timeout: float = 60) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url, connect_timeout=3, autocommit=True,
                                     options="-c search_path=skiplock") as conn:
                    cur = conn.execute(sql, params or None)  # type: ignore[arg-type]
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                self.forward.restart()
                time.sleep(1)

    def counts(self, queue: str) -> dict[str, int]:
        rows = self.query("SELECT state::text, count(*) FROM jobs WHERE queue=%s GROUP BY 1", queue)
        return {s: int(n) for s, n in rows}


def enqueue(db: Database, queue: str, task: str, args: dict[str, Any], n: int,
            max_attempts: int = 5) -> None:
    """Bulk insert with SQL (producers are not under test here; workers and the operator are)."""
    db.query("INSERT INTO jobs (queue, task, args, max_attempts) "
             "SELECT %s, %s, %s::jsonb, %s FROM generate_series(1, %s)",
             queue, task, json.dumps(args), max_attempts, n)


@dataclass
class Timeline:
    """Samples replicas and backlog every ``interval`` seconds in a background thread."""

    kubectl: Kubectl
    db: Database
    namespace: str
    deployment: str
    queue: str
    interval: float = 2.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _sample(self) -> dict[str, Any]:
        dep = self.kubectl.json("-n", self.namespace, "get", "deployment", self.deployment)
        (runnable, running), = self.db.query(
            "SELECT count(*) FILTER (WHERE state='queued' AND run_at <= now()), "
            "count(*) FILTER (WHERE state='running') FROM jobs WHERE queue=%s", self.queue,
            timeout=5)
        return {"t": round(time.monotonic() - self._t0, 1),
                "replicas": dep["spec"].get("replicas", 0),
                "ready": dep.get("status", {}).get("readyReplicas", 0) or 0,
                "backlog": int(runnable), "in_flight": int(running)}

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.rows.append(self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        # One last sample: the block usually ends on the very change it waited for.
        with contextlib.suppress(Exception):
            self.rows.append(self._sample())

    def save(self, name: str, title: str) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / f"{name}.json").write_text(json.dumps(self.rows, indent=1))
        t = [r["t"] for r in self.rows]
        fig, ax1 = plt.subplots(figsize=(9, 4.5))
        ax1.plot(t, [r["backlog"] for r in self.rows], label="runnable backlog", color="tab:orange")
        ax1.plot(t, [r["in_flight"] for r in self.rows], label="running", color="tab:green")
        ax1.set_xlabel("seconds")
        ax1.set_ylabel("jobs")
        ax2 = ax1.twinx()
        ax2.step(t, [r["replicas"] for r in self.rows], where="post", label="desired replicas",
                 color="tab:blue")
        ax2.step(t, [r["ready"] for r in self.rows], where="post", label="ready replicas",
                 color="tab:blue", linestyle="--")
        ax2.set_ylabel("replicas")
        ax2.set_ylim(bottom=0)
        lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
        ax1.legend(lines, labels, loc="upper right")
        ax1.set_title(title)
        fig.tight_layout()
        path = ARTIFACTS / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def random_pod(kubectl: Kubectl, namespace: str, selector: str) -> str | None:
    pods = kubectl.json("-n", namespace, "get", "pods", "-l", selector)["items"]
    running = [
        p["metadata"]["name"] for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]
    return random.choice(running) if running else None


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    started = time.monotonic()
    log(f"{name} ...")
    yield
    log(f"{name}: done in {time.monotonic() - started:.1f}s")
