"""Helpers for the reliability suite (issue 6): stop a real pipeline at a precise step, kill
it, and check that what it leaves behind is consistent.

Stopping points need no test-only code in opskit:
- the deploy command is the user's: `block_deploy_cmd` wraps it so it parks (and says so in a
  marker file) when a flag file for the commit it deploys exists;
- every git call goes through `git` on PATH (gitrepo.py): `blocking_git` puts a wrapper first
  on PATH that runs the real git for one subcommand, writes a marker, then parks — so the
  object or ref that subcommand makes exists when the kill lands ("half-made" states);
- the gate is found by polling the deploys row's `step` (deploy/rollout.py writes it first).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

REAL_GIT = shutil.which("git") or "/usr/bin/git"

_WRAPPER = """#!/bin/sh
# Runs the real git; for subcommand $OPSKIT_REL_BLOCK, writes our pid to $OPSKIT_REL_MARK
# after git finished and parks until killed, so its effect exists but nobody has seen it.
sub=""
skip=0
for a in "$@"; do
  if [ "$skip" = 1 ]; then skip=0; continue; fi
  case "$a" in
    -C|-c) skip=1 ;;
    -*) ;;
    *) sub="$a"; break ;;
  esac
done
if [ -n "$OPSKIT_REL_BLOCK" ] && [ "$sub" = "$OPSKIT_REL_BLOCK" ] && [ ! -e "$OPSKIT_REL_MARK" ]; then
  out=$({git} "$@"); rc=$?
  echo $$ > "$OPSKIT_REL_MARK"
  sleep 120
  printf '%s\\n' "$out"
  exit $rc
fi
exec {git} "$@"
"""


def blocking_git(bin_dir: Path) -> Path:
    """A `git` wrapper in bin_dir (put bin_dir first on PATH; set OPSKIT_REL_BLOCK/_MARK)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "git"
    path.write_text(_WRAPPER.replace("{git}", shlex.quote(REAL_GIT)))
    path.chmod(0o755)
    return path


def block_deploy_cmd(flags: Path, inner: str = "{restart}") -> str:
    """A deploy command that parks when flags/sha-<OPSKIT_SHA> or flags/prev-<OPSKIT_PREVIOUS>
    exists (the latter catches the redeploy of a revert, whose sha is not known beforehand)."""
    d = shlex.quote(str(flags))
    return (f'if [ -e {d}/sha-"$OPSKIT_SHA" ] || [ -e {d}/prev-"$OPSKIT_PREVIOUS" ]; then '
            f'echo $$ > {d}/at-deploy; sleep 120; fi; {inner}')


def wait_until(pred: Callable[[], object], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def kill_group(pid: int) -> None:
    """SIGKILL a process group, whatever is left of it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_parked(marker: Path) -> None:
    """The parked command runs in its own session (proc.run): kill it too, as a crash of the
    whole host would, so it cannot wake up later and change what the test checks. Its group
    (a deploy command's keeper holds the service lock: proc.holding) goes with it, and we wait
    until the group's leader is gone, so the lock it held is free when this returns."""
    try:
        pid = int(marker.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        leader = os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        leader = pid
    kill_group(leader)
    kill_group(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    from opskit.base.proc import pid_alive

    wait_until(lambda: not pid_alive(leader) and not pid_alive(pid), 10, "the parked command to die")


def spawn_opskit(args: list[str], env: Mapping[str, str]) -> subprocess.Popen[str]:
    """`opskit ARGS` in its own session, so SIGKILL of the group takes the pipeline down."""
    return subprocess.Popen([sys.executable, "-m", "opskit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace", env={**os.environ, **env},
                            start_new_session=True)


class Timer:
    """with Timer() as t: ...; t.took — printed by tests that report their runtime."""

    def __enter__(self) -> Timer:
        self.t0 = time.monotonic()
        self.took = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.took = time.monotonic() - self.t0
