"""Toxiproxy: a real fault-injecting TCP proxy between a client and the test Postgres.

The server binary is built once from the Go module proxy into a cache outside the repository,
keyed by version, and driven over its HTTP API on 127.0.0.1 with urllib (no extra dependency).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.support.pgserver import free_port, terminate

MODULE = "github.com/Shopify/toxiproxy/v2"
# The newest version the Go module proxy serves (`go list -m -versions <MODULE>`).
VERSION = "v2.5.0"


def cache_dir() -> Path:
    return Path(os.environ.get("SKIPLOCK_CACHE_DIR", "/var/cache/skiplock"))


def _go() -> str:
    for candidate in (os.environ.get("GO"), "/usr/local/go/bin/go", shutil.which("go")):
        if candidate and Path(candidate).exists():
            return candidate
    raise RuntimeError("no Go toolchain: install Go >= 1.21 (or set GO=/path/to/go) to build "
                       f"toxiproxy {VERSION}, or set SKIPLOCK_TOXIPROXY_BIN")


def server_binary() -> Path:
    """Path to toxiproxy-server, building it into the cache if no usable one exists."""
    explicit = os.environ.get("SKIPLOCK_TOXIPROXY_BIN")
    if explicit:
        return Path(explicit)
    target = cache_dir() / f"toxiproxy-{VERSION}" / "toxiproxy-server"
    if target.exists():
        return target
    shared = cache_dir() / "bin" / "toxiproxy-server"
    if shared.exists():
        return shared
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build even when several sessions start at once
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent) as gobin:
            print(f"\n[toxiproxy] building {MODULE}/cmd/server@{VERSION} into {target} ...",
                  file=sys.__stderr__, flush=True)
            started = time.monotonic()
            env = {**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod"}
            proc = subprocess.run([_go(), "install", f"{MODULE}/cmd/server@{VERSION}"], env=env,
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"building toxiproxy {VERSION} failed:\n{proc.stderr[-4000:]}")
            os.replace(Path(gobin) / "server", target)
            print(f"[toxiproxy] built in {time.monotonic() - started:.0f}s", file=sys.__stderr__,
                  flush=True)
    return target


class ToxiproxyError(RuntimeError):
    pass


class Toxiproxy:
    """A tiny client for the Toxiproxy HTTP API."""

    def __init__(self, api_port: int, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{api_port}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read().decode(errors="replace")
            raise ToxiproxyError(f"{method} {path}: {exc.code} {body}") from None
        return json.loads(raw) if raw.strip() else None

    def version(self) -> str:
        with urllib.request.urlopen(self.base + "/version", timeout=2) as resp:
            return str(resp.read().decode().strip())

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")

    def create(self, name: str, upstream_port: int, listen_port: int | None = None) -> Proxy:
        port = listen_port or free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}",
                                        "upstream": f"127.0.0.1:{upstream_port}", "enabled": True})
        return Proxy(self, name, port)

    def delete(self, name: str) -> None:
        with contextlib.suppress(ToxiproxyError):
            self._call("DELETE", f"/proxies/{name}")


class Proxy:
    """One proxied link. ``url(database_url)`` rewrites a URL to go through it."""

    def __init__(self, api: Toxiproxy, name: str, port: int) -> None:
        self.api = api
        self.name = name
        self.port = port

    def url(self, database_url: str) -> str:
        parts = urlsplit(database_url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        return urlunsplit(parts._replace(netloc=netloc_new))

    def disable(self) -> None:
        """Cut the link: close every open connection and refuse new ones."""
        self.api._call("POST", f"/proxies/{self.name}", {"enabled": False})

    def enable(self) -> None:
        self.api._call("POST", f"/proxies/{self.name}", {"enabled": True})

    def add_toxic(self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0,
                  name: str | None = None, **attributes: Any) -> str:
        """Add a toxic (latency, timeout, reset_peer, bandwidth, slow_close, limit_data, ...)."""
        toxic = name or f"{kind}_{stream}"
        self.api._call("POST", f"/proxies/{self.name}/toxics", {
            "name": toxic, "type": kind, "stream": stream, "toxicity": toxicity,
            "attributes": attributes})
        return toxic

    def remove_toxic(self, name: str) -> None:
        self.api._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def clear(self) -> None:
        for t in self.api._call("GET", f"/proxies/{self.name}/toxics") or []:
            self.remove_toxic(t["name"])
        self.enable()

    @contextlib.contextmanager
    def toxic(self, kind: str, **kw: Any) -> Iterator[str]:
        name = self.add_toxic(kind, **kw)
        try:
            yield name
        finally:
            with contextlib.suppress(ToxiproxyError):
                self.remove_toxic(name)


class ToxiproxyServer:
    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="toxiproxy-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> Toxiproxy:
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([str(self.binary), "-host", "127.0.0.1",
                                          "-port", str(self.port)], stdout=log, stderr=log)
        api = Toxiproxy(self.port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                api.version()
                return api
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log_text = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"toxiproxy-server did not start: {log_text}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.proc)


@contextlib.contextmanager
def running_toxiproxy() -> Iterator[Toxiproxy]:
    server = ToxiproxyServer(server_binary())
    api = server.start()
    try:
        yield api
    finally:
        server.stop()


if __name__ == "__main__":  # `python -m tests.support.toxiproxy` builds (or finds) the binary
    print(server_binary())
