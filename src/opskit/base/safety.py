"""Refuse to be a privilege escalation: as root, opskit reads nothing another account can write.

Root loads the config (which names the commands it runs), the .env beside it and the hook
templates (which become code the git account runs on every push). If another account can
change any of them, or replace them through a folder it can write, that account can make
root's opskit run what it likes. Stdlib only.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


def writable_by_others(path: str | os.PathLike[str]) -> str | None:
    """None when only root can change path (or it does not exist); else one line naming the
    file (or the folder on its way) and who can write it."""
    p = Path(os.path.abspath(path))
    try:
        st = os.stat(p)
    except OSError:
        return None
    chain = [p, *p.parents]
    for i, q in enumerate(chain):
        try:
            st = os.stat(q)
        except OSError:
            continue
        what = "is" if i == 0 else f"is in {q}, which is"
        if st.st_uid != 0:
            return f"{p} {what} owned by uid {st.st_uid} ({_name(st.st_uid)}), not root"
        sticky = bool(st.st_mode & stat.S_ISVTX) and i > 0
        if st.st_mode & stat.S_IWOTH and not sticky:
            return f"{p} {what} writable by every account"
        if st.st_mode & stat.S_IWGRP and st.st_gid != 0 and not sticky:
            return f"{p} {what} writable by group {_group(st.st_gid)}"
    return None


def refuse_as_root(path: str | os.PathLike[str], what: str) -> None:
    """Raise UsageError (exit 2) when we are root and another account can change path."""
    if os.geteuid() != 0:
        return
    problem = writable_by_others(path)
    if problem:
        from opskit.base.errors import UsageError  # stdlib-only for the hooks, but for this refusal

        raise UsageError(f"refusing to run as root with {what} {problem}; "
                         f"fix it: chown root {path} && chmod go-w {path}")


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "no such user"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
