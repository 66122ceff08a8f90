"""Real git repos for tests: a bare canonical repo, the deployed worktree, a dev clone.

Mirrors the production layout (ARCHITECTURE §1): /srv/git/<svc>.git and /srv/<svc>.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def git(cwd: Path, *args: str, check: bool = True, input: str | None = None,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run(["git", *args], cwd=cwd, check=check, text=True, capture_output=True,
                          input=input, env=e, errors="surrogateescape")


def rev(cwd: Path, ref: str = "HEAD") -> str:
    return git(cwd, "rev-parse", ref).stdout.strip()


@dataclass
class Sandbox:
    root: Path
    bare: Path
    worktree: Path
    dev: Path
    branch: str = "master"

    def commit(self, files: Mapping[str, str | bytes | None], message: str = "change",
               repo: Path | None = None) -> str:
        """Write files (None deletes) in the dev clone (or `repo`) and commit them."""
        where = repo or self.dev
        for name, content in files.items():
            p = where / name
            if content is None:
                git(where, "rm", "-q", "--", name)
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            git(where, "add", "--", name)
        git(where, "commit", "-q", "-m", message)
        return rev(where)

    def push(self, *refspecs: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return git(self.dev, "push", "origin", *refspecs, check=check)

    def tip(self, branch: str | None = None) -> str:
        return rev(self.bare, f"refs/heads/{branch or self.branch}")


def make_sandbox(root: Path, name: str = "svc", files: Mapping[str, str] | None = None,
                 branch: str = "master") -> Sandbox:
    """bare repo with one commit on `branch`, the deployed worktree, and a dev clone."""
    root.mkdir(parents=True, exist_ok=True)
    bare = root / "git" / f"{name}.git"
    bare.parent.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--bare", "-b", branch, str(bare))
    dev = root / "dev"
    git(root, "clone", "-q", str(bare), str(dev))
    git(dev, "checkout", "-q", "-b", branch)
    sb = Sandbox(root=root, bare=bare, worktree=root / "srv" / name, dev=dev, branch=branch)
    sb.commit(dict(files or {"app.txt": "v1\n"}), "initial")
    git(dev, "push", "-q", "origin", branch)
    sb.worktree.parent.mkdir(parents=True, exist_ok=True)
    git(root, "clone", "-q", "-b", branch, str(bare), str(sb.worktree))
    return sb
