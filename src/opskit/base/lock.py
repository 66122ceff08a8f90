"""One deploy at a time per service.

An fcntl.flock on <state_dir>/locks/<service>.lock. The kernel drops a flock when its
holder dies, however it dies (SIGKILL mid-deploy included), so a dead holder never wedges
the service: the next caller simply gets the lock and the pipeline reports the deploy that
was interrupted. The holder writes who it is (pid, host, cmd, since) into the file so a
waiting caller can say whom it waits for instead of hanging silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from opskit.base import statefs
from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.errors import LockBusy

POLL = 0.2
NAME_WAIT = 1.0  # seconds a waiter gives the holder to write its name before it says whom it waits for


def lock_path(state_dir: Path, service: str) -> Path:
    # Service names are validated by config, but a lock file name must never escape the dir.
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", service).lstrip(".") or "_"
    return Path(state_dir) / "locks" / f"{safe}.lock"


def read_holder(state_dir: Path, service: str) -> dict[str, Any] | None:
    """Who says they hold the lock (may be stale: only flock itself is the truth)."""
    try:
        with statefs.opened(lock_path(state_dir, service), state_dir, os.O_RDONLY) as fd:
            text = os.read(fd, 4096).decode("utf-8", "replace")
    except (OSError, statefs.Unsafe):
        return None
    try:
        data = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def is_held(state_dir: Path, service: str) -> bool:
    """True if some live process holds the lock right now (probe, never blocks)."""
    try:
        # Read-only is enough for flock; a planted link is refused (statefs, tests/test_state_links.py).
        fd = statefs.open_file(lock_path(state_dir, service), state_dir, os.O_RDONLY, flock_only=True)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock, if we got it
    return False


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "held by another process"
    return (f"held by pid {holder.get('pid')} ({holder.get('what', 'deploy')}) on {holder.get('host', '?')} "
            f"since {holder.get('since', '?')}")


class ServiceLock:
    """`with ServiceLock(state_dir, "web", wait=600): ...` — raises LockBusy after `wait` s."""

    def __init__(self, state_dir: Path, service: str, *, wait: float, clock: Clock = SYSTEM,
                 what: str = "deploy", on_wait: Callable[[str], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.service = service
        self.wait = wait
        self.clock = clock
        self.what = what
        self.on_wait = on_wait
        self.path = lock_path(self.state_dir, service)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int:
        """The locked descriptor. A child given it (proc.run pass_fds, proc.holding) keeps the
        flock while it runs, even if we die first (SIGKILL, OOM): the next deploy waits for an
        orphaned deploy command instead of running beside it. release() unlocks it for all."""
        if self._fd is None:
            raise RuntimeError(f"{self.service}: the lock is not held")
        return self._fd

    def acquire(self) -> None:
        # Never through a link or into a file the group could not write itself (tests/test_state_links.py: root
        # truncated a planted link's target); created 0640, and shared so the git account opens
        # root's lock file.
        fd = statefs.open_file(self.path, self.state_dir, os.O_RDWR | os.O_CREAT, 0o640)
        began = self.clock.monotonic()
        deadline = began + max(0.0, self.wait)
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    holder = read_holder(self.state_dir, self.service)
                    # The holder writes its name just after it takes the flock: a waiter that
                    # looked in between waits a poll or two before saying "another process".
                    named = holder is not None or self.clock.monotonic() - began >= NAME_WAIT
                    if not told and self.on_wait is not None and named:
                        self.on_wait(f"{self.service}: deploy lock {describe_holder(holder)}; "
                                     f"waiting up to {self.wait:.0f}s")
                        told = True
                    if self.clock.monotonic() >= deadline:
                        raise LockBusy(
                            f"{self.service}: deploy lock {describe_holder(holder)}; gave up after "
                            f"{self.wait:.0f}s. Try again when it finishes (opskit status shows it)"
                        ) from None
                    self.clock.sleep(POLL)
        except BaseException:
            os.close(fd)
            raise
        holder = {"pid": os.getpid(), "host": os.uname().nodename, "what": self.what,
                  "cmd": " ".join(sys.argv)[:200], "since": iso(self.clock.now())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            pass  # a full disk: the flock is ours all the same, only who holds it is not shown
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # nobody holds it now: do not leave a stale name behind
        except OSError:
            pass
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> ServiceLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
