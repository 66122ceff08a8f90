"""Where services live, checked together: a config that would deploy the wrong code is refused.

Each check alone passes for every service in isolation; only side by side do they show
that two services would share one worktree (`deploy b` puts b's commit into a's checkout and
reports healthy), one bare repo (its hooks can serve only one service), or that a worktree
is the bare repo itself or a bare repository (every deploy fails after `hooks install`
passed), or sits inside another service's worktree (one checkout overwrites the other's files).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from opskit.base.errors import ConfigError


class _Placed(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def repo(self) -> str: ...
    @property
    def worktree(self) -> Path: ...
    @property
    def pull_mode(self) -> bool: ...


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir() \
        and not (path / ".git").exists()


def check(services: Iterable[_Placed], fail: Callable[[str, str, str], ConfigError]) -> None:
    """Raise fail(key, problem, fix) for the first placement that cannot be right."""
    seen_wt: dict[Path, str] = {}
    seen_repo: dict[Path, str] = {}
    placed = list(services)
    real: dict[str, Path] = {}
    for svc in placed:
        wt = real[svc.name] = _real(svc.worktree)
        key = f"service.{svc.name}.worktree"
        repo = None if svc.pull_mode else _real(svc.repo)
        if repo is not None and wt == repo:
            raise fail(key, f"is the bare repo itself ({svc.repo})",
                       f"point worktree at the deployed checkout (e.g. /srv/{svc.name}), not at repo")
        if _is_bare(wt):
            raise fail(key, f"{svc.worktree} is a bare repository, not a checkout",
                       "point worktree at the deployed checkout (a clone with a work tree)")
        if wt in seen_wt:
            raise fail(key, f"is the same directory as service.{seen_wt[wt]}.worktree ({svc.worktree})",
                       "give each service its own worktree: one service's deploy would put its code into the other's")
        seen_wt[wt] = svc.name
        if repo is not None:
            if repo in seen_repo:
                raise fail(f"service.{svc.name}.repo",
                           f"is the same bare repo as service.{seen_repo[repo]}.repo ({svc.repo})",
                           "give each service its own bare repo: its hooks serve one service")
            seen_repo[repo] = svc.name
    # Inside another's worktree: look each worktree's parents up (a config of 300 services is
    # read by every command and hook, so not every pair).
    by_name = {svc.name: svc for svc in placed}
    for svc in placed:
        for parent in real[svc.name].parents:
            owner = seen_wt.get(parent)
            if owner is not None:
                other = by_name[owner]
                raise fail(f"service.{svc.name}.worktree",
                           f"{svc.worktree} is inside service.{other.name}.worktree ({other.worktree})",
                           "move it out: a deploy of one would overwrite or wipe the other's files")
