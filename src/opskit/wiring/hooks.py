"""Install, uninstall and inspect opskit's git hooks.

Like pre-commit: the templates are files in the top-level `hooks/` folder; install writes
in the interpreter, the config path and the service (shell-quoted); a marker line names
opskit's own hooks; a hook that was already there is moved aside to `NAME.pre-opskit`,
run first by ours (chained) and put back on uninstall. `core.hooksPath` is detected: by
default install refuses (exit 2, saying how to unset it); `--hooks-path-ok` installs into
the folder it names instead.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import accounts, proc
from opskit.base.atomic import replace_file
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import UsageError
from opskit.base.safety import refuse_as_root
from opskit.git.repo import Git, config_with_origin
from opskit.wiring.templates import TEMPLATES

REPO_HOOKS = ("pre-receive", "post-receive")
WORKTREE_HOOKS = ("pre-commit", "pre-merge-commit")
CHAIN_SUFFIX = ".pre-opskit"  # also in hookmain, which must not import this module
MARKER_RE = re.compile(r"^# opskit-hook: (?P<name>[\w.-]+) v(?P<version>\d+)$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"@(PYTHON|CONFIG|SERVICE|STATE)@")
# No receive.denyNonFastForwards / denyDeletes: they would apply to every ref, and feature
# branches are rebased and deleted all the time. pre-receive protects the deploy branch, and
# drift-scan reports a missing or modified pre-receive hook.


@dataclass
class HookState:
    name: str  # "pre-receive" | "post-receive" | "pre-commit" | "pre-merge-commit"
    where: str  # "repo" | "worktree"
    path: Path
    state: str  # "installed" | "modified" | "missing" | "foreign"
    chained: Path | None = None  # the displaced hook ours runs first, if any


@dataclass
class HookChange:
    name: str
    where: str
    path: Path
    action: str  # installed | updated | unchanged | removed | restored | left | absent
    detail: str = ""


@dataclass
class HooksReport:
    service: str
    changes: list[HookChange] = field(default_factory=list)
    states: list[HookState] = field(default_factory=list)
    hooks_path: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all_installed(self) -> bool:
        # States are read where git looks (core.hooksPath respected), so "installed"
        # everywhere means git runs them, wherever that folder is.
        return bool(self.states) and all(s.state == "installed" for s in self.states)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for item in d["changes"] + d["states"]:
            for k, v in item.items():
                if isinstance(v, Path):
                    item[k] = str(v)
        d["all_installed"] = self.all_installed
        return d


# --- templates ----------------------------------------------------------------------------

def templates_dir() -> Path:
    """The hook templates shipped in the package (the checkout's top-level hooks/, linked in)."""
    return TEMPLATES / "hooks"


def render(name: str, python: str, config_path: str, service: str, state_dir: str = "") -> str:
    refuse_as_root(templates_dir() / name, "hook template")
    try:
        text = (templates_dir() / name).read_text()
    except OSError as e:
        raise UsageError(f"hook template {templates_dir() / name}: {e.strerror}; "
                         "reinstall opskit (./install.sh)") from None
    values = {"PYTHON": python, "CONFIG": config_path, "SERVICE": service, "STATE": state_dir}
    # One pass, so a value that happens to contain "@CONFIG@" is never substituted again.
    return _PLACEHOLDER.sub(lambda m: shlex.quote(values[m.group(1)]), text)


def expected(settings: Settings, service: ServiceSettings, name: str,
             python: str | None = None) -> str:
    return render(name, python or sys.executable, config_path(settings), service.name,
                  os.path.abspath(settings.state_dir))


def config_path(settings: Settings) -> str:
    # abspath, not resolve(): a symlinked /etc/opskit/opskit.toml stays the path the
    # operator chose.
    return os.path.abspath(settings.path) if settings.path else ""


def is_ours(text: str) -> bool:
    return MARKER_RE.search(text) is not None


# --- where the hooks go -------------------------------------------------------------------

@dataclass
class _Target:
    where: str
    git: Git
    names: tuple[str, ...]


def _targets(service: ServiceSettings) -> list[_Target]:
    out = []
    if not service.pull_mode:
        out.append(_Target("repo", Git(service.repo), REPO_HOOKS))
    out.append(_Target("worktree", Git(service.worktree), WORKTREE_HOOKS))
    return out


def hooks_path_override(service: ServiceSettings) -> list[str]:
    """core.hooksPath as seen by the service's repo and worktree: git runs the hooks from
    that folder instead (`/dev/null` switches them off), e.g.
    ["worktree: core.hooksPath=/dev/null (global, file:/root/.gitconfig)"]."""
    found = []
    for t in _targets(service):
        if not t.git.is_repo():
            continue
        hit = config_with_origin(t.git, "core.hooksPath")
        if hit:
            value, scope, origin = hit
            found.append(f"{t.where}: core.hooksPath={value} ({scope}, {origin})")
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: core.hooksPath=/dev/null
        return None
    except IsADirectoryError:
        return ""
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror}); fix the hooks folder's permissions") \
            from None


