"""The one process module: a command that outlives its timeout is killed, with its whole group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from opskit.base import proc
from tests.support.procs import gone


def test_timed_out_command_and_its_background_child_are_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The shell starts a background child, records both pids, then waits: only a kill of the
    # whole process group ends either before 60 s.
    script = f"sleep 60 & echo $! > {pids}.tmp; echo $$ >> {pids}.tmp; mv {pids}.tmp {pids}; wait"
    r = proc.run(proc.shell_argv(script), timeout=0.5)
    assert r.timed_out and not r.ok and r.returncode < 0
    assert "timed out" in r.describe()
    child, shell = (int(x) for x in pids.read_text().split())
    try:
        assert gone(shell) and gone(child)
    finally:
        for pid in (child, shell):  # when the kill did not happen, the test still ends its processes
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_command_that_finishes_in_time_is_not_marked_timed_out(tmp_path: Path) -> None:
    r = proc.run(proc.shell_argv("echo done; exit 3"), timeout=30)
    assert (r.timed_out, r.returncode, r.tail) == (False, 3, ["done"])


def test_a_signal_before_the_wait_still_takes_the_child_with_us(tmp_path: Path, monkeypatch) -> None:
    # SIGTERM or Ctrl-C can land while the output readers start, after the child is already
    # running (run-job saw this under load): the child's group must go with us all the same.
    pids = tmp_path / "pids"
    started = tmp_path / "started"

    def interrupted(self: object) -> None:
        deadline = time.monotonic() + 20
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        started.touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(proc._Reader, "start", interrupted)
    script = f"sleep 60 & echo $! > {pids}.tmp; echo $$ >> {pids}.tmp; mv {pids}.tmp {pids}; wait"
    with pytest.raises(KeyboardInterrupt):
        proc.run(proc.shell_argv(script), timeout=30)
    assert started.exists()
    child, shell = (int(x) for x in pids.read_text().split())
    try:
        assert gone(shell) and gone(child)
    finally:
        for pid in (child, shell):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_timed_run_works_in_a_process_with_more_than_1024_descriptors_open() -> None:
    """The wait for a timed command watches a pidfd; select() refuses one numbered 1024 or more,
    which a busy dispatcher or a long-lived hook process can reach."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard descriptor limit is {hard}: this process cannot open {want} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    opened: list[int] = []
    try:
        while not opened or opened[-1] < 1100:
            opened.append(os.open(os.devnull, os.O_RDONLY))
        assert proc.run(["true"], timeout=5).returncode == 0
        assert proc.run(["sleep", "5"], timeout=0.3).timed_out
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
