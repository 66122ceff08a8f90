"""A real PostgreSQL server for the fleet tests: Debian's server binaries, `initdb` and
`pg_ctl` in a temp dir, on a loopback port with password (scram) authentication.

One server per test session; each test gets a database of its own (`database()`), so tests
do not see each other's events. `stop()` / `start()` take the server away and bring it back
on the same port: the "database gone mid-chain" tests.

initdb refuses to run as root, so under root the server runs as Debian's `postgres` account
(created by the postgresql package; `install.sh --dev` installs it). Its processes get an
environment of their own: they must not carry a test's HOME (tests/support/procs.py would
take them for that test's leftovers).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def server_bin() -> Path | None:
    """The newest installed server's bin dir (/usr/lib/postgresql/N/bin), or None."""
    root = Path("/usr/lib/postgresql")
    found = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()),
                   key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    def __init__(self) -> None:
        bin_dir = server_bin()
        if bin_dir is None:
            pytest.skip("the PostgreSQL server binaries are not installed (Debian: apt-get install postgresql; "
                        "./install.sh --dev installs them)")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg is not installed (pip install -e '.[dev]' brings it)")
        self.bin = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="opskit-pg-", dir="/tmp"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "log" / "server.log"
        self.port = _free_port()
        self.user = "opskit"
        self.password = "pw-" + secrets.token_hex(12)
        self._n = 0
        self.account: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres account to run the server as "
                            "(Debian's postgresql package creates it)")
            self.account = "postgres"

    # --- running the server's tools as its account ---------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.account:
            cmd = ["/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else "runuser", "-u", self.account, "--", *cmd]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PGTZ": "UTC"}
        return subprocess.run(cmd, cwd=self.base, env=env, text=True, capture_output=True, check=check, timeout=60)

    def init(self) -> None:
        for d in (self.data, self.sock, self.log.parent):
            d.mkdir(mode=0o700)
            if self.account:
                pw = pwd.getpwnam(self.account)
                os.chown(d, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        self.start()
        self.sql(f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}'")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> None:
        """Up on the same port (a no-op when it is up already)."""
        if self.data.joinpath("postmaster.pid").exists() and self.running():
            return
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c max_connections=200")
        r = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log),
                      "-w", "-t", "60", "start", check=False)
        if r.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}\n{log}")

    def stop(self) -> None:
        """Gone, as a database server that shuts down is: every client's connection is cut;
        what was committed stays (fast mode, never `immediate`, which loses unflushed commits
        here because fsync is off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def stop_command(self) -> str:
        """A shell command that stops the server the way stop() does (a deploy command that
        takes the database away mid-deploy)."""
        import shlex

        cmd = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
        if self.account:
            runuser = "/usr/sbin/runuser" if os.path.exists("/usr/sbin/runuser") else "runuser"
            cmd = [runuser, "-u", self.account, "--", *cmd]
        return "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin " + shlex.join(cmd) + " >/dev/null"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def sql(self, statement: str, db: str = "postgres") -> str:
        r = self._run("psql", "-h", str(self.sock), "-p", str(self.port),
                      "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-Atc", statement, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"psql {statement!r}: {r.stderr}")
        return r.stdout

    # --- what a test uses ------------------------------------------------------------------------
    def database(self) -> str:
        """A new, empty database of the opskit role; its name."""
        self._n += 1
        name = f"t{os.getpid()}_{self._n}"
        self.sql(f"CREATE DATABASE {name} OWNER {self.user}")
        return name

    def url(self, db: str, *, password: str | None = None) -> str:
        return f"postgresql://{self.user}:{password or self.password}@127.0.0.1:{self.port}/{db}"

    def drop(self, db: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
