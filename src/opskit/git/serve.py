"""Handing an SSH session to git itself: `git receive-pack` / `git upload-pack` by exec, not as a child.

The push key's forced command (guard/sshshell.py) has decided which repository; git then
speaks the pack protocol on the session's own stdin and stdout, so it replaces the process
(no proc.run: there is nothing to wait for, time out or capture). An argv list, never a
shell. Stdlib only: a push pays this start-up.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs ~10 ms to import
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

SERVICES = ("receive-pack", "upload-pack")
# sshd's PATH is the system's; git is looked up in these alone, never in a folder the account owns.
SEARCH = ("/usr/local/bin", "/usr/bin", "/bin")


def find_git() -> str | None:
    for d in SEARCH:
        p = os.path.join(d, "git")
        if os.access(p, os.X_OK):
            return p
    return None


def exec_service(git: str, service: str, repo: str, env: Mapping[str, str]) -> NoReturn:
    if service not in SERVICES:
        raise ValueError(f"not a git service: {service!r}")
    os.execve(git, ["git", service, repo], dict(env))
