"""Privileged deploys: a least-privilege sudoers drop-in for a service's deploy command.

`deploy = "sudo systemctl restart primerouter"` runs as the service's account, so that account
needs sudo for exactly that command and nothing else: `opskit sudoers NAME` prints the rule
(absolute program path, arguments fixed, NOPASSWD because hooks and cron have no terminal),
checked with `visudo -cf` before it is shown. `doctor` asks `sudo -n -l` as the account whether
the rule is in place.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opskit.base import accounts, proc
from opskit.base.config import ServiceSettings
from opskit.base.errors import UsageError

_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
_PATH = accounts.SYSTEM_PATH
# Characters sudoers gives a meaning inside a command's arguments (sudoers(5), "Other special
# characters and reserved words").
_SPECIAL = str.maketrans({c: "\\" + c for c in "\\,:=#"})


def sudo_commands(command: str | None) -> list[list[str]]:
    """Each `sudo PROGRAM ARGS…` the deploy command runs, without sudo and its options."""
    if not command:
        return []
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    words = list(lex)
    out: list[list[str]] = []
    segment: list[str] = []
    for w in [*words, ";"]:
        if w in _OPERATORS:
            if segment and segment[0] == "sudo":
                rest = segment[1:]
                while rest and rest[0].startswith("-"):
                    opt = rest.pop(0)
                    if opt == "--":
                        break
                    if opt in ("-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U"):
                        rest = rest[1:]  # the option's value
                if rest:
                    out.append(rest)
            segment = []
        else:
            segment.append(w)
    return out


@dataclass(frozen=True)
class Rule:
    user: str
    commands: list[list[str]]  # absolute program first
    text: str


def rule(svc: ServiceSettings) -> Rule:
    pw = accounts.service_account(svc)
    if pw is None:
        raise UsageError(f"service {svc.name}: cannot tell which account runs its deploy; set "
                         f"[service.{svc.name}] user")
    cmds = sudo_commands(svc.deploy)
    if not cmds:
        raise UsageError(f"service {svc.name}: deploy ({svc.deploy or 'not set'}) does not run sudo; "
                         "no sudoers rule is needed")
    resolved = []
    for c in cmds:
        prog = c[0] if os.path.isabs(c[0]) else shutil.which(c[0], path=_PATH)
        if prog is None:
            raise UsageError(f"service {svc.name}: {c[0]!r} (run with sudo in deploy) is not on "
                             f"{_PATH}; write its absolute path in deploy")
        _refuse_pushable(svc, pw, prog)
        resolved.append([prog, *c[1:]])
    lines = [f"# opskit: {pw.pw_name} may run exactly the deploy command of service {svc.name}, as root,",
             "# without a password (hooks and cron have no terminal). Written by `opskit sudoers "
             f"{svc.name}`."]
    for c in resolved:
        spec = " ".join(a.translate(_SPECIAL).replace(" ", "\\ ") for a in c)
        if len(c) == 1:
            spec += ' ""'  # sudoers: no arguments allowed, not any arguments
        lines.append(f"{pw.pw_name} ALL=(root) NOPASSWD: {spec}")
    text = "\n".join(lines) + "\n"
    _visudo_check(text)
    return Rule(pw.pw_name, resolved, text)


def _refuse_pushable(svc: ServiceSettings, pw: Any, prog: str) -> None:
    """A program that a push (or the service account) can change would be root for whoever
    pushes: `sudo /srv/app/deploy.sh` with deploy.sh from the branch. Refused."""
    real = Path(prog).resolve()
    for tree in (svc.worktree, None if svc.pull_mode else svc.repo):
        if tree and real.is_relative_to(Path(tree).resolve()):
            raise UsageError(f"service {svc.name}: {prog} (run with sudo in deploy) lives in {tree}, which a push "
                             "changes; a sudoers rule for it would give root to every pusher. Install the "
                             "script outside the worktree, owned by root (e.g. /usr/local/sbin), and sudo that")
    for p in (real, *real.parents):
        st = p.stat()
        if st.st_uid == pw.pw_uid or st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid == pw.pw_gid):
            raise UsageError(f"service {svc.name}: {prog} can be changed by {pw.pw_name} ({p}); a sudoers rule "
                             f"for it would make {pw.pw_name} root. Make it root's and not writable by others")


def _visudo_check(text: str) -> None:
    visudo = shutil.which("visudo", path=_PATH)
    if visudo is None:
        raise UsageError("visudo not found: install sudo (apt-get install sudo) to check the rule")
    with tempfile.NamedTemporaryFile("w", prefix="opskit-sudoers-", suffix=".tmp") as f:
        f.write(text)
        f.flush()
        r = proc.run([visudo, "-cf", f.name], capture=True, timeout=30)
    if not r.ok:
        raise UsageError(f"visudo rejected the rule ({(r.stderr or r.stdout).strip()}); "
                         "simplify the deploy command")


def check(svc: ServiceSettings) -> tuple[bool, str, str] | None:
    """(ok, detail, fix) for doctor; None when deploy does not use sudo."""
    cmds = sudo_commands(svc.deploy)
    if not cmds:
        return None
    pw = accounts.service_account(svc)
    if pw is None:
        return False, "cannot tell which account runs deploy", f"set [service.{svc.name}] user"
    if os.geteuid() not in (0, pw.pw_uid):
        return False, f"not checked: run doctor as root or {pw.pw_name}", ""
    sudo = shutil.which("sudo", path=_PATH) or "sudo"
    fix = f"opskit sudoers {svc.name} > /etc/sudoers.d/opskit-{svc.name} (mode 0440)"
    for c in cmds:
        prog = c[0] if os.path.isabs(c[0]) else (shutil.which(c[0], path=_PATH) or c[0])
        r = proc.run([sudo, "-n", "-l", prog, *c[1:]], capture=True, timeout=30,
                     user=pw if pw.pw_uid != os.geteuid() else None, env=accounts.user_env(pw))
        if not r.ok:
            return False, f"{pw.pw_name} may not run `sudo {shlex.join(c)}` without a password", fix
    return True, f"{pw.pw_name} may run `{svc.deploy}`", ""