def _state_of(path: Path, want: str) -> str:
    text = _read(path)
    if text is None:
        return "missing"
    if text == want:
        return "installed"
    return "modified" if is_ours(text) else "foreign"


def hook_states(settings: Settings, service: ServiceSettings) -> list[HookState]:
    """Each of the service's hooks where git will look for it (core.hooksPath respected).

    A repo or worktree that is not a git repository reports its hooks as missing rather
    than raising, so drift-scan can report it beside everything else.
    """
    states = []
    for t in _targets(service):
        if t.git.is_repo():
            folder = t.git.hooks_dir()
        else:
            folder = t.git.path / ("hooks" if t.where == "repo" else ".git/hooks")
        for name in t.names:
            path = folder / name
            chained = path.with_name(name + CHAIN_SUFFIX)
            states.append(HookState(name, t.where, path,
                                    _state_of(path, expected(settings, service, name)),
                                    chained if chained.exists() else None))
    return states


# --- install / uninstall ------------------------------------------------------------------

def install(settings: Settings, service: ServiceSettings, *, hooks_path_ok: bool = False,
            python: str | None = None) -> HooksReport:
    """Install (or refresh) the service's hooks. Checks everything first: on exit 2 nothing
    was changed. Running it twice writes the same files."""
    if settings.path is None:
        raise UsageError("hooks install needs a config file (the hooks load it on every push): "
                         "pass --config PATH or set OPSKIT_CONFIG")
    python = python or sys.executable
    if not python:
        raise UsageError("cannot tell which Python runs opskit (sys.executable is empty); "
                         "run opskit from its venv")
    report = HooksReport(service.name)
    targets = _targets(service)
    plan: list[tuple[_Target, Path]] = []
    overrides = []
    for t in targets:
        t.git.require_repo("repository" if t.where == "repo" else "worktree")
        hit = config_with_origin(t.git, "core.hooksPath")
        if hit and not hooks_path_ok:
            value, scope, origin = hit
            fix = (f"git config --{scope} --unset core.hooksPath" if scope in ("global", "system")
                   else f"git -C {shlex.quote(str(t.git.path))} config --unset core.hooksPath")
            overrides.append(f"{t.where} {t.git.path}: core.hooksPath={value} ({scope}, {origin}) "
                             f"makes git ignore its hooks; unset it ({fix})")
        folder = t.git.hooks_dir()
        if hit and (folder.exists() and not folder.is_dir()):
            raise UsageError(f"{t.where}: core.hooksPath={hit[0]} is not a folder; hooks cannot be "
                             f"installed there; unset it (git config --unset core.hooksPath)")
        plan.append((t, folder))
    if overrides:
        raise UsageError("; ".join(overrides) + "; or pass --hooks-path-ok to install there")
    _check_interpreter(python, [t.git.path for t in targets])
    # Every read and write in a hooks folder is done by the account that can redirect it
    # (_worker_for); the check pass runs before any write, so on exit 2 nothing was changed.
    work = [(t, folder, _worker_for(t.git.path, folder)) for t, folder in plan]
    for t, folder, pw in work:
        _in_folder(pw, t.where, folder, "install", _check_folder, folder, t.names)
    for t, folder, pw in work:
        files = [(name, render(name, python, config_path(settings), service.name,
                               os.path.abspath(settings.state_dir))) for name in t.names]
        done = _in_folder(pw, t.where, folder, "install", _install_folder, t.where, folder, files)
        report.changes.extend(_change(d) for d in done)
    if service.pull_mode:
        report.notes.append(f"pull mode ({service.repo} is remote): only the worktree hooks are "
                            "installed; the canonical repo's own protections apply to pushes")
    # With --hooks-path-ok the hooks went where core.hooksPath points; say so.
    report.hooks_path = hooks_path_override(service)
    report.states = hook_states(settings, service)
    return report


