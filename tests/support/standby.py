"""A primary and a streaming standby, both local throwaway clusters (initdb, pg_basebackup -R),
for failover tests: the standby can be promoted while clients run.

``synchronous=True`` makes the primary wait for the standby's flush before a commit returns
(``synchronous_standby_names = '*'``); otherwise replication is asynchronous.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from tests.support.pgserver import PgServer, free_port


class Standby(PgServer):
    """A PgServer made by pg_basebackup from ``primary``, streaming from it."""

    def __init__(self, primary: PgServer) -> None:
        super().__init__(root=Path(tempfile.mkdtemp(prefix="skiplock-standby-")),
                         port=free_port())
        self.primary = primary

    def init(self) -> None:
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL it needs.
        self._run(str(self.bindir / "pg_basebackup"), "-D", str(self.datadir), "-h",
                  "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", "-X", "stream",
                  "-R", "--no-sync")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            # the copy carries the primary's port and socket directory: this one's own
            # and no synchronous standby of its own to wait for once promoted (the primary's
            # setting, copied, would hang every commit on the new primary)
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                       "hot_standby = on\nsynchronous_standby_names = ''\n")

    def promote(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60",
                  "promote")

    def in_recovery(self) -> bool:
        with self.admin() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def wait_streaming(primary: PgServer, synchronous: bool, timeout: float = 60) -> None:
    """Until the primary sees the standby streaming (and, if asked, as its synchronous one)."""
    wanted = "sync" if synchronous else "async"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with primary.admin() as conn:
            rows = conn.execute("SELECT state, sync_state FROM pg_stat_replication").fetchall()
        if ("streaming", wanted) in rows:
            return
        time.sleep(0.1)
    raise RuntimeError(f"the standby is not streaming ({wanted}) after {timeout:.0f}s: {rows}")


@contextlib.contextmanager
def primary_and_standby(synchronous: bool) -> Iterator[tuple[PgServer, Standby]]:
    """A running primary and a running standby streaming from it."""
    primary = PgServer()
    primary.init()
    with open(primary.datadir / "postgresql.conf", "a") as conf:
        conf.write("wal_level = replica\nmax_wal_senders = 5\n"
                   + ("synchronous_standby_names = '*'\n" if synchronous else ""))
    primary.start()
    standby: Standby | None = None
    try:
        standby = Standby(primary)
        standby.init()
        standby.start()
        wait_streaming(primary, synchronous)
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()


def multihost_url(*servers: PgServer, dbname: str) -> str:
    """A URL listing every server; libpq takes the first that accepts writes."""
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return f"postgresql://postgres@{hosts}/{dbname}?target_session_attrs=read-write"


def accepts_writes(server: PgServer, dbname: str) -> bool:
    try:
        with psycopg.connect(server.url(dbname), connect_timeout=2) as conn:
            row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])
    except psycopg.OperationalError:
        return False
