"""`opskit add NAME …`: put a service that already runs from a git checkout under opskit.

Checks everything before changing anything (exit 2, one line, nothing changed), then: the bare
repo (default /srv/git/NAME.git, the service account's) made from the checkout's history, the
worktree's origin pointed at it, a [service.NAME] table added to the config with tomlkit so every
existing line and comment stays byte for byte, the hooks installed, the running HEAD adopted as
deployed (`deploy.adopted` and a deploys row, so `status` shows it and drift-scan is clean until
something really changes), and the line developers add printed. Running it again with the same values changes nothing; other values for
an existing NAME are refused.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import accounts
from opskit.base.atomic import replace_file
from opskit.base.config import check_url, load_file
from opskit.base.errors import UsageError
from opskit.base.text import short
from opskit.git.repo import Git
from opskit.storage.journal import Journal
from opskit.wiring import hooks

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
GIT_ROOT = Path("/srv/git")


@dataclass(frozen=True)
class AddRequest:
    name: str
    worktree: Path
    deploy: str
    health_url: str
    user: str | None = None
    repo: Path | None = None
    branch: str | None = None
    host: str | None = None
    direct_push: bool = False


@dataclass
class AddResult:
    name: str
    config: Path
    user: str
    repo: Path
    branch: str
    remote_line: str
    dry_run: bool
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(not a.startswith("unchanged") for a in self.actions)


@dataclass(frozen=True)
class _Plan:
    table: dict[str, Any]
    user: str
    repo: Path
    branch: str
    wt: Git
    create_repo: bool
    set_origin: str | None  # "add" | "set-url" | None
    write_config: bool
    head: str  # what runs now: adopted as deployed


def _plan(config: Path, req: AddRequest) -> _Plan:
    if not _NAME.match(req.name):
        raise UsageError(f"service name {req.name!r} has characters opskit does not allow; use letters, "
                         "digits, '.', '_' and '-'")
    settings = load_file(config)  # refuses a config another account can write, as root
    worktree = Path(os.path.abspath(req.worktree))
    if not worktree.is_dir():
        raise UsageError(f"--worktree {worktree}: no such folder; give the service's checkout")
    wt = Git(worktree)
    if not wt.is_repo() or wt.is_bare():
        raise UsageError(f"--worktree {worktree}: not a git checkout; clone the service there first "
                         "(git clone …) or give the folder it runs from")
    owner = accounts.owner(worktree)
    if req.user is not None:
        pw = accounts.account(req.user)
        if pw is None:
            raise UsageError(f"--user {req.user}: no such account on this machine; create it "
                             f"(useradd --system --create-home {req.user}) or fix the name")
    else:
        pw = owner
        if pw is None:
            raise UsageError(f"--worktree {worktree}: its owner has no account name; pass --user")
    if owner is not None and owner.pw_uid != pw.pw_uid:
        raise UsageError(f"--worktree {worktree} belongs to {owner.pw_name}, not {pw.pw_name}: the service's "
                         f"account must own its checkout (chown -R {pw.pw_name} {worktree}, or --user "
                         f"{owner.pw_name})")
    if os.geteuid() not in (0, pw.pw_uid):
        raise UsageError(f"opskit add for account {pw.pw_name} needs root or {pw.pw_name}; "
                         f"you are {accounts.me()} (sudo opskit add …)")
    branch = req.branch or wt.current_branch()
    if not branch:
        raise UsageError(f"--worktree {worktree} is on a detached HEAD; check out the deploy branch or "
                         "pass --branch")
    if wt.branch_tip(branch) is None:
        raise UsageError(f"--branch {branch}: no such branch in {worktree}; check the name")
    head = wt.head()
    if head is None:
        raise UsageError(f"--worktree {worktree} has no commit checked out; check out the deploy branch")
    problem = check_url(req.health_url)
    if problem:
        raise UsageError(f"--health-url: {problem}; use http://host:port/path")
    if not req.deploy.strip():
        raise UsageError("--deploy is empty; give the command that (re)starts the service")
    repo = Path(os.path.abspath(req.repo)) if req.repo else GIT_ROOT / f"{req.name}.git"
    table: dict[str, Any] = {"repo": str(repo), "worktree": str(worktree), "branch": branch,
                             "deploy": req.deploy, "user": pw.pw_name, "direct_push": req.direct_push,
                             "health": {"url": req.health_url}}
    write_config = True
    existing = settings.services.get(req.name)
    if existing is not None:
        have = {"repo": existing.repo, "worktree": str(existing.worktree), "branch": existing.branch,
                "deploy": existing.deploy, "user": existing.user or pw.pw_name,
                "direct_push": existing.direct_push, "health": {"url": existing.health.url}}
        diff = [k for k in table if have[k] != table[k]]
        if diff:
            k = diff[0]
            raise UsageError(f"{config}: service {req.name} already exists with other values ({k}: "
                             f"{have[k]!r}, not {table[k]!r}); change it in the config or pick another name")
        write_config = False
    create_repo = not repo.exists()
    if not create_repo:
        bare = Git(repo)
        if not bare.is_repo() or not bare.is_bare():
            raise UsageError(f"--repo {repo} exists and is not a bare git repository; remove it or pick "
                             "another path")
    origin = wt.config_get("remote.origin.url")
    set_origin = None if origin == str(repo) else ("set-url" if origin is not None else "add")
    return _Plan(table, pw.pw_name, repo, branch, wt, create_repo, set_origin, write_config, head)


def add(config: Path, req: AddRequest, *, dry_run: bool = False) -> AddResult:
    plan = _plan(config, req)
    host = req.host or socket.getfqdn()
    result = AddResult(req.name, config, plan.user, plan.repo, plan.branch,
                       f"git remote add production ssh://{plan.user}@{host}{plan.repo}", dry_run)
    pw = accounts.account(plan.user)
    assert pw is not None
    if plan.create_repo:
        result.actions.append(f"create bare repo {plan.repo} (owned by {plan.user}) from {plan.branch}")
        if not dry_run:
            _make_repo_dir(plan.repo, pw)
            Git(plan.repo).run("init", "--quiet", "--bare", f"--initial-branch={plan.branch}")
            plan.wt.run("push", "--quiet", str(plan.repo), f"refs/heads/{plan.branch}:refs/heads/{plan.branch}")
    else:
        result.actions.append(f"unchanged: bare repo {plan.repo}")
    if plan.set_origin:
        result.actions.append(f"point origin of {plan.wt.path} at {plan.repo}")
        if not dry_run:
            plan.wt.run("remote", plan.set_origin, "origin", str(plan.repo))
            plan.wt.run("fetch", "--quiet", "origin")
            plan.wt.run("branch", "--quiet", f"--set-upstream-to=origin/{plan.branch}", plan.branch)
    else:
        result.actions.append("unchanged: origin")
    if plan.write_config:
        result.actions.append(f"add [service.{req.name}] to {config}")
        if not dry_run:
            _write_table(config, req.name, plan.table)
    else:
        result.actions.append(f"unchanged: [service.{req.name}] in {config}")
    if not dry_run:
        settings = load_file(config)
        report = hooks.install(settings, settings.service(req.name))
        done = [c for c in report.changes if c.action != "unchanged"]
        result.actions.append(f"hooks: {', '.join(f'{c.name} {c.action}' for c in done)}" if done
                              else "unchanged: hooks")
    else:
        result.actions.append(f"install hooks for {req.name}")
    _adopt(config, req.name, plan, result, dry_run)
    return result


def _adopt(config: Path, name: str, plan: _Plan, result: AddResult, dry_run: bool) -> None:
    """The commit the service runs now is its deployed commit: without a deploys row the hourly
    drift-scan reports "never-deployed" until the first push, `status` has no verdict, and a
    failed first deploy has no last-good to go back to (tests/test_add_adopt.py). Once: any
    deploys row of the service (an adoption or a real deploy) leaves the journal alone."""
    what = f"HEAD {short(plan.head)} of {plan.wt.path} as deployed on {plan.branch}"
    if dry_run:  # opening the journal creates it and replays what was kept aside: not now
        result.actions.append(f"adopt {what} (unless the journal records a deploy of {name} already)")
        return
    loaded = load_file(config)
    journal = Journal(loaded.state_dir, fleet=loaded.fleet)
    try:
        if journal.deploys(name, limit=1):
            result.actions.append(f"unchanged: deploy record of {name}")
            return
        deploy_id = journal.deploy_start(name, plan.head, previous=None, chain=None, kind="adopt")
        journal.deploy_finish(deploy_id, "healthy", "adopted by opskit add: it ran before opskit (no gate)")
        journal.append("deploy.adopted", name, {"sha": plan.head, "branch": plan.branch,
                                                "worktree": str(plan.wt.path), "deploy_id": deploy_id},
                       sha=plan.head)
    finally:
        journal.close()
    result.actions.append(f"adopt {what}")


def _make_repo_dir(repo: Path, pw: Any) -> None:
    # The folder holding bare repos (/srv/git) is root's; the repo itself is the account's, so
    # that git runs in it as that account and root never does.
    repo.parent.mkdir(parents=True, exist_ok=True)
    repo.mkdir(mode=0o755)
    if os.geteuid() == 0:
        # Through the folder just made, never its name: a link swapped in there would be followed.
        fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
        finally:
            os.close(fd)


def _write_table(config: Path, name: str, table: dict[str, Any]) -> None:
    """Append [service.NAME] (and its health table) to config; every byte before stays."""
    import tomlkit  # start-up: only `opskit add` edits the config

    original = config.read_text(encoding="utf-8")
    doc = tomlkit.parse(original)
    services = doc.get("service")
    if services is None:
        services = tomlkit.table(is_super_table=True)
        doc.add("service", services)
    t = tomlkit.table()
    for k, v in table.items():
        if k != "health" and not (k == "direct_push" and not v):  # false is the default: unwritten
            t.add(k, v)
    health = tomlkit.table()
    health.add("url", table["health"]["url"])
    t.add("health", health)
    services.add(name, t)
    text = tomlkit.dumps(doc)
    st = os.stat(config)
    replace_file(config, text, mode=st.st_mode & 0o7777,
                 owner=(st.st_uid, st.st_gid) if os.geteuid() == 0 else None)
