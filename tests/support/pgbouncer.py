"""A real PgBouncer (Debian's ``pgbouncer`` package) in transaction pooling mode in front of a
test Postgres: its config in a temp dir, a free loopback port, trust auth with a userlist.

Nothing beyond ``pool_mode = transaction`` is configured on purpose (no
``ignore_startup_parameters``, no ``max_prepared_statements``, no ``track_extra_parameters``):
Skiplock must work against a pooler as platform teams run it. Runs as the ``postgres`` OS user
when the tests run as root (PgBouncer refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.support.pgserver import PgServer, free_port, terminate


def binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if not found:
        raise RuntimeError("no pgbouncer binary: apt-get install pgbouncer "
                           "(listed in .ci/apt-packages.txt)")
    return found


class PgBouncer:
    def __init__(self, server: PgServer, *, pool_size: int = 20) -> None:
        self.server = server
        self.root = Path(tempfile.mkdtemp(prefix="skiplock-pgbouncer-"))
        self.port = free_port()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.log = self.root / "pgbouncer.log"
        self.ini = self.root / "pgbouncer.ini"
        self.pool_size = pool_size
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        (self.root / "userlist.txt").write_text('"postgres" ""\n')
        # "*": every database of the server, by the same name (each test has its own).
        self.ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server.port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.root / 'pgbouncer.pid'}\n"
            "admin_users = postgres\n"
        )
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        self._write_config()
        cmd = [binary(), str(self.ini)]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}): {self.logs()}")
            try:
                with psycopg.connect(self.url("pgbouncer"), autocommit=True, connect_timeout=2,
                                     prepare_threshold=None) as conn:
                    conn.execute("SHOW VERSION")
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not accept connections in 30 s: {self.logs()}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def pooled(self, direct_url: str) -> str:
        """``direct_url`` (to the test server) through this PgBouncer."""
        prefix = f"@127.0.0.1:{self.server.port}/"
        if prefix not in direct_url:
            raise ValueError("not a URL of this PgBouncer's server")
        return direct_url.replace(prefix, f"@127.0.0.1:{self.port}/")

    def admin(self, command: str) -> list[tuple[object, ...]]:
        """A command on PgBouncer's admin console (SHOW POOLS, SHOW SERVERS, ...)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True, connect_timeout=5,
                             prepare_threshold=None) as conn:
            # without parameters psycopg sends the simple protocol, all the console speaks
            cur = conn.execute(command.encode())
            return cur.fetchall() if cur.description else []

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_pgbouncer(server: PgServer, **kw: int) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(server, **kw)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


def direct_of(url: str, bouncer: PgBouncer) -> str:
    """A URL through ``bouncer`` back to its server, direct."""
    return url.replace(f"@127.0.0.1:{bouncer.port}/", f"@127.0.0.1:{bouncer.server.port}/")
