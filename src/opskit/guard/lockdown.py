"""Production lockdown: what the pre-receive and the worktree commit hooks allow.

The policies are pure functions over plain values (`check_ref_update`, `check_commit`),
so they are tested without git; the drivers below them do the journaling and talking.

Fast path: a `git commit` in the deployed worktree is refused by importing this module and
nothing else of opskit. So the module level imports
the standard library's `os` only; config, journal, git and fnmatch are imported inside the
functions that need them, and `Decision` is a plain class (dataclasses pulls in inspect).
"""

from __future__ import annotations

import os

# Not `from typing import TYPE_CHECKING`: importing typing alone costs ~10 ms here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, Protocol

    from opskit.base.config import ServiceSettings, Settings
    from opskit.storage.journal import Journal

    class RefFacts(Protocol):
        """What check_ref_update needs to know about the repository; asked lazily, so a
        deletion or a feature-branch push never pays for an ancestry walk. (Typing only:
        the fast path does not import typing's Protocol machinery.)"""

        def is_ancestor(self, old: str, new: str) -> bool: ...

        def tree(self, sha: str) -> str | None: ...

        def frozen(self) -> Mapping[str, Any] | None: ...

        def quarantined(self, tree: str) -> Mapping[str, Any] | None: ...

ZERO = "0" * 40  # same as gitrepo.ZERO; not imported from there to keep the fast path light
BREAK_GLASS_ENV = "OPSKIT_BREAK_GLASS"


class Decision:
    """The verdict on one ref update or one commit: allowed or not, by which rule, and the
    one or two lines the pusher/committer reads."""

    __slots__ = ("allowed", "rule", "reason", "lines")

    def __init__(self, allowed: bool, rule: str, reason: str = "",
                 lines: tuple[str, ...] = ()) -> None:
        self.allowed = allowed
        self.rule = rule
        self.reason = reason
        self.lines = lines

    def __repr__(self) -> str:
        return f"Decision(allowed={self.allowed}, rule={self.rule!r}, reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and (self.allowed, self.rule, self.reason) == (
            other.allowed, other.rule, other.reason)

    __hash__ = None  # type: ignore[assignment]


# --- pre-receive --------------------------------------------------------------------------

def feature_example(service: ServiceSettings) -> str | None:
    """A branch name the pusher can use instead, from the first feature_branches pattern."""
    for pat in service.feature_branches:
        return pat.replace("**", "*").replace("*", "my-change").replace("?", "x")
    return None


