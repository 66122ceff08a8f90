"""Every process opskit starts goes through here.

- argv lists only; a shell is used only for commands the user wrote as a string in the
  config (deploy, test, review, health cmd), and then it is `/bin/sh -c <their string>`:
  data from git (branch names, messages, file names) is never pasted into a shell string.
- every run is bounded by a timeout; on timeout the whole process group is killed.
- output is kept as a bounded tail, so a command that prints megabytes costs little.
- a command that leaves a background child holding its stdout does not hang us: once the
  command itself has exited we read what is already there and stop.
"""

from __future__ import annotations

import collections
import os
import pwd
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opskit.base.errors import OpsError, redact

TAIL_LINES = 40
# After the command exits, how long we keep draining a pipe that a background child
# still holds open before giving up on it.
DRAIN_GRACE = 0.5
# What a command run with `output` (a file) may leave unread when it exits: more is skipped.
FILE_BACKLOG = 1 << 20

# Variables git sets for a hook; pointing a git command at *another* repo with them set
# makes it act on the hook's repo instead (pre-commit's no_git_env).
_GIT_KEEP = {
    "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSL_CAINFO", "GIT_SSL_NO_VERIFY",
    "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM", "GIT_ASKPASS",
    "GIT_ALLOW_PROTOCOL", "GIT_TERMINAL_PROMPT", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE",
}


def clean_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment minus git's per-hook variables, plus `extra`."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.startswith("GIT_") or k in _GIT_KEEP}
    if extra:
        env.update(extra)
    return env


# The only variables of our environment that code from a pushed tree sees (test, review, a
# sandboxed cmd probe): locale, home, path, terminal, and the git identity for commits it makes.
_UNTRUSTED_ENV = re.compile(r"(PATH|HOME|USER|LOGNAME|LANG|LC_[A-Z_]+|TZ|TMPDIR|SHELL|TERM"
                            r"|GIT_(AUTHOR|COMMITTER)_(NAME|EMAIL|DATE))\Z")


