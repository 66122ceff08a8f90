"""What every job run leaves behind: its kv state, its events, one notification per failure streak.

Shared by run-job (which records each run) and cron-check (which reports what did not run).
The state layout and the rules for overlaps and clock changes are described in
opskit/jobs/__init__.py.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opskit.base.clock import iso
from opskit.base.config import NAME
from opskit.base.errors import UsageError, redact
from opskit.base.proc import pid_alive
from opskit.notify.announce import announce
from opskit.storage.journal import kv_update

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

JOB = "job"
CHECK = "cron-check"
TAIL = 20  # lines of output kept in job.fail and its notification
# A start or heartbeat this far in the future means the clock was set back.
FUTURE_SLACK = dt.timedelta(seconds=60)

# notifier(settings, journal, message, title=, level=, service=, event_id=) -> anything
Notifier = Callable[..., object]


def check_name(name: str) -> None:
    if not NAME.match(name or ""):
        raise UsageError(f"job name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                         "(e.g. nightly-backup)")


def notify_owner(settings: Settings, journal: Journal, notifier: Notifier | None, message: str, *,
            title: str, level: str, service: str | None, event_id: int | None) -> None:
    """Send, but never let a notification problem change a job's outcome."""
    if notifier is not None:  # tests hand one in
        try:
            notifier(settings, journal, message, title=title, level=level, service=service, event_id=event_id)
        except Exception as e:
            print(f"opskit: could not notify ({title}): {redact(str(e))[:200]}", file=sys.stderr)
        return
    announce(settings, journal, message, title=title, level=level, service=service, event_id=event_id,
             warn=lambda line: print(f"opskit: {line}", file=sys.stderr))


# --- processes ------------------------------------------------------------------------------

def proc_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a reused pid from ours."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        if fields[0] == "Z":  # exited, not yet reaped: as good as gone
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, entry: dict[str, Any]) -> bool:
    ticks = proc_ticks(pid)
    if ticks is None:
        # no /proc: trust kill(0); with /proc, the missing start time says it is gone
        return not os.path.isdir("/proc") and pid_alive(pid)
    return entry.get("ticks") in (None, ticks)


# --- recording outcomes ---------------------------------------------------------------------

@dataclass
class Outcome:
    streak: int  # consecutive failures after this result
    first_failure: bool
    recovered_after: int  # failures that this success ends (0: none)


def apply_result(st: dict[str, Any], ok: bool, out: Outcome) -> None:
    before = int(st.get("streak", 0))
    if ok:
        st["streak"] = 0
        out.recovered_after = before
    else:
        st["streak"] = before + 1
        out.first_failure = before == 0
    out.streak = st["streak"]


def report_failure(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
                    service: str | None, data: dict[str, Any], out: Outcome, why: str) -> int:
    ev = journal.append("job.fail", service, {**data, "job": name, "streak": out.streak})
    if out.first_failure:
        tail = "\n".join(data.get("tail") or [])
        msg = (f"Job {name} failed on {socket.gethostname()}: {why}."
               + (f"\nLast output:\n{tail}" if tail else "")
               + "\nYou will not be told again until it passes.")
        notify_owner(settings, journal, notifier, msg, title=f"opskit job {name} failed", level="error",
                service=service, event_id=ev.id)
    return ev.id


def report_recovery(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
                     service: str | None, data: dict[str, Any], message: str) -> int:
    ev = journal.append("job.recovered", service, {**data, "job": name})
    notify_owner(settings, journal, notifier, message, title=f"opskit job {name} recovered", level="info",
            service=service, event_id=ev.id)
    return ev.id


def reap_lost(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
               now: dt.datetime, keep: int | None = None) -> list[int]:
    """Runs whose run-job died without recording a result count as failures."""
    lost: list[tuple[int, str]] = []
    out = Outcome(0, False, 0)
    service: list[str | None] = [None]

    def update(old: Any) -> Any:
        if not old:
            return old
        st = dict(old)
        running = dict(st.get("running") or {})
        lost.clear()
        for p, entry in list(running.items()):
            if int(p) != keep and not alive(int(p), entry):
                lost.append((int(p), str(entry.get("started", "?"))))
                del running[p]
        if not lost:
            return old
        st["running"] = running
        st["running_pid"] = max((int(p) for p in running), default=None)
        st["last_end"] = iso(now)
        st["last_status"] = "fail"
        st["last_fail"] = iso(now)
        st["last_exit"] = None
        for _ in lost:
            apply_result(st, False, out)
        service[0] = st.get("service")
        return st

    kv_update(journal, JOB, name, update)
    ids = []
    for pid, started in lost:
        why = f"its run-job (pid {pid}, started {started}) ended without a result: killed or crashed"
        ids.append(report_failure(settings, journal, notifier, name, service[0],
                                   {"pid": pid, "lost": True, "started": started, "exit_code": None},
                                   out, why))
    return ids