def check_ref_update(service: ServiceSettings, ref: str, old: str, new: str,
                     facts: RefFacts) -> Decision:
    """May this push move `ref` from `old` to `new`?

    The deploy branch: no deletion, no non-fast-forward, nothing while frozen, and only
    with direct_push. A feature branch: nothing while frozen (its chain would merge and
    deploy), deletion always. Any ref: a new tip whose tree was auto-reverted is quarantined.
    Feature branches and other refs (tags, personal branches) are otherwise accepted:
    nothing deploys from them except through the pipeline's chain, which starts in
    post-receive and merges into the deploy branch with `update-ref`, never through a push.
    """
    label = show(ref)
    if ref == f"refs/heads/{service.branch}":
        if new == ZERO:
            return _refuse("delete", f"deleting the deploy branch {service.branch!r} is not allowed",
                           f"opskit: refused: {label} is the deploy branch of {service.name!r}; "
                           "it cannot be deleted.")
        if old != ZERO and not facts.is_ancestor(old, new):
            return _refuse("non-fast-forward",
                           f"{old[:12]} is not an ancestor of {new[:12]} (force push)",
                           f"opskit: refused: non-fast-forward update of {label} ({old[:12]} → "
                           f"{new[:12]}).",
                           "  History is never rewritten here: revert the commit instead of "
                           "force-pushing.")
        frozen = facts.frozen()
        if frozen is not None:
            return _frozen_refusal(service, frozen)
        if not service.direct_push:
            example = feature_example(service)
            hint = (f"  Push a feature branch instead (it is tested, merged and deployed): "
                    f"git push <remote> HEAD:{example}" if example else
                    "  Direct pushes are off and no feature_branches are configured; ask an operator.")
            return _refuse("direct-push", f"direct pushes to {service.branch!r} are off",
                           f"opskit: refused: direct pushes to {label} are off for "
                           f"{service.name!r} (direct_push = false).", hint)
    feature = service.is_feature_branch(ref)
    if feature and new != ZERO:
        # Every feature chain ends in a merge and a deploy, which the freeze refuses: say so
        # now, before its tests run, rather than at the deploy, where nothing resumes after
        # `opskit unfreeze` (tests/test_lockdown.py). A deletion deploys nothing: allowed.
        frozen = facts.frozen()
        if frozen is not None:
            return _frozen_refusal(service, frozen, label)
    if new != ZERO:
        tree = facts.tree(new)
        q = facts.quarantined(tree) if tree else None
        if tree and q is not None:
            eid = q.get("event_id")
            why = str(q.get("reason") or "its deploy failed")
            return _refuse("quarantine",
                           f"tree {tree} was auto-reverted (event {eid}): {why}",
                           f"opskit: refused: {new[:12]} on {label} has the tree of a commit that "
                           f"was auto-reverted (rollback event #{eid}: {why}).",
                           f"  Once it is really fixed: opskit quarantine release {service.name} {tree}")
    return Decision(True, "feature-branch" if feature else "accept")


def _frozen_refusal(service: ServiceSettings, frozen: Mapping[str, Any],
                    feature_ref: str | None = None) -> Decision:
    """The one refusal of a frozen service: a push to its deploy branch, or (`feature_ref`) a
    feature branch whose chain would merge and deploy. The feature refusal also names who
    froze it and that the branch was not taken, since its pusher expected a test run."""
    why = str(frozen.get("reason") or "a rollback failed")
    eid = frozen.get("event_id")
    since = frozen.get("since")
    by = frozen_by(frozen) if feature_ref is not None else None
    head = (f"opskit: refused: service {service.name!r} is frozen"
            + (f" since {since}" if since else "") + (f" by {by}" if by else "")
            + (f" (event #{eid})" if eid is not None else "") + f": {why}")
    if feature_ref is None:
        return _refuse("frozen", f"service is frozen: {why}", head,
                       f"  A human must fix it first, then: opskit unfreeze {service.name}")
    return _refuse("frozen", f"service is frozen: {why}", head,
                   f"  {feature_ref} would be tested, merged and deployed, so it was not taken "
                   f"(nothing tested, nothing merged). A human must fix it first, then: "
                   f"opskit unfreeze {service.name} — and push it again.")


def frozen_by(frozen: Mapping[str, Any]) -> str | None:
    """Who froze the service, from its freeze (deploy/freeze.py): a hand freeze's reason
    already starts with "frozen by NAME"; one with a rollback event was opskit's own, after
    the automatic rollback failed; an entry with neither (damaged) names no one."""
    if str(frozen.get("reason") or "").startswith("frozen by "):
        return None  # the reason says it
    if frozen.get("event_id") is not None:
        return "opskit after its automatic rollback failed"
    return None


def _refuse(rule: str, reason: str, *lines: str) -> Decision:
    return Decision(False, rule, reason, tuple(lines))


