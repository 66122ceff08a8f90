"""Real git repos for tests: a bare canonical repo, the deployed worktree, a dev clone.

The layout is built by opskit.standins.repos (shared with `opskit demo`); this adds the
subprocess-level helpers tests assert on (CompletedProcess with stdout/stderr).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from opskit.standins.repos import Repos, build


def git(cwd: Path, *args: str, check: bool = True, input: str | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run(["git", *args], cwd=cwd, check=check, text=True, capture_output=True,
                          input=input, env=e, errors="surrogateescape")


def rev(cwd: Path, ref: str = "HEAD") -> str:
    return git(cwd, "rev-parse", ref).stdout.strip()


class Sandbox(Repos):
    """opskit.standins.repos.Repos with the tests' subprocess-level push (its stderr is asserted on)."""

    def push(self, *refspecs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return git(self.dev, "push", "origin", *refspecs, check=check)

    def tip(self, branch: str | None = None) -> str:
        return rev(self.bare, f"refs/heads/{branch or self.branch}")


def make_sandbox(root: Path, name: str = "svc", files: Mapping[str, str] | None = None,
                 branch: str = "master") -> Sandbox:
    """bare repo with one commit on `branch`, the deployed worktree, and a dev clone."""
    r = build(root, name, files, branch)
    return Sandbox(root=r.root, bare=r.bare, worktree=r.worktree, dev=r.dev, branch=r.branch)
