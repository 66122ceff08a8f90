"""The production git layout in a folder, for `opskit demo`, the tests and bench/.

    ROOT/git/NAME.git   the canonical bare repo   (production: /srv/git/NAME.git)
    ROOT/srv/NAME       the deployed worktree     (production: /srv/NAME), origin = the bare repo
    ROOT/dev            a developer's clone       (where merges are made and pushed from)

Every git call goes through opskit.git.repo. `env` is the environment git runs
with (identity, an isolated global config); None means this process's, minus hook variables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from opskit.base import proc
from opskit.git.repo import Git


@dataclass
class Repos:
    root: Path
    bare: Path
    worktree: Path
    dev: Path
    branch: str = "master"
    env: Mapping[str, str] | None = field(default=None, repr=False, compare=False)

    def git(self, where: Path | None = None) -> Git:
        return Git(where or self.dev, env=proc.clean_env(base=self.env) if self.env is not None else None)

    def commit(self, files: Mapping[str, str | bytes | None], message: str = "change",
               repo: Path | None = None) -> str:
        """Write files (None deletes) in the dev clone (or `repo`), commit them; the new sha."""
        where = repo or self.dev
        g = self.git(where)
        for name, content in files.items():
            if content is None:
                g.run("rm", "-q", "--", name)
                continue
            p = where / name
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                p.write_bytes(content)
            else:
                p.write_text(content)
            g.run("add", "--", name)
        g.run("commit", "-q", "-m", message)
        return g.out("rev-parse", "HEAD")

    def tip(self, branch: str | None = None) -> str | None:
        """The branch tip in the canonical repo."""
        return self.git(self.bare).branch_tip(branch or self.branch)


def build(root: Path, name: str = "svc", files: Mapping[str, str] | None = None,
          branch: str = "master", env: Mapping[str, str] | None = None) -> Repos:
    """A bare repo with one commit on `branch` (pushed from the dev clone), and the worktree."""
    root.mkdir(parents=True, exist_ok=True)
    repos = Repos(root=root, bare=root / "git" / f"{name}.git", worktree=root / "srv" / name,
                  dev=root / "dev", branch=branch, env=env)
    top = repos.git(root)
    repos.bare.parent.mkdir(parents=True, exist_ok=True)
    top.run("init", "-q", "--bare", "-b", branch, str(repos.bare))
    top.run("clone", "-q", str(repos.bare), str(repos.dev))
    dev = repos.git(repos.dev)
    # An empty clone's HEAD follows the user's init.defaultBranch; the branch is ours to name.
    dev.run("checkout", "-q", "-b", branch)
    repos.commit(dict(files or {"app.txt": "v1\n"}), "initial")
    dev.run("push", "-q", "origin", branch)
    repos.worktree.parent.mkdir(parents=True, exist_ok=True)
    top.run("clone", "-q", "-b", branch, str(repos.bare), str(repos.worktree))
    return repos