def show(text: str) -> str:
    """A ref name as printable text: git allows non-UTF-8 bytes in ref names, which we carry
    as surrogate escapes (so git gets the exact bytes back) but never print or journal raw."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class GitFacts:
    """RefFacts from the bare repo inside pre-receive and from the journal."""

    def __init__(self, git: Any, journal: Journal, service: str) -> None:
        self.git = git
        self.journal = journal
        self.service = service
        self._frozen: tuple[Mapping[str, Any] | None] | None = None

    def is_ancestor(self, old: str, new: str) -> bool:
        from opskit.base.errors import GitError

        try:
            return bool(self.git.is_ancestor(old, new))
        except GitError:
            return False  # an old tip git cannot walk from is not provably an ancestor

    def tree(self, sha: str) -> str | None:
        from opskit.base.errors import GitError

        try:
            return str(self.git.tree(sha))
        except GitError:
            return None  # a ref to a blob or tree object has no commit tree to quarantine

    def frozen(self) -> Mapping[str, Any] | None:
        if self._frozen is None:
            self._frozen = (self.journal.frozen(self.service),)
        return self._frozen[0]

    def quarantined(self, tree: str) -> Mapping[str, Any] | None:
        row = self.journal.quarantined(self.service, tree)
        return dict(row) if row is not None else None


def pre_receive(service: ServiceSettings, updates: list[tuple[str, str, str]], facts: RefFacts,
                journal: Journal, write: Callable[[str], None]) -> int:
    """Check every ref of the push; any refusal refuses the whole push (git's rule for
    pre-receive). Each refused ref leaves a lockdown.blocked event. Returns the exit code."""
    refused = 0
    for old, new, ref in updates:
        d = check_ref_update(service, ref, old, new, facts)
        if d.allowed:
            continue
        refused += 1
        for line in d.lines:
            write(line)
        journal.append("lockdown.blocked", service.name,
                       {"ref": show(ref), "old": old, "new": new, "rule": d.rule,
                        "reason": show(d.reason), "hook": "pre-receive"},
                       sha=None if new == ZERO else new)
    return 1 if refused else 0


# --- worktree: pre-commit / pre-merge-commit ---------------------------------------------

def check_commit(hook: str, service: str, environ: Mapping[str, str]) -> Decision:
    """Every commit in the deployed worktree is refused, on any branch and on a detached HEAD
    (pre-commit's no-commit-to-branch lets detached HEAD through; a commit there is just as
    much a bypass). Only OPSKIT_BREAK_GLASS="reason" lets one through."""
    reason = environ.get(BREAK_GLASS_ENV, "").strip()
    if reason:
        return Decision(True, "break-glass", reason)
    what = "merge commits" if hook == "pre-merge-commit" else "commits"
    lines: tuple[str, ...] = (
        f"opskit: refused: {what} are not allowed in the deployed worktree of {service!r}.",
        "  Ship through the pipeline: commit in your own clone and push a feature branch to the "
        "canonical repo (e.g. git push origin HEAD:feature/my-change).",
        f"  Emergency only: {BREAK_GLASS_ENV}=\"why\" git commit …  (journaled and notified)",
    )
    if BREAK_GLASS_ENV in environ:
        lines += (f"  {BREAK_GLASS_ENV} is set but empty: give the reason.",)
    return Decision(False, "worktree-commit", f"{what} in the deployed worktree", lines)


def record_blocked_commit(config_path: str, service: str, hook: str, cwd: str,
                          ref: str | None) -> None:
    """Journal a refused worktree commit. Runs in a forked child after the refusal was
    printed, so the committer does not wait for config + sqlite (~60 ms here)."""
    from opskit.base import config as cfg
    from opskit.storage.journal import Journal

    settings = cfg.load_file(_path(config_path))
    Journal(settings.state_dir, fleet=settings.fleet).append(
        "lockdown.blocked", service,
        {"ref": ref, "old": None, "new": None, "rule": "worktree-commit",
         "reason": f"{hook}: commit in the deployed worktree", "hook": hook, "worktree": cwd})


def break_glass(config_path: str, service: str, hook: str, reason: str, cwd: str,
                write: Callable[[str], None]) -> None:
    """Journal and announce a break-glass commit. Failures are reported, never fatal: the
    person breaking the glass is fixing an emergency (the commit itself stays visible to
    drift-scan as a bypass until it ships through the pipeline)."""

    from opskit.base import config as cfg
    from opskit.base.actor import who
    from opskit.storage.journal import Journal

    user = who()
    settings = cfg.load_file(_path(config_path))
    journal = Journal(settings.state_dir, fleet=settings.fleet)
    ref = current_ref(cwd)
    ev = journal.append("lockdown.breakglass", service,
                        {"reason": reason, "user": user, "hook": hook, "ref": ref, "worktree": cwd})
    write(f"opskit: BREAK GLASS by {user} in {service!r}: {reason} (event #{ev.id}). "
          "Ship the fix through a feature branch afterwards; drift-scan reports this commit.")
    # Only on the break-glass path: the hook's usual paths never load the notifier.
    from opskit.notify.announce import announce

    # A short retry budget: the committer is waiting, and what is not delivered now stays in
    # the outbox for `opskit notify --flush`.
    announce(settings, journal, f"Break glass in the deployed worktree of {service} by {user}: "
             f"{reason} (event #{ev.id}). The commit bypasses the pipeline.",
             title=f"{service}: lockdown break glass", level="warning", service=service, event_id=ev.id,
             retry_for=3.0, warn=lambda line: write(f"opskit: warning: the break-glass {line}"))


def current_ref(cwd: str) -> str | None:
    """The branch being committed on, read from the HEAD file (no git process: this runs on
    the refusal path, before the journaling child is forked, since the HEAD may move by the
    time the child runs)."""
    git_dir = os.path.join(cwd, ".git")
    try:
        if os.path.isfile(git_dir):  # linked worktree or submodule: "gitdir: PATH"
            with open(git_dir, "rb") as f:
                target = f.read().strip().split(b":", 1)[1].strip().decode("utf-8", "surrogateescape")
            git_dir = os.path.join(cwd, target)
        with open(os.path.join(git_dir, "HEAD"), "rb") as f:
            head = f.read().strip()
    except (OSError, IndexError):
        return None
    if head.startswith(b"ref: "):
        return show(head[5:].decode("utf-8", "surrogateescape"))
    return "HEAD (detached)"


def _path(p: str) -> Any:
    from pathlib import Path

    return Path(p)


# --- quarantine release -------------------------------------------------------------------

def release_quarantine(settings: Settings, journal: Journal, service: ServiceSettings,
                       ident: str, by: str) -> list[dict[str, Any]]:
    """Release the quarantined tree(s) named by a tree or reverted-commit prefix, or by any
    commit of the canonical repo whose tree is quarantined. Returns the released rows."""
    import re

    from opskit.base import roles  # start-up: the hooks' fast path never releases
    from opskit.base.errors import UsageError

    roles.refuse_push_account("quarantine release", settings.state_dir, settings.services.values(), service.name)
    ident = ident.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,64}", ident):
        raise UsageError(f"{ident!r} is not a tree or commit id; give at least 4 hex digits "
                         f"(see `opskit quarantine list {service.name}`)")
    rows = [dict(r) for r in journal.quarantine_list(service.name)]
    hits = [r for r in rows if r["tree"].startswith(ident) or r["sha"].startswith(ident)]
    if not hits and not service.pull_mode:
        from opskit.base.errors import GitError
        from opskit.git.repo import Git

        try:
            tree: str | None = Git(service.repo).tree(ident)
        except GitError:
            tree = None
        hits = [r for r in rows if r["tree"] == tree]
    trees = {r["tree"] for r in hits}
    if len(trees) > 1:
        raise UsageError(f"{ident!r} matches {len(trees)} quarantined trees; give more digits")
    if not hits:
        return []
    tree = hits[0]["tree"]
    journal.quarantine_release(service.name, tree, by)
    journal.append("quarantine.released", service.name,
                   {"tree": tree, "reverted": hits[0]["sha"], "rollback_event": hits[0]["event_id"],
                    "by": by})
    return hits
