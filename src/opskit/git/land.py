"""The canonical repo: where a service's branch really is, and the one way a commit lands on it.

Push mode: the bare repo on this host, moved by `update-ref NEW OLD` (a compare-and-swap: if
someone pushed meanwhile it fails rather than overwrite their work; no hook runs, so no
second pipeline). Pull mode: the remote, moved by a push that is never forced.
"""

from __future__ import annotations

from opskit.base.config import ServiceSettings
from opskit.base.errors import OpsError
from opskit.base.text import printable, short
from opskit.git.repo import Git
from opskit.git.worktree import FETCH_TIMEOUT, fetch_worktree


def canonical_tip(svc: ServiceSettings, *, timeout: float = FETCH_TIMEOUT) -> str | None:
    """The branch tip, asked of the canonical repo itself (None: no such branch)."""
    if svc.pull_mode:
        return Git(svc.worktree).ls_remote(svc.repo, svc.branch, timeout=timeout)
    bare = Git(svc.repo)
    bare.require_repo("repository (service repo)")
    return bare.branch_tip(svc.branch)


def canonical(svc: ServiceSettings) -> Git:
    """Where commits for the branch are made: the bare repo (push mode) or the worktree's
    repo with the remote fetched (pull mode)."""
    if svc.pull_mode:
        return fetch_worktree(svc)
    bare = Git(svc.repo)
    bare.require_repo("repository (service repo)")
    return bare


def local_tip(svc: ServiceSettings, canon: Git) -> str | None:
    """canonical_tip, with the commit present in `canon` (pull mode fetches it when missing)."""
    tip = canonical_tip(svc)
    if svc.pull_mode and tip is not None and canon.rev_parse(tip) is None:
        canon.fetch(svc.repo, f"+refs/heads/{svc.branch}:refs/remotes/origin/{svc.branch}")
    return tip


def land_commit(svc: ServiceSettings, canon: Git, new: str, tip: str, *, what: str = "revert") -> None:
    """Move `branch` from tip to new in the canonical repo and check it there. The auto-revert
    and the feature-branch chain's merge both land through here."""
    ref = f"refs/heads/{svc.branch}"
    if svc.pull_mode:
        r = canon.push(svc.repo, f"{new}:{ref}")  # never forced: a moved remote refuses it
        if not r.ok:
            raise OpsError(f"push of the {what} to {svc.repo} refused: "
                           f"{printable((r.stderr.strip().splitlines() or ['?'])[-1])}")
        landed = canon.ls_remote(svc.repo, svc.branch)
    else:
        canon.update_ref(ref, new, old=tip, message=f"opskit {what} onto {short(tip)}")
        landed = canon.branch_tip(svc.branch)
    if landed != new:
        raise OpsError(f"the {what} {short(new)} did not land: {svc.branch} is at {short(landed)}")