def _check_interpreter(python: str, repos: list[Path]) -> None:
    """The hooks run as the repo's owner: refuse to write an interpreter that account cannot
    start (root's opskit from a venv under /root, e.g.), which would refuse every push."""
    for repo in repos:
        owner = accounts.drop_for(repo)
        if owner is None:
            continue
        # Through sh, as git runs a hook: setpriv execs its program while it still holds root's
        # capabilities, so starting python directly would pass where the real hook fails.
        r = proc.run(["/bin/sh", "-c", 'exec "$0" -I -c "import opskit.hookmain"', python], user=owner,
                     capture=True, timeout=30)
        if not r.ok:
            raise UsageError(f"the hooks of {repo} run as {owner.pw_name}, who cannot start {python} "
                             f"({(r.stderr.strip().splitlines() or [r.describe()])[-1]}); install opskit "
                             "for every account (sudo ./install.sh --system) and use /usr/local/bin/opskit")


def _worker_for(repo: Path, folder: Path) -> pwd.struct_passwd | None:
    """The account that does the file work in folder when we are root: the repo's owner, else
    the owner of any part of folder's path (a link included) that is not root's. That account
    can swap what the path leads to, so root working there itself would write wherever it
    points (hooks/ linked to /etc/cron.hourly: tests/test_hooks_as_root.py). None: root's own."""
    if os.geteuid() != 0:
        return None
    pw = accounts.drop_for(repo)
    if pw is not None:
        return pw
    for p in (folder, *folder.parents):
        try:
            uid = os.lstat(p).st_uid
        except OSError:
            continue
        if uid != 0:
            try:
                return pwd.getpwuid(uid)
            except KeyError:
                raise UsageError(f"{p} belongs to uid {uid}, which has no account; root will not "
                                 "write hooks there (chown it to the repository's account)") from None
    return None


