"""Work that must outlive whoever started it, and a way to watch it while they are there.

A pusher's Ctrl-C, a closed terminal or SSH session (SIGHUP) or a dead `git push` must not
stop a deploy half-way: the post-receive hook starts the pipeline here, in its own session
(no controlling terminal, its own process group, output to a log file rather than a pipe that
can break), and then follows that log for as long as the pusher listens. When writing to them
fails, the hook stops following and the work goes on alone. Only a signal sent to the work on
purpose (SIGTERM from an operator, systemd, a shutdown) interrupts it.

The exit status is written next to the log by a small recorder process that runs the command
and waits for it, so the hook can show the outcome's exit code to a pusher who stayed, and so
anyone can tell afterwards how the run ended.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.base import proc

# The pusher's screen is not the place for megabytes of a deploy command's output: past this
# the hook stops showing lines (the log keeps everything) and says how much it left out.
MAX_LINES = 2000
MAX_BYTES = 256 * 1024
POLL = 0.1

# The recorder: runs argv, passes a deliberate signal on to it, writes how it ended (the
# returncode; negative: killed by that signal) atomically beside the log, exits the same way.
_RECORDER = """import os, signal, subprocess, sys
status = sys.argv[1]
p = subprocess.Popen(sys.argv[2:])
def fwd(signum, frame):
    try:
        p.send_signal(signum)
    except OSError:
        pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, fwd)
rc = p.wait()
tmp = status + ".tmp"
# A new file, never through a link planted at the name (tests/test_state_links.py); rename replaces a link.
try:
    os.unlink(tmp)
except FileNotFoundError:
    pass
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
with os.fdopen(fd, "w") as f:
    f.write(str(rc) + "\\n")
    # A shared (setgid) state dir: operators and root's cron read it whatever our umask.
    if os.stat(os.path.dirname(os.path.abspath(tmp))).st_mode & 0o2000:
        os.fchmod(f.fileno(), 0o660)
os.replace(tmp, status)
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def spawn_recorded(argv: Sequence[str], *, log: Path, status: Path,
                   cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Start argv detached (its own session, stdin /dev/null, output appended to `log`); its
    returncode is written to `status` when it ends. Returns the recorder's pid (a SIGTERM to it
    reaches argv)."""
    status.unlink(missing_ok=True)
    wrapped = [sys.executable, "-I", "-S", "-c", _RECORDER, str(status), *[os.fspath(a) for a in argv]]
    return proc.spawn_detached(wrapped, log=log, cwd=cwd, env=env)


def read_status(status: Path) -> int | None:
    """The recorded returncode, or None while it runs (or when the recorder itself was killed)."""
    try:
        return int(status.read_text().strip())
    except (OSError, ValueError):
        return None


def exit_code(returncode: int | None) -> int | None:
    """A returncode as a shell shows it: killed by signal N → 128 + N."""
    if returncode is None:
        return None
    return returncode if returncode >= 0 else 128 - returncode


@dataclass
class Followed:
    returncode: int | None = None  # None: still running when we stopped, or how it ended is unknown
    finished: bool = False  # the work ended while we followed it
    listener_gone: bool = False  # writing to the listener failed: they hung up
    shown_lines: int = 0
    cut_lines: int = 0
    cut_bytes: int = 0


def follow(pid: int, log: Path, status: Path, write: Callable[[str], None], *,
           max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES, poll: float = POLL,
           sleep: Callable[[float], None] = time.sleep) -> Followed:
    """Copy `log`'s lines to write() until the recorded work ends or write() fails.

    Lines past max_lines / max_bytes are counted, not shown, and one closing line says how
    many were cut and where the whole log is."""
    out = Followed()
    shown_bytes = 0
    pending = b""
    offset = 0

    def emit(raw: bytes) -> bool:
        nonlocal shown_bytes
        if out.shown_lines >= max_lines or shown_bytes + len(raw) > max_bytes:
            out.cut_lines += 1
            out.cut_bytes += len(raw) + 1
            return True
        try:
            write(raw.decode("utf-8", "replace"))
        except (OSError, ValueError):  # BrokenPipeError and a closed stream: the pusher left
            out.listener_gone = True
            return False
        out.shown_lines += 1
        shown_bytes += len(raw) + 1
        return True

    while True:
        done = read_status(status) is not None or not proc.pid_alive(pid)
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            if not emit(raw):
                return out
        if done:
            break
        sleep(poll)
    if pending and not emit(pending):
        return out
    _reap(pid)
    out.finished = True
    out.returncode = read_status(status)
    if out.cut_lines:
        try:
            write(f"… {out.cut_lines} more line(s) ({out.cut_bytes} bytes) not shown here; the whole log: {log}")
        except (OSError, ValueError):
            out.listener_gone = True
    return out


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


def prune(directory: Path, pattern: str, keep: int) -> None:
    """Keep the newest `keep` files matching pattern in directory (logs of earlier runs)."""
    try:
        files = sorted(directory.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in files[keep:]:
        try:
            old.unlink()
        except OSError:
            pass
