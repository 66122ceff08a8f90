"""Which account does a service's work, and how root hands that work to it.

On a server the bare repo and the worktree belong to the account developers push to (`git`).
Root (cron, sudo) must never run git there itself: a repository's config can run programs
(`core.fsmonitor`, hooks) as whoever runs git in it, so `safe.directory` would make root run
code the account controls. Instead every process opskit starts for that repository — git, the
deploy command, test, review, `cmd` probes — runs as the account that owns it, with that
account's HOME and a clean environment, dropped with setpriv (util-linux, on every Debian).

Stdlib only: Git.run calls `drop_for` on every git call, hooks included.
"""

from __future__ import annotations

import json
import os
import pwd
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

SETPRIV = "/usr/bin/setpriv"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a dropped process keeps of the caller's environment: locale, time zone, opskit's own
# per-command variables, and git's identity/transport settings. Everything else (root's HOME,
# SSH agent, whatever sudo or cron passed) stays behind.
_KEEP = ("LANG", "LANGUAGE", "TZ", "TERM")
_KEEP_PREFIXES = ("LC_", "OPSKIT_")
_GIT_KEEP = {"GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
             "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE", "GIT_CONFIG_NOSYSTEM", "GIT_TERMINAL_PROMPT",
             "GIT_SSH_COMMAND", "GIT_ALLOW_PROTOCOL",
             # a pre-receive hook run by root must still see the objects being pushed
             "GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES",
             # save_state's index copies: dropped, git as the account wrote the real index and
             # root's heal left the drift staged there (tests/test_root_paths.py)
             "GIT_INDEX_FILE"}


def me() -> str:
    """The name of the account running this process (its uid when it has no passwd entry)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def owner(path: str | os.PathLike[str]) -> pwd.struct_passwd | None:
    """The account that owns path, or None when path does not exist or its uid has no name."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def drop_for(path: str | os.PathLike[str]) -> pwd.struct_passwd | None:
    """The account root must become before running anything in path: its owner, when we are
    root and the owner is not. None when nothing needs dropping."""
    if os.geteuid() != 0:
        return None
    p = Path(path)
    # A path that does not exist yet (git init, clone): its nearest existing parent decides.
    while not p.exists() and p != p.parent:
        p = p.parent
    o = owner(p)
    return o if o is not None and o.pw_uid != 0 else None


def user_env(pw: pwd.struct_passwd, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for pw: its HOME, USER, LOGNAME, SHELL, the system PATH (opskit's
    own bin first), and only the caller's variables listed in _KEEP."""
    base = os.environ if env is None else env
    out = {k: v for k, v in base.items()
           if k in _KEEP or k.startswith(_KEEP_PREFIXES) or k in _GIT_KEEP}
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    out.update({"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name,
                "SHELL": pw.pw_shell or "/bin/sh", "PATH": f"{bindir}:{SYSTEM_PATH}"})
    return out


def as_user(pw: pwd.struct_passwd, argv: Sequence[str],
            env: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and env to run argv as pw (root only): setpriv sets uid, gid and pw's groups.

    setpriv looks argv[0] up while it still holds root's capabilities (they go at that exec):
    a program only root can reach still starts, then runs as pw. opskit only passes programs
    every account can run (git, /bin/sh, its own interpreter); hooks.install checks the last."""
    wrapped = [SETPRIV, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--",
               *[os.fspath(a) for a in argv]]
    return wrapped, user_env(pw, env)


class AccountError(Exception):
    """What failed in as_account's child, as its message (the child's exception does not cross)."""


def as_account(pw: pwd.struct_passwd, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) run as pw in a forked child; its result (JSON-able) or its error, in the parent.

    Root never does a file operation in a folder another account owns: that account can swap any
    part of it for a link between root's checks and root's writes (its hooks/ folder linked to
    /etc/cron.hourly made root write a hook there, docs/ARCHITECTURE.md "Who may do what";
    tests/test_hooks_as_root.py). As the account, a link leads only where it could write anyway.
    The child runs fn and leaves with os._exit: no atexit, no buffered output of the parent's,
    no cleanup of objects it shares with the parent. A UsageError in fn is a UsageError here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.close(r)
            try:
                os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                if (os.getuid(), os.geteuid(), os.getgid(), os.getegid()) != (pw.pw_uid,) * 2 + (pw.pw_gid,) * 2:
                    raise AccountError(f"could not become {pw.pw_name}")
                out: dict[str, Any] = {"ok": True, "result": fn(*args)}
                code = 0
            except BaseException as e:  # noqa: BLE001 — everything crosses back as a message
                out = {"ok": False, "type": type(e).__name__, "message": str(e) or type(e).__name__}
            data = json.dumps(out).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    try:
        got = json.loads(b"".join(chunks))
    except ValueError:
        raise AccountError(f"the process working as {pw.pw_name} died "
                           f"({os.waitstatus_to_exitcode(status)}) before saying how it went") from None
    if got.get("ok"):
        return got.get("result")
    if got.get("type") in ("UsageError", "ConfigError"):
        from opskit.base.errors import UsageError  # stdlib-only for the hooks, but for this error

        raise UsageError(got["message"])
    raise AccountError(got["message"])


def dubious_ownership(path: str | os.PathLike[str], stderr: str) -> str | None:
    """git's refusal to work in a repository someone else owns, said as what it is, with the fix."""
    if "dubious ownership" not in stderr:
        return None
    o = owner(path)
    who = o.pw_name if o else "another account"
    return (f"{path}: git refuses to work here (\"dubious ownership\"): the repository belongs to "
            f"{who} and you are {me()}; run opskit as root (sudo opskit …, it runs git as {who}) "
            f"or as {who} (sudo -u {who} opskit …); do not add safe.directory, which lets the "
            "repository's config run programs as you")


# --- a service's account ----------------------------------------------------------------------

def service_account(svc: ServiceLike) -> pwd.struct_passwd | None:
    """[service.NAME] user, else the owner of its repo (a local one) or of its worktree."""
    if svc.user:
        return account(svc.user)
    for p in (svc.repo, svc.worktree):
        if p and os.path.isabs(os.fspath(p)) and os.path.exists(p):
            return owner(p)
    return None


def drop_for_service(svc: ServiceLike) -> pwd.struct_passwd | None:
    """The account root runs the service's commands as (None when not root, or it is root's)."""
    if os.geteuid() != 0:
        return None
    pw = service_account(svc)
    return pw if pw is not None and pw.pw_uid != 0 else None


def check_actor(svc: ServiceLike) -> None:
    """Acting for a service (deploy, revert, heal) is for root or the service's account: anyone
    else would run its deploy command, and git in its repo, as the wrong account."""
    from opskit.base.errors import UsageError  # stdlib-only for the hooks, but for this refusal

    if os.geteuid() == 0:
        return
    pw = service_account(svc)
    if pw is None or pw.pw_uid == os.geteuid():
        return
    raise UsageError(f"service {svc.name} runs as {pw.pw_name}, and you are {me()}: run this as root "
                     f"(sudo opskit …) or as {pw.pw_name} (sudo -u {pw.pw_name} opskit …)")


class ServiceLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def repo(self) -> str: ...
    @property
    def worktree(self) -> Path: ...
    @property
    def user(self) -> str | None: ...
