"""A real etcd + kube-apiserver on loopback ports for operator tests (envtest style).

No kubelet or controller-manager runs: Deployments never get pods, owner references are not
garbage-collected. Tests assert on what the operator writes (spec.replicas, status, events).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pgserver import free_port

BUILD_SCRIPT = "e2e/toolchain/tools.sh"
OPERATOR_USER = "system:serviceaccount:skiplock:skiplock-operator"
# A user with only the RBAC a test grants it (tests of missing permissions).
RESTRICTED_USER = "system:serviceaccount:skiplock:restricted"


def kube_bin_dir() -> Path:
    return Path(os.environ.get("SKIPLOCK_KUBE_BIN_DIR", "/var/cache/skiplock/bin"))


def missing_binaries(names: tuple[str, ...] = ("etcd", "kube-apiserver")) -> list[str]:
    d = kube_bin_dir()
    return [str(d / n) for n in names if not os.access(d / n, os.X_OK)]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> None:
    """A CA, a serving cert for 127.0.0.1/localhost, and the service-account key pair."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=envtest-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


class EnvTest:
    def __init__(self, apiserver_args: tuple[str, ...] = ()) -> None:
        self.apiserver_args = apiserver_args
        self.bin = kube_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="skiplock-envtest-"))
        self.etcd_port, self.peer_port, self.port = free_port(), free_port(), free_port()
        self.admin_token = secrets.token_hex(16)
        self.operator_token = secrets.token_hex(16)
        self.restricted_token = secrets.token_hex(16)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(self.bin / name), *args], stdout=out,
                                    stderr=subprocess.STDOUT, cwd=self.root)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        make_certs(self.root)
        (self.root / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f'{self.operator_token},{OPERATOR_USER},op,"system:serviceaccounts"\n'
            f'{self.restricted_token},{RESTRICTED_USER},restricted,"system:authenticated"\n')
        self._spawn("etcd", [
            "--name", "envtest", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
            "--initial-cluster", f"envtest=http://127.0.0.1:{self.peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.root / 'certs'}",
            f"--tls-cert-file={self.root / 'server.crt'}",
            f"--tls-private-key-file={self.root / 'server.key'}",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={self.root / 'sa.pub'}",
            f"--service-account-signing-key-file={self.root / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            "--service-cluster-ip-range=10.0.0.0/24",
            # No controller-manager creates service accounts: pods must not need one.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true", "--enable-priority-and-fairness=false",
            "--v=0", *self.apiserver_args,
        ])
        self.write_kubeconfig("admin", self.admin_token)
        self.write_kubeconfig("operator", self.operator_token)
        self.write_kubeconfig("restricted", self.restricted_token)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}:\n{self.tail()}")
            try:
                last = self.get_raw("/readyz").decode()
            except OSError as exc:
                last = str(exc)
            if last == "ok":
                return
            time.sleep(0.2)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s (last: {last!r})\n"
                           f"{self.tail()}")

    def get_raw(self, path: str, accept: str | None = None) -> bytes:
        """GET with the admin token (for /readyz and server-side printed tables)."""
        ctx = ssl.create_default_context(cafile=str(self.root / "ca.crt"))
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        if accept:
            headers["Accept"] = accept
        req = urllib.request.Request(f"{self.server}{path}", headers=headers)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.read()  # type: ignore[no-any-return]

    def tail(self, lines: int = 30) -> str:
        out = []
        for log in self.logs:
            if log.exists():
                text = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def kubeconfig(self, user: str) -> Path:
        return self.root / f"{user}.kubeconfig"

    def write_kubeconfig(self, user: str, token: str, server: str | None = None,
                         name: str | None = None) -> Path:
        """A kubeconfig for ``user``; ``server`` e.g. a proxy in front of the API server (the
        serving cert is for 127.0.0.1, so a loopback proxy verifies the same)."""
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "envtest",
            "clusters": [{"name": "envtest", "cluster": {
                "server": server or self.server,
                "certificate-authority": str(self.root / "ca.crt")}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": user}}],
        }
        path = self.kubeconfig(name or user)
        path.write_text(yaml.safe_dump(cfg))
        return path

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_envtest(apiserver_args: tuple[str, ...] = ()) -> Iterator[EnvTest]:
    """A started etcd + kube-apiserver; fails the test (never skips) when they are not built."""
    missing = missing_binaries()
    if missing:
        pytest.fail(f"Kubernetes test binaries missing: {', '.join(missing)}. Build them with "
                    f"`bash {BUILD_SCRIPT} etcd apiserver` (or set SKIPLOCK_KUBE_BIN_DIR to a "
                    "directory holding etcd and kube-apiserver).", pytrace=False)
    env = EnvTest(apiserver_args)
    try:
        env.start()
        yield env
    finally:
        env.stop()


class OperatorThread:
    """The real operator (skiplock_operator.handlers under kopf) in a thread of this process."""

    def __init__(self, kubeconfig: Path) -> None:
        import kopf

        self.kubeconfig = kubeconfig
        # Ours, so a test can reach the operator's state (memo.elector, memo.polls).
        self.memo = kopf.Memo()
        self.liveness_port = free_port()
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)

    def _run(self) -> None:
        import kopf

        import skiplock_operator.handlers  # noqa: F401  (registers the handlers)

        try:
            asyncio.run(kopf.operator(
                standalone=True, clusterwide=True, stop_flag=self.stop_flag, ready_flag=self.ready,
                memo=self.memo,
                liveness_endpoint=f"http://127.0.0.1:{self.liveness_port}/healthz"))
        except BaseException as exc:
            self.error = exc

    def start(self, timeout: float = 60) -> None:
        self.thread.start()
        if not self.ready.wait(timeout):
            raise RuntimeError(f"operator not ready after {timeout}s (error: {self.error!r})")

    def stop(self, timeout: float = 60) -> None:
        self.stop_flag.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError(f"operator did not stop within {timeout}s")


class BlackholeProxy:
    """A TCP proxy on loopback in front of the API server that can stop forwarding: after
    ``blackhole()`` it accepts connections and reads what comes, but forwards nothing either
    way, like a half-open connection or a dead route. ``restore()`` forwards again (for new
    connections; the stalled ones stay stalled, as after a real outage)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.blackholed = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for w in list(self._writers):
            w.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._loop.stop()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    stalled: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if stalled or self.blackholed.is_set():
                    stalled = True  # once stalled, a connection never carries a byte again
                    continue
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self.blackholed.is_set():
            await self._pipe(reader, writer, stalled=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, False),
                             self._pipe(up_reader, writer, False))

    def blackhole(self) -> None:
        self.blackholed.set()

    def restore(self) -> None:
        self.blackholed.clear()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(10)


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