def untrusted_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An allowlist, not our environment: pushed code must not see webhook URLs, tokens or
    anything else opskit (or the pusher's shell) was given."""
    env = {k: v for k, v in os.environ.items() if _UNTRUSTED_ENV.match(k)}
    if extra:
        env.update(extra)
    return env


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    tail: list[str] = field(default_factory=list)  # last lines of combined output
    timed_out: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def tail_text(self, lines: int = TAIL_LINES) -> str:
        return redact("\n".join(self.tail[-lines:]))

    def describe(self) -> str:
        """One line: what ran and how it ended."""
        cmd = " ".join(self.argv)
        if len(cmd) > 120:
            cmd = cmd[:117] + "..."
        if self.timed_out:
            how = f"timed out after {self.duration:.0f}s"
        elif self.returncode < 0:
            how = f"killed by signal {-self.returncode}"
        else:
            how = f"exit {self.returncode}"
        last = next((ln for ln in reversed(self.tail) if ln.strip()), "")
        return redact(f"`{cmd}` {how}" + (f": {last.strip()[:200]}" if last else ""))


class ProcError(OpsError):
    def __init__(self, result: Result) -> None:
        self.result = result
        super().__init__(result.describe())


def shell_argv(command: str) -> list[str]:
    """argv for a command the *user* wrote in the config."""
    return ["/bin/sh", "-c", command]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = 60.0,
    input: bytes | str | None = None,
    check: bool = False,
    stream: Callable[[str], None] | None = None,
    tail_lines: int = TAIL_LINES,
    capture: bool = False,
    pass_fds: Sequence[int] = (),
    user: pwd.struct_passwd | None = None,
    output: int | None = None,
) -> Result:
    """Run argv to completion (or timeout) and return what happened.

    capture=True keeps stdout and stderr whole and apart (for git plumbing whose output we
    parse); otherwise stderr is merged into stdout and only the last `tail_lines` lines are
    kept, each passed to `stream` as it arrives. pass_fds: descriptors the child inherits
    (Popen's; every other one is closed), e.g. the service lock's (see `holding`). user: when
    we are root, run as that account instead, with its HOME and a clean environment.
    output: a descriptor of a regular file (opened O_APPEND) that takes stdout and stderr
    instead of a pipe; it is read back from where it ended when we started, for the tail and
    `stream`. What the command leaves running in the background inherits the file, not a pipe
    of ours: it never gets EPIPE once we are gone, and we never wait on it (deploy/rollout.py).
    """
    argv = [os.fspath(a) for a in argv]
    if user is not None and os.geteuid() == 0 and user.pw_uid != 0:
        # Root runs a service's work as its account (accounts.py says why); argv stays what
        # the caller asked for in the Result, so messages name the command, not setpriv.
        from opskit.base import accounts

        shown = argv
        argv, env = accounts.as_user(user, argv, env)
    else:
        shown = None
    if isinstance(input, str):
        # surrogateescape: text we read from git or crontab -l may hold non-UTF-8 bytes
        input = input.encode("utf-8", "surrogateescape")
    start = time.monotonic()
    offset = os.fstat(output).st_size if output is not None else 0
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=output if output is not None else subprocess.PIPE,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )
    except FileNotFoundError as e:
        raise OpsError(f"cannot run `{argv[0]}`: not found ({e.strerror})") from None
    except PermissionError as e:
        raise OpsError(f"cannot run `{argv[0]}`: {e.strerror}") from None
    except NotADirectoryError as e:
        raise OpsError(f"cannot run `{argv[0]}` in {cwd}: {e.strerror}") from None

    readers: dict[int, _Reader] = {}
    timed_out = False
    try:
        # From here on a signal of our own (SIGTERM, Ctrl-C) takes the child's group with us,
        # however early it comes: the child may already be running while the readers start.
        if output is not None:
            readers[1] = _FileReader(output, offset, tail=tail_lines, stream=stream)
        else:
            assert proc.stdout is not None
            readers[1] = _Reader(proc.stdout.fileno(), keep_all=capture, tail=tail_lines,
                                 stream=None if capture else stream)
        if capture:
            assert proc.stderr is not None
            readers[2] = _Reader(proc.stderr.fileno(), keep_all=True, tail=tail_lines, stream=None)
        for r in readers.values():
            r.start()
        if input is not None:
            assert proc.stdin is not None
            threading.Thread(target=_feed, args=(proc.stdin, input), daemon=True).start()
        try:
            _wait(proc, timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for r in readers.values():
            if r.ident is not None:  # started (a signal may come before they all are)
                try:
                    r.finish(DRAIN_GRACE)
                except RuntimeError:  # the signal came inside start(): it never ran
                    pass
        for f in (proc.stdout, proc.stderr, proc.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
    duration = time.monotonic() - start
    out = readers[1]
    err = readers.get(2)
    tail = list(out.lines)
    if err is not None:
        tail = list(err.lines) + tail
    result = Result(
        argv=argv,
        returncode=proc.returncode if proc.returncode is not None else -9,
        stdout=out.text() if capture else "",
        stderr=err.text() if err is not None else "",
        tail=tail[-tail_lines:],
        timed_out=timed_out,
        duration=duration,
    )
    if shown is not None:
        result.argv = shown
    if check and not result.ok:
        raise ProcError(result)
    return result


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> None:
    """proc.wait(timeout), woken the moment the child exits: Popen.wait with a timeout polls,
    sleeping up to 50 ms between looks, which a short command (a reaction's, a probe's) pays
    in full every time. A pidfd becomes readable at the exit itself (Linux 5.3+)."""
    if timeout is None:
        proc.wait()
        return
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # an older kernel, or the child is already gone
        proc.wait(timeout=timeout)
        return
    try:
        # poll, not select: select refuses a descriptor numbered 1024 or more (a busy process)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ready = poller.poll(max(0.0, timeout) * 1000)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    proc.wait()


# The keeper: a process that holds an inherited descriptor (a lock's) exactly as long as the
# command it runs, without handing the descriptor on: a daemon the command starts in the
# background (`./server &`) must not keep a deploy lock for its whole life. Exits as the command
# did (same code, or killed by the same signal).
_KEEPER = """import os, signal, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
while True:
    try:
        rc = p.wait()
        break
    except KeyboardInterrupt:
        pass
if rc < 0:
    signal.signal(-rc, signal.SIG_DFL)
    os.kill(os.getpid(), -rc)
sys.exit(rc)
"""


def holding(fd: int, argv: Sequence[str]) -> list[str]:
    """argv wrapped so that `fd` (pass it in `run(..., pass_fds=[fd])`) stays open until argv's
    own process exits, even if we die first — and is not inherited by what argv starts."""
    return [sys.executable, "-I", "-S", "-c", _KEEPER, str(fd), *[os.fspath(a) for a in argv]]


def _feed(stdin: object, data: bytes) -> None:
    try:
        stdin.write(data)  # type: ignore[attr-defined]
        stdin.close()  # type: ignore[attr-defined]
    except (BrokenPipeError, OSError, ValueError):
        pass


class _Reader(threading.Thread):
    """Reads a pipe without ever blocking the caller past the grace period."""

    def __init__(self, fd: int, *, keep_all: bool, tail: int,
                 stream: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.keep_all = keep_all
        self.chunks: list[bytes] = []
        self.lines: collections.deque[str] = collections.deque(maxlen=max(tail, 1))
        self.stream = stream
        self._partial = b""
        self._stop_at: float | None = None
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            with self._lock:
                stop_at = self._stop_at
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
            except (OSError, ValueError):
                break
            if not ready:
                continue
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                break
            if not data:
                break
            self._take(data)
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _take(self, data: bytes) -> None:
        if self.keep_all:
            self.chunks.append(data)
        buf = self._partial + data
        *complete, self._partial = buf.split(b"\n")
        if self.stream is None:
            complete = complete[-(self.lines.maxlen or 1):]
        for ln in complete:
            self._line(ln)
        if len(self._partial) > 65536:  # a megabyte with no newline is still bounded
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.lines.append(text)
        if self.stream is not None:
            try:
                self.stream(text)
            except Exception:
                pass

    def finish(self, grace: float) -> None:
        with self._lock:
            self._stop_at = time.monotonic() + grace
        self.join(grace + 0.5)

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "surrogateescape")


class _FileReader(_Reader):
    """Follows what a command writes to a file (run's `output`) from `offset` on. A file has no
    end to wait for: once told to finish (the command exited), it reads up to the size the file
    had then and stops — a background child that keeps writing is left to the file, and we are
    not held for it. A backlog past FILE_BACKLOG is skipped to its last FILE_BACKLOG bytes: the
    tail is what is kept anyway."""

    def __init__(self, fd: int, offset: int, *, tail: int, stream: Callable[[str], None] | None) -> None:
        super().__init__(fd, keep_all=False, tail=tail, stream=stream)
        self.offset = offset
        self._end: int | None = None

    def run(self) -> None:
        while True:
            with self._lock:
                end = self._end
            if end is not None and end - self.offset > FILE_BACKLOG:
                self.offset, self._partial = end - FILE_BACKLOG, b""
            want = 65536 if end is None else min(65536, end - self.offset)
            if want <= 0:
                break
            try:
                data = os.pread(self.fd, want, self.offset)
            except OSError:
                break
            if data:
                self.offset += len(data)
                self._take(data)
            elif end is not None:
                break  # truncated under us
            else:
                time.sleep(0.05)
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def finish(self, grace: float) -> None:
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            size = self.offset
        with self._lock:
            self._end = size
        self.join(grace + 5.0)  # bounded like the pipe readers': a stalled `stream` never holds the lock


# --- detached processes (pipeline: background = true) ----------------------------------------
# A post-receive hook must return at once in background mode, so the pipeline is started as
# its own session with no tie to the hook's stdout (git waits for that pipe to close).

def spawn_detached(argv: Sequence[str], *, log: str | os.PathLike[str],
                   cwd: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> int:
    """Start argv in a new session, stdin /dev/null, output appended to `log`; return its pid.
    pass_fds: descriptors it inherits (every other one is closed)."""
    os.makedirs(os.path.dirname(os.fspath(log)) or ".", exist_ok=True)
    # The log sits in a folder others may write (the shared state dir): never append through a
    # link planted at its name (tests/test_state_links.py; statefs made it, this opens it a second time).
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OpsError(f"{log}: not a plain file (a link or a hard link); remove it: rm {log}")
    with os.fdopen(fd, "ab") as out:
        child = subprocess.Popen(
            [os.fspath(a) for a in argv], cwd=cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, pass_fds=tuple(pass_fds),
        )
    return child.pid


# --- is a process still there? -------------------------------------------------------------

def pid_alive(pid: int | None) -> bool:
    """True while pid runs. A zombie counts as gone: it has let go of its locks and ports, and
    in a container whose init never reaps, it lingers (lock holders, claims, services)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