def _in_folder(pw: pwd.struct_passwd | None, where: str, folder: Path, what: str,
               fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) here, or as pw (root never writes in another account's folder, docs/ARCHITECTURE.md
    "Who may do what"); what fails there is exit 2 naming the folder and the account."""
    if pw is None:
        return fn(*args)
    try:
        return accounts.as_account(pw, fn, *args)
    except accounts.AccountError as e:
        raise UsageError(f"hooks {what}: the {where}'s hooks folder {folder}, worked in as {pw.pw_name} "
                         f"(root never writes there itself): {e}; fix the folder and run it again") from None


def _check_folder(folder: Path, names: tuple[str, ...]) -> None:
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        link = f" (a link to {os.readlink(folder)})" if folder.is_symlink() else ""
        raise PermissionError(f"{folder}{link} is not writable by {accounts.me()}")
    for name in names:
        path = folder / name
        text = _read(path)
        chained = path.with_name(name + CHAIN_SUFFIX)
        if text is not None and not is_ours(text) and chained.exists():
            raise UsageError(f"{path} is a hook opskit did not write, and {chained.name} (the "
                             "one opskit chained before) is still there; merge them into "
                             f"{chained.name} by hand, remove {name}, and install again")


def _install_folder(where: str, folder: Path, files: list[tuple[str, str]]) -> list[dict[str, str]]:
    if not folder.exists():
        folder.mkdir(parents=True)
    return [_as_dict(_install_one(where, folder / name, text)) for name, text in files]


def _as_dict(c: HookChange) -> dict[str, str]:
    return {"name": c.name, "where": c.where, "path": str(c.path), "action": c.action, "detail": c.detail}


def _change(d: dict[str, str]) -> HookChange:
    return HookChange(d["name"], d["where"], Path(d["path"]), d["action"], d["detail"])


def _install_one(where: str, path: Path, text: str) -> HookChange:
    current = _read(path)
    if current == text:
        return HookChange(path.name, where, path, "unchanged")
    action, detail = "installed", ""
    if current is not None and is_ours(current):
        action = "updated"
    elif current is not None or path.is_symlink():
        chained = path.with_name(path.name + CHAIN_SUFFIX)
        os.replace(path, chained)
        detail = f"existing hook kept as {chained.name}, run first"
    # Atomic: a push arriving mid-install runs either the old hook or the new one. Written by
    # whoever owns the folder (as_account when root installs), so the hook is theirs.
    replace_file(path, text, mode=0o755)
    return HookChange(path.name, where, path, action, detail)


def uninstall(settings: Settings, service: ServiceSettings) -> HooksReport:
    """Remove opskit's hooks and put back the ones they displaced. Foreign hooks are left
    alone. The receive.* settings stay: they only refuse force pushes and deletions."""
    report = HooksReport(service.name)
    for t in _targets(service):
        if not t.git.is_repo():
            report.notes.append(f"{t.where} {t.git.path} is not a git repository; nothing to remove")
            continue
        folders = []
        for folder in (t.git.hooks_dir(), t.git.common_dir() / "hooks"):
            if folder not in folders:
                folders.append(folder)
        by_folder = [[_change(d) for d in _in_folder(_worker_for(t.git.path, folder), t.where, folder,
                                                     "uninstall", _uninstall_folder, t.where, folder, t.names)]
                     for folder in folders]
        for i in range(len(t.names)):
            for folder, changes in zip(folders, by_folder, strict=True):
                change = changes[i]
                if change.action != "absent" or folder == folders[0]:
                    report.changes.append(change)
    report.states = hook_states(settings, service)
    return report


def _uninstall_folder(where: str, folder: Path, names: tuple[str, ...]) -> list[dict[str, str]]:
    return [_as_dict(_uninstall_one(where, folder / name)) for name in names]


def _uninstall_one(where: str, path: Path) -> HookChange:
    chained = path.with_name(path.name + CHAIN_SUFFIX)
    text = _read(path)
    if text is not None and not is_ours(text):
        detail = f"{chained.name} also present, left as is" if chained.exists() else ""
        return HookChange(path.name, where, path, "left", "not opskit's hook; " + detail
                          if detail else "not opskit's hook")
    if text is not None:
        path.unlink()
    if chained.exists() or chained.is_symlink():
        os.replace(chained, path)
        return HookChange(path.name, where, path, "restored", f"{chained.name} put back")
    return HookChange(path.name, where, path, "removed" if text is not None else "absent")


def status(settings: Settings, service: ServiceSettings) -> HooksReport:
    report = HooksReport(service.name)
    report.states = hook_states(settings, service)
    report.hooks_path = hooks_path_override(service)
    if service.pull_mode:
        report.notes.append(f"pull mode ({service.repo} is remote): only worktree hooks apply")
    return report
