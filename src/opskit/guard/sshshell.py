"""The forced command of a push key: git push and fetch to this account's opskit repos, nothing else.

`opskit keys add` (wiring/keys.py) writes every key it manages as

    restrict,command="PYTHON -I -m opskit.guard.sshshell --config CONFIG --key NAME" TYPE BLOB opskit:NAME

so sshd runs this module whatever the client asked for, with the request in
SSH_ORIGINAL_COMMAND (`restrict` already refused forwarding, the agent, X11 and a pty). Like
gitolite's and piku's, it allows exactly `git-receive-pack 'PATH'` and `git-upload-pack 'PATH'`,
read with shlex as git quotes it; unlike `git-shell -c`, which passes any path the account can
read, PATH must be the bare `repo` of a configured service whose account this is (`~/`, a path
relative to HOME and git's own `.git` suffix DWIM are followed; symlinks are resolved before the
comparison). git is then exec'd with an argv list — never a shell — in an environment without
the client's `GIT_*` variables (`GIT_CONFIG_PARAMETERS` could point core.hooksPath away from
opskit's pre-receive). A refusal is one line to the client and a LOG_AUTH line to syslog,
where sshd's own refusals go.

Start-up is part of every push: the standard library only at import; the config is read (as
the pre-receive hook reads it) only for a git command.
"""

from __future__ import annotations

import os
import sys

from opskit.git import serve

TYPE_CHECKING = False  # typing costs ~10 ms to import; a push pays every millisecond of this
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

VERBS = {"git-receive-pack": "receive-pack", "git-upload-pack": "upload-pack"}
# What git and the hooks keep of the session's environment. Everything a client can send with
# SendEnv (and an AcceptEnv lets through) that is not here stays behind.
_KEEP = ("HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG", "LANGUAGE", "TZ", "TERM",
         "SSH_CONNECTION", "SSH_CLIENT")


class Refused(Exception):
    """The command is not one this key may run; the message says why, for the client."""


def parse_command(command: str | None) -> tuple[str, str]:
    """(git subcommand, the path as the client wrote it) for one of the two git commands; else
    raise Refused. Nothing is read from disk: a refused `id` costs no config."""
    import shlex  # start-up: only a command gets here

    if command is None:
        raise Refused("no shell here: this key can only git push and git fetch")
    try:
        words = shlex.split(command)
    except ValueError:
        raise Refused("not a git command (unbalanced quotes)") from None
    if not words or words[0] not in VERBS:
        raise Refused(f"{words[0] if words else 'an empty command'!r} is not allowed: this key can only "
                      "git push and git fetch (git-receive-pack, git-upload-pack)")
    if len(words) != 2:
        raise Refused(f"{words[0]} takes exactly one repository path")
    if not words[1] or "\0" in words[1]:
        raise Refused(f"{words[0]}: no repository path")
    return VERBS[words[0]], words[1]


def decide(command: str | None, repos: Iterable[str], home: str) -> tuple[str, str]:
    """(git subcommand, repository) for an allowed SSH_ORIGINAL_COMMAND; else raise Refused.

    repos are the realpaths of the bare repos this account may push to and fetch from."""
    sub, asked = parse_command(command)
    path = asked
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        raise Refused(f"{asked!r}: only this account's own home (~/) is allowed")
    elif not path.startswith("/"):
        path = os.path.join(home, path)
    allowed = set(repos)
    for candidate in (path, path.rstrip("/") + ".git"):  # git's DWIM: `app` finds app.git
        real = os.path.realpath(candidate)
        if real in allowed:
            return sub, real
    raise Refused(f"{asked!r} is not the repository of a service of this account")


def session_env(env: Mapping[str, str], key: str) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k in _KEEP or k.startswith("LC_")}
    proto = env.get("GIT_PROTOCOL", "")
    # Protocol v2 is asked for this way; keep it only in the form git sends (version=2[:…]).
    if proto and len(proto) < 100 and all(c.isalnum() or c in "=:.,-_" for c in proto):
        out["GIT_PROTOCOL"] = proto
    out["OPSKIT_SSH_KEY"] = key
    return out


def account_repos(config_path: str) -> list[str]:
    """The realpaths of the local bare repos of the configured services this account works for."""
    # start-up: the config is read only for a git command, never for a refused `id`
    from pathlib import Path

    from opskit.base import accounts, config  # start-up: as above

    settings = config.load_file(Path(config_path))
    out = []
    for svc in settings.services.values():
        if svc.pull_mode:
            continue
        pw = accounts.service_account(svc)
        if pw is not None and pw.pw_uid == os.getuid():
            out.append(os.path.realpath(svc.repo))
    return out


def _parse(argv: list[str]) -> tuple[str, str]:
    opts = {"--config": "", "--key": ""}
    i = 0
    while i < len(argv):
        if argv[i] not in opts or i + 1 >= len(argv):
            raise ValueError(f"unexpected argument {argv[i]!r}")
        opts[argv[i]] = argv[i + 1]
        i += 2
    if not opts["--config"] or not opts["--key"]:
        raise ValueError("--config and --key are required (write the line again: opskit keys add)")
    return opts["--config"], opts["--key"]


def _refuse(key: str, command: str | None, reason: str) -> int:
    from opskit.base.text import shown  # start-up: only a refusal escapes text

    sys.stderr.write(f"opskit: refused: {shown(reason)}\n")
    try:
        import syslog  # start-up: only a refusal is logged

        peer = (os.environ.get("SSH_CONNECTION") or "?").split(" ")[0]
        syslog.openlog("opskit-ssh", 0, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_WARNING, shown(f"key {key} from {peer}: refused {command!r}: {reason}")[:900])
    except Exception:  # no syslog (a container): the client has been told
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    try:
        config_path, key = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        sys.stderr.write(f"opskit ssh-shell: {e}\n")
        return 2
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    home = os.environ.get("HOME") or os.path.expanduser("~")
    try:
        parse_command(command)
        try:
            repos = account_repos(config_path)
        except Exception as e:  # fail closed, and say why: a broken config refuses every push anyway
            message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
            raise Refused(f"cannot read the opskit config: {message}") from None
        sub, repo = decide(command, repos, home)
        git = serve.find_git()
        if git is None:
            raise Refused("git is not installed on this host")
    except Refused as e:
        return _refuse(key, command, str(e))
    sys.stdout.flush()
    serve.exec_service(git, sub, repo, session_env(os.environ, key))


if __name__ == "__main__":
    raise SystemExit(main())
