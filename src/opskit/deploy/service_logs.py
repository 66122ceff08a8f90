"""The service's own recent log, read right after a failure (a failed gate, deploy command or
re-gate), so the verdict names the cause (an ImportError, a missing token), not the symptom.

Where it comes from: `[service.X] logs = "COMMAND"` (the operator's command, run like `deploy`:
as the service's account, in the worktree, unsandboxed); unset, a deploy command that is
`[sudo] systemctl restart|reload UNIT` means `journalctl -u UNIT --since @SINCE -n 200
--no-pager` where journalctl exists; otherwise there is none (`opskit doctor` says so).

Bounded (TIMEOUT, MAX_LINES, MAX_BYTES), escaped (`text.shown`) and masked (`redact`). A logs
command that fails, hangs or prints nothing is one line in `note`: it never changes a verdict
and never blocks the revert (tests/test_service_logs.py).
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit.base import accounts, proc
from opskit.base.config import ServiceSettings
from opskit.base.errors import redact
from opskit.base.text import shown

TIMEOUT = 5.0
MAX_LINES = 200
MAX_BYTES = 32 * 1024
LINE_MAX = 2000  # one line of a log is cut here: 32 KiB is then at least 16 lines
PUSHER_LINES = 10  # the last lines the pusher's `remote:` output shows
MESSAGE_LINES = 15  # the last lines a notification shows
# ...in at most this much: the block comes last, and Discord's 2000 characters keep the head of a
# message (reason, commits, commands: ~600-800), so the block must fit beside it, last line included
MESSAGE_CHARS = 900

Which = Callable[[str], str | None]


@dataclass
class Source:
    """How a service's log is read: argv (None: no source) and what to call it."""

    argv: list[str] | None
    label: str  # the configured command, the journalctl line, or why there is none


@dataclass
class Captured:
    lines: list[str] = field(default_factory=list)
    note: str | None = None  # one line when there is nothing to show, or why it stopped short

    def data(self) -> dict[str, Any]:
        """For a failing event's data: `logs` (the lines), `logs_note` when there is one."""
        out: dict[str, Any] = {"logs": self.lines}
        if self.note:
            out["logs_note"] = self.note
        return out


def systemd_unit(deploy: str | None) -> str | None:
    """UNIT of a deploy command `[sudo] systemctl restart|reload UNIT`, else None."""
    if not deploy:
        return None
    try:
        words = shlex.split(deploy)
    except ValueError:
        return None
    if words[:1] == ["sudo"]:
        words = words[1:]
        if words[:1] == ["-n"]:  # the usual non-interactive form
            words = words[1:]
    if len(words) == 3 and words[0].rsplit("/", 1)[-1] == "systemctl" and words[1] in ("restart", "reload") \
            and not words[2].startswith("-"):
        return words[2]
    return None


def source(svc: ServiceSettings, since: int, *, which: Which = shutil.which) -> Source:
    if svc.logs:
        return Source(proc.shell_argv(svc.logs), f"`{svc.logs}`")
    unit = systemd_unit(svc.deploy)
    if unit is None:
        return Source(None, f"no log source (set [service.{svc.name}] logs = \"COMMAND\")")
    journalctl = which("journalctl")
    if journalctl is None:
        return Source(None, f"no logs: journalctl is not installed (unit {unit}); "
                            f"set [service.{svc.name}] logs = \"COMMAND\"")
    argv = [journalctl, "-u", unit, "--since", f"@{since}", "-n", str(MAX_LINES), "--no-pager"]
    return Source(argv, f"`journalctl -u {unit}`")


def bounded(raw: Sequence[str]) -> list[str]:
    """The last MAX_LINES lines in MAX_BYTES, each escaped and masked."""
    lines = [shown(redact(ln))[:LINE_MAX] for ln in raw[-MAX_LINES:]]
    total, keep = 0, 0
    for ln in reversed(lines):
        total += len(ln.encode("utf-8", "replace")) + 1
        if total > MAX_BYTES:
            break
        keep += 1
    return lines[len(lines) - keep:]


def capture(svc: ServiceSettings, since: float, *, timeout: float | None = None,
            which: Which | None = None) -> Captured:
    """Run the service's log source; never raises for the command's own failure. timeout and
    which default to TIMEOUT and shutil.which, read at the call (tests set them)."""
    timeout = TIMEOUT if timeout is None else timeout
    which = which or shutil.which
    src = source(svc, int(since), which=which)
    if src.argv is None:
        return Captured(note=src.label)
    try:
        res = proc.run(src.argv, cwd=svc.worktree, timeout=timeout, tail_lines=MAX_LINES,
                       env=proc.clean_env({"OPSKIT_SINCE": str(int(since)), "OPSKIT_SERVICE": svc.name}),
                       user=accounts.drop_for_service(svc))
    except Exception as e:  # never the verdict: a fork limit, an account gone mid-incident
        return Captured(note=redact(shown(f"logs: {src.label} could not run: {e}")))
    lines = bounded(res.tail)
    if res.timed_out:
        note: str | None = f"logs: {src.label} timed out after {timeout:g}s (stopped)"
    elif not res.ok:
        note = f"logs: {src.label} " + (f"killed by signal {-res.returncode}" if res.returncode < 0
                                       else f"exit {res.returncode}")
    elif not any(ln.strip() for ln in lines):
        note, lines = f"logs: {src.label} printed nothing", []
    else:
        note = None
    return Captured(lines=lines, note=redact(shown(note)) if note else None)


def message_block(lines: Sequence[str], note: str | None = None) -> str:
    """The last MESSAGE_LINES lines for a notification, in MESSAGE_CHARS: empty when none."""
    if not lines:
        return f"Service log: {note}" if note else ""
    tail: list[str] = []
    size = 0
    for ln in reversed(lines[-MESSAGE_LINES:]):
        ln = ln[:200].replace("```", "'''")
        size += len(ln) + 1
        if size > MESSAGE_CHARS:
            break
        tail.append(ln)
    tail.reverse()
    return "Service log (last lines):\n```\n" + "\n".join(tail) + "\n```"
