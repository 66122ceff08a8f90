"""A service on two hosts deploys on one host at a time, through the fleet database's advisory
lock (storage/fleet_locks.py): real PostgreSQL, real `opskit deploy` processes, one config and
state dir per host. The deploy command blocks on a fifo of its host, so which deploy runs and
when it ends is the test's to decide, never a matter of timing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opskit.storage import fleet
from tests.support.fleet import Host, make_host
from tests.support.gitsandbox import make_sandbox
from tests.support.postgres import Postgres

WAIT = 60.0  # seconds any condition below may take before the test fails


@dataclass
class Deployer:
    host: Host
    fifo: Path
    out: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        env = {**os.environ, "OPSKIT_CONFIG": str(self.host.config)}
        env.pop("OPSKIT_STATE_DIR", None)
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "opskit", "deploy", "web", *extra], env=env,
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def said(self) -> str:
        return self.out.read_text(errors="replace")

    def release(self) -> None:
        """Let this host's deploy command finish (it reads one line from the fifo)."""
        fd = os.open(self.fifo, os.O_WRONLY)  # blocks until the command opens it to read
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=WAIT)

    def events(self, type: str) -> list[Any]:
        return list(self.host.journal().query(service="web", type_prefix=type))


def until(what: str, cond: Callable[[], bool]) -> None:
    """Wait for a condition another process brings about (not for time to pass)."""
    end = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"still not {what} after {WAIT:.0f}s")
        time.sleep(0.05)


def unblock(fifo: Path) -> None:
    """A deploy command left reading its fifo (its opskit was killed) ends."""
    with contextlib.suppress(OSError):
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"go\n")
        os.close(fd)


def two_hosts(tmp: Path, url: str) -> tuple[Deployer, Deployer, Path]:
    log = tmp / "deploys.log"
    out = []
    for name in ("a", "b"):
        sb = make_sandbox(tmp / f"sb-{name}", name="web", files={"app.txt": "v1\n"})
        fifo = tmp / f"go-{name}"
        os.mkfifo(fifo)
        cmd = f"echo start {name} >> {log}; read line < {fifo}; echo end {name} >> {log}"
        extra = (f'\n[service.web]\nrepo = "{sb.bare}"\nworktree = "{sb.worktree}"\nbranch = "master"\n'
                 f'deploy = "{cmd}"\ndeploy_timeout = 120\ndirect_push = true\nhosts = ["a", "b"]\n')
        host = make_host(tmp, name, url, extra)
        out.append(Deployer(host, fifo, tmp / f"out-{name}.txt"))
    from opskit.base import config

    settings = config.load_file(out[0].host.config)
    assert settings.fleet is not None
    fleet.migrate(fleet.Fleet(settings.fleet, out[0].host.state_dir))
    return out[0], out[1], log


def lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def hosts(tmp_path: Path, fleet_url: str) -> Iterator[tuple[Deployer, Deployer, Path]]:
    a, b, log = two_hosts(tmp_path, fleet_url)
    try:
        yield a, b, log
    finally:
        for d in (a, b):
            if d.proc is not None and d.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.proc.pid, signal.SIGKILL)
                d.proc.wait()
        for d in (a, b):
            unblock(d.fifo)


def first_and_waiter(a: Deployer, b: Deployer, log: Path) -> tuple[Deployer, Deployer]:
    """Both started together: the one whose command runs, and the one told it waits. Two
    commands started at once (no fleet lock) end the wait too, and fail the caller."""
    a.start("--lock-wait", "300")
    b.start("--lock-wait", "300")
    until("one deploy running and the other waiting",
          lambda: len(lines(log)) >= 2 or (len(lines(log)) == 1 and any(
              "fleet deploy lock held by" in d.said() for d in (a, b))))
    assert len(lines(log)) == 1, f"two deploys of a two-host service ran at once: {lines(log)}"
    first = a if lines(log) == ["start a"] else b
    other = b if first is a else a
    assert "fleet deploy lock held by opskit " + first.host.name in other.said(), other.said()
    return first, other


def test_two_deploys_of_a_two_host_service_run_one_after_the_other(hosts: tuple[Deployer, Deployer, Path]) -> None:
    a, b, log = hosts
    first, other = first_and_waiter(a, b, log)
    first.release()
    assert first.wait() == 0, first.said()
    until("the second deploy running", lambda: len(lines(log)) == 3)
    other.release()
    assert other.wait() == 0, other.said()
    f, o = first.host.name, other.host.name
    assert lines(log) == [f"start {f}", f"end {f}", f"start {o}", f"end {o}"]
    # the journals agree: the second began after the first had ended
    first_done = first.events("deploy.complete")[-1]
    other_start = other.events("deploy.start")[-1]
    assert other_start.ts_precise >= first_done.ts_precise
    assert first.events("deploy.start")[-1].data["fleet_lock"] == "held"
    assert first.events("deploy.start")[-1].data["fleet_lock_waited"] == 0
    assert other_start.data["fleet_lock"] == "held"
    assert other_start.data["fleet_lock_waited"] > 0
    assert "waiting up to 300s" in other.said()


def test_a_killed_holder_lets_the_other_host_deploy_at_once(hosts: tuple[Deployer, Deployer, Path]) -> None:
    a, b, log = hosts
    first, other = first_and_waiter(a, b, log)
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # the holder dies mid-deploy: nobody releases anything
    first.proc.wait()
    killed, killed_at = time.monotonic(), time.time()
    until("the other host's deploy running", lambda: len(lines(log)) == 2)
    # it waited for the server to see the holder gone, not for its own --lock-wait of 300 s
    assert time.monotonic() - killed < 30
    other.release()
    assert other.wait() == 0, other.said()
    assert lines(log) == [f"start {first.host.name}", f"start {other.host.name}", f"end {other.host.name}"]
    start = other.events("deploy.start")[-1]
    assert start.data["fleet_lock"] == "held"
    print(f"handover after SIGKILL: waited {start.data['fleet_lock_waited']}s in all, "
          f"{start.when.timestamp() - killed_at:.3f}s from the kill to deploy.start")


def test_without_the_database_a_host_deploys_under_its_local_lock_and_says_so(
        hosts: tuple[Deployer, Deployer, Path], postgres_server: Postgres) -> None:
    a, _, log = hosts
    postgres_server.stop()
    try:
        a.start()
        until("deploying (or given up)", lambda: len(lines(log)) == 1 or (a.proc is not None and a.proc.poll() is not None))
        assert lines(log) == ["start a"], a.said()
        a.release()
        assert a.wait() == 0, a.said()
    finally:
        postgres_server.start()
    assert lines(log) == ["start a", "end a"]
    start = a.events("deploy.start")[-1]
    assert start.data["fleet_lock"] == "unavailable"
    assert start.data["fleet_lock_error"]
    assert "deploying under this host's lock alone" in a.said()
    assert "PGPASSWORD" not in a.said() and "postgresql://" not in a.said()
    assert a.events("deploy.complete")
