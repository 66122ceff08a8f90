"""Who may decide: the push account pushes, an operator decides (docs/ARCHITECTURE.md, who may do what).

On a server the account developers and agents push to (`git`) runs the hooks, so it writes the
journal and the messages; if it could also approve, unfreeze or release, the human in the loop
would be optional for the very agent it is meant to check. So, in a shared (setgid) state dir:

- the *push account* is any configured service's account (`[service.NAME] user`, else the owner
  of its repo: accounts.service_account) — on the system install, `git`;
- an *operator* is root, or any other account that can use the state dir (a member of its group).

The push account may freeze (that only stops deploys) but never approve, reject, unfreeze or
release a quarantined tree. A personal state dir (no setgid bit) has one account that is
everything, and nothing is refused there.

Stdlib only, like the rest of base/.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable

from opskit.base import accounts, statefs
from opskit.base.errors import UsageError


def pushes_to(services: Iterable[accounts.ServiceLike], uid: int | None = None) -> list[str]:
    """The services whose account this process (or uid) is: the ones it pushes to."""
    me = os.geteuid() if uid is None else uid
    out = []
    for svc in services:
        pw = accounts.service_account(svc)
        if pw is not None and pw.pw_uid == me:
            out.append(svc.name)
    return out


def refuse_push_account(verb: str, state_dir: str | os.PathLike[str], services: Iterable[accounts.ServiceLike],
                        service: str | None = None) -> None:
    """UsageError (exit 2, one line) when the push account tries to decide in a shared state dir.

    `service`: the one the decision is about, named first when the account pushes to it."""
    if not statefs.is_shared(state_dir):
        return
    services = list(services)
    if os.geteuid() == 0:
        # Root by sudo acts for the account behind it (sudo sets SUDO_UID and the caller cannot
        # change it): a sudo rule that lets group members run `opskit approve` must not let the
        # push account decide through it. Root's own cron has no SUDO_UID.
        behind = _sudo_uid()
        if behind is None or behind == 0:
            return
        mine, who = pushes_to(services, behind), f"{_name(behind)} (root by sudo acts for SUDO_UID={behind})"
    else:
        mine, who = pushes_to(services), accounts.me()
    if not mine:
        return
    name = service if service in mine else mine[0]
    try:
        group = grp.getgrgid(os.stat(state_dir).st_gid).gr_name
    except (OSError, KeyError):
        group = "opskit"
    raise UsageError(f"{verb}: account {who} pushes to service {name} and may not decide on its changes; "
                     f"an operator (another member of group {group}, or root) runs it")


def _sudo_uid() -> int | None:
    raw = os.environ.get("SUDO_UID", "")
    return int(raw) if raw.isdigit() else None


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
