"""A private PostgreSQL cluster for tests and benchmarks.

``initdb`` into a temp dir, ``pg_ctl start`` on a free loopback port with the socket in that
dir, trust authentication on loopback, readiness by polling ``pg_isready`` against a deadline.
The server refuses to run as root, so as root everything runs as the ``postgres`` system user.
Nothing here skips: if PostgreSQL cannot run, ``start`` raises and the tests that need it fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

# Test clusters trade durability for speed; benchmarks pass durable=True.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
START_DEADLINE = 30.0
RUN_AS = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing or the cluster did not start."""


def find_bindir() -> Path:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise PostgresUnavailable(
            "no /usr/lib/postgresql/*/bin/initdb: run scripts/setup.sh "
            "(it installs the Debian package postgresql)"
        )

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.parent.name
        return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)

    return Path(max(found, key=version)).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One throw-away cluster; ``start()`` returns the base URL (database ``postgres``)."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.durable = durable
        self.root: Path | None = None
        self.port = 0
        self._log_start = 0
        self._as_other_user = os.geteuid() == 0

    # ---- process plumbing --------------------------------------------------------------------
    def _cmd(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bindir / tool), *args]
        return ["runuser", "-u", RUN_AS, "--", *command] if self._as_other_user else command

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    # ---- life cycle --------------------------------------------------------------------------
    def start(self) -> str:
        self.root = Path(tempfile.mkdtemp(prefix="x402-pg-"))
        try:
            if self._as_other_user:
                user = pwd.getpwnam(RUN_AS)
                os.chown(self.root, user.pw_uid, user.pw_gid)
            done = self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            if done.returncode != 0:
                raise PostgresUnavailable(f"initdb failed: {done.stderr.strip()[-2000:]}")
            for _ in range(5):  # a port picked free may be taken before the server binds it
                self.port = _free_port()
                if self._start_once():
                    return self.url
            raise PostgresUnavailable(f"postgres did not start: {self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _start_once(self) -> bool:
        assert self.root is not None
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={self.port}",
            f"unix_socket_directories={self.root}",
            "max_connections=200",
            *(() if self.durable else FAST_SETTINGS),
        ]
        options = " ".join(f"-c {s}" for s in settings)
        self._log_start = self._log_size()  # this attempt's part of the log
        done = self._run(
            "pg_ctl", "start", "-W", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options
        )
        if done.returncode != 0:
            raise PostgresUnavailable(f"pg_ctl start failed: {done.stderr.strip()[-2000:]}")
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [
                    str(self.bindir / "pg_isready"),
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "1",
                ],
                capture_output=True,
            )
            if ready.returncode == 0:
                return True
            if ready.returncode == 2 and not self._postmaster_alive():  # no response, no server
                return False
            time.sleep(0.02)  # pg_isready poll interval
        raise PostgresUnavailable(f"postgres not ready after {START_DEADLINE}s: {self._log_tail()}")

    def _postmaster_alive(self) -> bool:
        # The postmaster logs this when it gives up (e.g. the port was taken after all).
        if "database system is shut down" in self._log_tail(self._log_start):
            return False
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return True  # not written yet: still starting
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _log_size(self) -> int:
        assert self.root is not None
        try:
            return (self.root / "server.log").stat().st_size
        except OSError:
            return 0

    def _log_tail(self, start: int = 0) -> str:
        assert self.root is not None
        try:
            with (self.root / "server.log").open("rb") as log:
                log.seek(start)
                return log.read().decode(errors="replace")[-2000:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; safe to call twice."""
        if self.root is None:
            return
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    # ---- databases ---------------------------------------------------------------------------
    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        return create_database(self.url, prefix)


def create_database(base_url: str, prefix: str = "t") -> str:
    """Create an empty database (from template0) on the server of ``base_url``; its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    base, _, _ = base_url.rpartition("/")
    return f"{base}/{name}"
