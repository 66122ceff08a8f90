"""One run of one reaction for one event: a command as the right account, or a POST.

The account: `user` when set; else the service's account (the reaction's `service`, or the
event's when the reaction names none); else whoever runs `opskit react`. Root runs it as that
account (base/accounts.py says why root never works in another account's repository), and
runs something as root only when `user = "root"` says so. A command runs in the service's
worktree (the config's folder when no service applies), the event as JSON on stdin and its
ids in OPSKIT_* variables. What it printed is kept as a short tail, masked and escaped.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.base import accounts, proc
from opskit.base.config import Settings
from opskit.base.errors import OpsError, redact
from opskit.base.reactions_config import ReactionSettings
from opskit.base.text import shown
from opskit.storage.journal import Event

TAIL_LINES = 20
TAIL_CHARS = 2000


@dataclass(frozen=True)
class Target:
    """Where and as whom a reaction's command runs; `problem` when it must not run at all."""

    pw: pwd.struct_passwd | None
    cwd: Path
    service: str | None
    problem: str | None = None

    @property
    def mine(self) -> bool:
        """Can this process run it? Root can be anyone; anyone else only themselves."""
        return os.geteuid() == 0 or self.pw is None or self.pw.pw_uid == os.geteuid()


@dataclass
class Outcome:
    ok: bool
    exit: int | None  # the command's exit code (negative: killed by that signal), HTTP status
    duration: float
    tail: str
    reason: str
    timed_out: bool = False
    account: str | None = None

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"exit": self.exit, "duration": round(self.duration, 3), "tail": self.tail}
        if self.timed_out:
            out["timed_out"] = True
        if self.account:
            out["account"] = self.account
        if not self.ok:
            out["reason"] = self.reason
        return out


def target(settings: Settings, r: ReactionSettings, service: str | None) -> Target:
    name = r.service or service
    svc = settings.services.get(name) if name else None
    cwd = svc.worktree if svc is not None else (settings.path.parent if settings.path else Path("/"))
    if r.user:
        pw = accounts.account(r.user)
        if pw is None:
            return Target(None, cwd, name, f"no account {r.user!r} on this machine")
    elif svc is not None:
        pw = accounts.service_account(svc)
        if pw is None:
            if os.geteuid() == 0:
                return Target(None, cwd, name, f"cannot tell which account service {svc.name} runs as; "
                                               f"set [service.{svc.name}] user")
            pw = accounts.account(accounts.me())
    else:
        pw = accounts.account(accounts.me())
    if pw is not None and pw.pw_uid == 0 and r.user != "root":
        return Target(pw, cwd, name, "it would run as root; set user = \"root\" in the reaction to allow "
                                     "that, or name a service or an account")
    return Target(pw, cwd, name)


def event_env(ev: Event, r: ReactionSettings) -> dict[str, str]:
    return {"OPSKIT_EVENT_ID": str(ev.id), "OPSKIT_EVENT_TYPE": ev.type, "OPSKIT_SERVICE": ev.service or "",
            "OPSKIT_CHAIN": ev.chain or "", "OPSKIT_COMMIT": ev.sha or "", "OPSKIT_REACTION": r.name}


def event_json(ev: Event) -> str:
    return json.dumps(ev.to_dict(), default=str, ensure_ascii=False)


def tail_of(lines: Sequence[str]) -> str:
    """The last lines of what a command printed: masked, escaped, bounded."""
    text = shown(redact("\n".join(lines[-TAIL_LINES:])), lines=True)
    return text[-TAIL_CHARS:]


def run_command(settings: Settings, r: ReactionSettings, ev: Event, t: Target, *,
                lock_fd: int | None = None, env: dict[str, str] | None = None) -> Outcome:
    """The reaction's command for ev. lock_fd (the dispatcher's lock) is held by the command
    for as long as it runs, even past a SIGKILL of the dispatcher: the next dispatcher waits
    for it instead of running the same event beside it (proc.holding)."""
    assert r.run is not None
    account = t.pw.pw_name if t.pw else None
    if t.problem:
        return Outcome(False, None, 0.0, "", t.problem, account=account)
    argv = proc.shell_argv(r.run)
    extra = {**event_env(ev, r), **(env or {})}
    fds: tuple[int, ...] = ()
    if lock_fd is not None:
        argv, fds = proc.holding(lock_fd, argv), (lock_fd,)
    try:
        res = proc.run(argv, cwd=t.cwd, env=proc.clean_env(extra), timeout=r.timeout, input=event_json(ev),
                       tail_lines=TAIL_LINES, pass_fds=fds, user=t.pw if os.geteuid() == 0 else None)
    except OpsError as e:
        return Outcome(False, None, 0.0, "", redact(str(e)), account=account)
    res.argv = proc.shell_argv(r.run)
    if res.timed_out:
        reason = f"timed out after {r.timeout:g}s (stopped)"
    elif res.returncode != 0:
        reason = f"exit {res.returncode}" if res.returncode > 0 else f"killed by signal {-res.returncode}"
    else:
        reason = "ok"
    return Outcome(res.ok, res.returncode, res.duration, tail_of(res.tail), reason, res.timed_out, account)


def post_url(r: ReactionSettings, ev: Event) -> Outcome:
    """POST the event JSON to the reaction's URL (a secret: never in the outcome)."""
    from opskit.notify.base import post  # one HTTP rule: no URL in an error, timeouts classified

    assert r.url is not None
    began = time.monotonic()
    outcome, _ = post(r.url.reveal(), timeout=r.timeout, json_body=ev.to_dict(),
                      headers={"X-Opskit-Event-Id": str(ev.id), "X-Opskit-Reaction": r.name})
    took = time.monotonic() - began
    if outcome.kind == "delivered":
        return Outcome(True, outcome.status, took, "", "ok")
    return Outcome(False, outcome.status, took, "", redact(outcome.error or "not delivered"))


def run(settings: Settings, r: ReactionSettings, ev: Event, *, lock_fd: int | None = None) -> Outcome:
    if r.url is not None:
        return post_url(r, ev)
    return run_command(settings, r, ev, target(settings, r, ev.service), lock_fd=lock_fd)
