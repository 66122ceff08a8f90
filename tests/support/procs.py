"""Processes a test started: found by the tmp paths they carry, so none outlives its test."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest


def processes_pointing_into(root: Path) -> list[tuple[int, str]]:
    """Live processes (pid, command line) whose command line, working directory or
    environment names a path under `root`: what a test started. Every child of a test
    inherits the test's HOME (a folder under pytest's tmp dir) unless it was given an
    environment of its own, and then its command line or cwd usually names a tmp path."""
    token = os.fsencode(str(root))
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        base = f"/proc/{entry}"
        try:
            with open(f"{base}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue  # already dead, waiting for its parent to reap it
            with open(f"{base}/cmdline", "rb") as f:
                cmd = f.read()
            hit = token in cmd or os.fsencode(os.readlink(f"{base}/cwd")).startswith(token)
            if not hit:
                with open(f"{base}/environ", "rb") as f:
                    hit = token in f.read()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if hit and b"from multiprocessing." in cmd:
            # the interpreter's own multiprocessing helper (resource tracker, forkserver): it
            # belongs to the test process and ends with it
            continue
        if hit:
            found.append((int(entry), cmd.replace(b"\0", b" ").decode("utf-8", "replace").strip()[:300]))
    return found


def end_leftovers(root: Path, what: str, grace: float = 5.0) -> None:
    """Fail when a process started under `root` is still alive after `grace` seconds (a
    service stopped just now may take a moment to exit); kill what is left so that it does
    not outlive the run and hold ports or files."""
    deadline = time.monotonic() + grace
    left = processes_pointing_into(root)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = processes_pointing_into(root)
    if not left:
        return
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pytest.fail(f"{what} left {len(left)} process(es) running; every test ends what it starts:\n"
                + "\n".join(f"  pid {pid}: {cmd}" for pid, cmd in left), pytrace=False)


def gone(pid: int, within: float = 5.0) -> bool:
    """True once `pid` no longer exists. A killed grandchild is reaped by init, not by us, so
    its end is waited for (bounded); the assertion is about state, not speed."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
