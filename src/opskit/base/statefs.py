"""The state dir shared by every account on a host (root, the git account's hooks, operators).

`install.sh --system` makes it root:opskit 2770: the setgid bit gives everything created inside
the group opskit. What opskit creates there (the journal and its -wal/-shm, locks, logs) must
also be group-writable whatever the creator's umask — a hook running under `umask 077` that
creates the journal would otherwise lock root and the operators out of it. A state dir without
the setgid bit is a personal one, and is left as the umask makes it.

Stdlib only: the hooks create the journal.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


def is_shared(state_dir: str | os.PathLike[str]) -> bool:
    try:
        return bool(os.stat(state_dir).st_mode & stat.S_ISGID)
    except OSError:
        return False


def share(path: str | os.PathLike[str], state_dir: str | os.PathLike[str]) -> None:
    """Give path (a file or folder we created in a shared state dir) to the group: rw for files,
    rwx and setgid for folders. Someone else's file is left alone (we may not chmod it)."""
    if not is_shared(state_dir):
        return
    try:
        st = os.stat(path)
        if st.st_uid != os.geteuid():
            return
        want = stat.S_IRWXG | stat.S_ISGID if stat.S_ISDIR(st.st_mode) else stat.S_IRGRP | stat.S_IWGRP
        if st.st_mode & want != want:
            os.chmod(path, stat.S_IMODE(st.st_mode) | want)
    except OSError:
        pass


def share_fd(fd: int, state_dir: str | os.PathLike[str]) -> None:
    if not is_shared(state_dir):
        return
    try:
        st = os.fstat(fd)
        want = stat.S_IRGRP | stat.S_IWGRP
        if st.st_uid == os.geteuid() and st.st_mode & want != want:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | want)
    except OSError:
        pass


def mkdir(path: Path, state_dir: str | os.PathLike[str]) -> None:
    """mkdir -p inside the state dir, each new folder shared."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        share(d, state_dir)


def not_writable(state_dir: str | os.PathLike[str]) -> str | None:
    """None when this account can write state_dir (or create it); else the one line saying who
    cannot and the fix."""
    p = Path(state_dir)
    while not p.exists() and p != p.parent:
        p = p.parent
    if os.access(p, os.W_OK | os.X_OK):
        return None
    return denied(p, f"state dir {state_dir}", "write")


def denied(p: Path, what: str, verb: str) -> str:
    """One line: which account cannot `verb` what, the group that may, and the usermod fix."""
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = str(os.geteuid())
    try:
        st = os.stat(p)
        group = grp.getgrgid(st.st_gid).gr_name
    except (OSError, KeyError):
        group = "opskit"
    return (f"{what}: account {name} cannot {verb} it (it belongs to group {group}); "
            f"add the account to the group: usermod -aG {group} {name} (then log in again)")
