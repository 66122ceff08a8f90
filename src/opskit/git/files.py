"""Reading a repo's hooks folder and a branch tip without starting git, when that is safe.

drift-scan runs over every worktree every hour; on two cores each git process counts
(bench/drift_scale.py compares it with a bare `git status` loop). For the common layout — a
normal clone or bare repo, loose or packed refs, no core.hooksPath anywhere, no config
includes — these are plain files. Anything else returns None and git is asked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from opskit.base.config import ServiceSettings
from opskit.base.errors import UsageError
from opskit.git.repo import Git


@dataclass(frozen=True)
class RepoInfo:
    """Where git keeps a repo's hooks (core.hooksPath honoured) and a branch tip: one call."""

    common: Path
    hooks: Path
    tip: str | None = None

    @property
    def hooks_overridden(self) -> bool:
        return os.path.normpath(self.hooks) != os.path.normpath(self.common / "hooks")


def repo_info(svc: ServiceSettings, repo: Git, branch: str | None = None) -> RepoInfo | None:
    if not repo.path.is_dir():
        raise UsageError(f"{svc.name}: repo {repo.path} does not exist; fix service.{svc.name}.repo")
    fast = _read_repo_info(repo.path, branch)
    if fast is not None:
        return fast
    args = ["rev-parse", "--git-common-dir", "--git-path", "hooks"]
    if branch is not None:
        args.append(f"refs/heads/{branch}")  # a bare repo has no files to mistake it for
    r = repo.run(*args, check=False)
    lines = r.stdout.splitlines()
    if len(lines) < 2:
        raise UsageError(f"{svc.name}: {repo.path} is not a git repository; "
                         f"fix service.{svc.name}.repo")
    common, hooks_dir = (Path(x) if os.path.isabs(x) else repo.path / x for x in lines[:2])
    tip = lines[2] if r.ok and len(lines) > 2 and len(lines[2]) == 40 else None
    if branch is not None and not r.ok:
        tip = repo.branch_tip(branch)  # rare: tell "no such branch" from other failures
    return RepoInfo(common, hooks_dir, tip)


_CONFIG_ENV = ("GIT_CONFIG_COUNT", "GIT_CONFIG_PARAMETERS", "GIT_DIR", "GIT_COMMON_DIR")


def _config_may_redirect(path: Path) -> bool:
    try:
        text = path.read_bytes().lower()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return b"hookspath" in text or b"[include" in text


def _user_configs() -> list[Path]:
    env = os.environ
    files = []
    if env.get("GIT_CONFIG_GLOBAL"):
        files.append(Path(env["GIT_CONFIG_GLOBAL"]))
    else:
        home = Path(env.get("HOME", "/"))
        files.append(home / ".gitconfig")
        files.append(Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "git" / "config")
    if not env.get("GIT_CONFIG_NOSYSTEM"):
        files.append(Path(env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig"))
    return files


def _read_repo_info(path: Path, branch: str | None) -> RepoInfo | None:
    if any(k in os.environ for k in _CONFIG_ENV):
        return None
    gitdir = path / ".git"
    if not gitdir.exists():
        gitdir = path  # a bare repo
    if not gitdir.is_dir() or not (gitdir / "HEAD").is_file() or (gitdir / "commondir").exists() \
            or (gitdir / "reftable").exists():
        return None
    if any(_config_may_redirect(f) for f in [gitdir / "config", *_user_configs()]):
        return None
    tip = None
    if branch is not None:
        tip = _read_ref(gitdir, f"refs/heads/{branch}")
        if tip is None:
            return None  # packed oddly, symbolic, or missing: let git say which
    return RepoInfo(gitdir.resolve(), (gitdir / "hooks").resolve(), tip)


def _read_ref(gitdir: Path, ref: str) -> str | None:
    try:
        loose = (gitdir / ref).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        loose = ""
    except OSError:
        return None
    if loose:
        return loose if len(loose) == 40 and all(c in "0123456789abcdef" for c in loose) else None
    try:
        with open(gitdir / "packed-refs", encoding="utf-8", errors="replace") as f:
            for line in f:
                sha, _, name = line.rstrip("\n").partition(" ")
                if name == ref and len(sha) == 40:
                    return sha
    except FileNotFoundError:
        pass
    return None
