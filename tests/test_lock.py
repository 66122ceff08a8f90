"""The per-service deploy lock: one holder, named to whoever waits; a dead holder never wedges it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from opskit.base.clock import FakeClock
from opskit.base.errors import LockBusy
from opskit.base.lock import ServiceLock, is_held, read_holder

HOLD = """
import sys, time
from pathlib import Path
from opskit.base.lock import ServiceLock
with ServiceLock(Path(sys.argv[1]), "web", wait=5, what="deploy abc1234"):
    print("held", flush=True)
    time.sleep(60)
"""


def _holder(state_dir: Path) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(state_dir)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_second_caller_is_told_who_holds_it_and_gives_up(state_dir: Path) -> None:
    p = _holder(state_dir)
    try:
        assert is_held(state_dir, "web")
        holder = read_holder(state_dir, "web")
        assert holder and holder["pid"] == p.pid and holder["what"] == "deploy abc1234"
        told: list[str] = []
        clock = FakeClock()  # the wait is bounded by the injected clock: no real 30 s here
        with pytest.raises(LockBusy) as e:
            with ServiceLock(state_dir, "web", wait=30, clock=clock, on_wait=told.append):
                pass
        assert f"held by pid {p.pid} (deploy abc1234)" in str(e.value) and "30s" in str(e.value)
        assert told and f"pid {p.pid}" in told[0] and clock.monotonic() >= 1030
    finally:
        p.kill()
        p.wait()


def test_dead_holder_is_recovered_at_once(state_dir: Path) -> None:
    p = _holder(state_dir)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not is_held(state_dir, "web")
    # wait=0: a lock that were still held would raise at once instead of being taken
    with ServiceLock(state_dir, "web", wait=0) as lock:
        assert lock.held and read_holder(state_dir, "web")["pid"] == os.getpid()  # type: ignore[index]
    assert read_holder(state_dir, "web") is None  # released: no stale name left behind


def test_waiter_gets_it_when_the_holder_finishes(state_dir: Path) -> None:
    order: list[str] = []
    first = ServiceLock(state_dir, "web", wait=5)
    first.acquire()

    def second() -> None:
        with ServiceLock(state_dir, "web", wait=5):
            order.append("second")

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.3)
    order.append("first done")
    first.release()
    t.join(5)
    assert order == ["first done", "second"]


def test_services_do_not_share_a_lock_and_names_stay_in_the_dir(state_dir: Path) -> None:
    with ServiceLock(state_dir, "web", wait=0):
        with ServiceLock(state_dir, "api", wait=0):
            pass
        with ServiceLock(state_dir, "../../etc/x", wait=0) as odd:
            assert odd.path.parent == state_dir / "locks"
