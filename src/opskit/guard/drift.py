"""drift-scan: find production state the pipeline did not put there.

The seed incident: a manual fix on production broke trust in the pipeline. Per service
worktree we report, file by file where it applies: dirty files, HEAD against the canonical
branch tip, commits the pipeline never delivered (a `--no-verify` commit), and opskit's
hooks missing, modified or switched off. Nothing is changed without `heal=True`, and a heal
saves every byte of the drifted state to refs/opskit/drift/<stamp> before restoring.

Cost: one `git status --porcelain=v2 --branch -z` per worktree gives HEAD, branch and files;
every other git call happens only when that already found something (bench/drift_scale.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import pwd
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base import accounts, proc
from opskit.base.clock import SYSTEM, Clock, iso, parse_iso
from opskit.base.errors import GitError, LockBusy, OpsError, UsageError
from opskit.base.ignore import ignored
from opskit.base.lock import ServiceLock
from opskit.base.proc import pid_alive
from opskit.base.text import short
from opskit.git import repo as gitrepo
from opskit.git.files import RepoInfo, repo_info
from opskit.git.land import canonical_tip
from opskit.git.repo import Git, StatusEntry
from opskit.git.worktree import free_ref, save_dirty
from opskit.wiring import hooks

if TYPE_CHECKING:
    from opskit.base.config import ServiceSettings, Settings
    from opskit.storage.journal import Journal

KV_SCOPE = "drift"
REF_PREFIX = "refs/opskit/drift/"
FILE_KINDS = ("modified", "staged", "deleted", "untracked", "conflict")
HEAD_KINDS = ("ahead", "behind", "diverged", "detached", "wrong-branch", "bypass", "never-deployed")
# What a checkout of the last deployed commit puts right; hooks need `opskit hooks install`.
HEALABLE = set(FILE_KINDS) | {"ahead", "diverged", "detached", "wrong-branch", "bypass"}
MAX_EVENT_FINDINGS = 200
REMOTE_TIMEOUT = 30.0
# A heal takes the service's deploy lock; a deploy can hold it for minutes, and the next
# scheduled scan heals then, so a heal does not queue behind one for long.
HEAL_LOCK_WAIT = 5.0


@dataclass(frozen=True)
class Finding:
    kind: str
    path: str | None = None
    detail: str = ""

    def key(self) -> str:
        return f"{self.kind}\0{self.path or ''}\0{self.detail}"

    def describe(self) -> str:
        return " ".join(p for p in (self.path, self.detail) if p)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.path is not None:
            d["path"] = self.path
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class ServiceDrift:
    service: str
    worktree: str
    branch: str
    head: str | None = None
    on_branch: str | None = None
    canonical: str | None = None
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # bad input for this service: exit 2
    skipped: str | None = None
    healed: dict[str, Any] | None = None
    heal_error: str | None = None
    change: str | None = None  # detected | reminder | cleared: what was journaled/notified
    repo_info: RepoInfo | None = field(default=None, repr=False)
    # every dirty path git reported, drift_ignore'd ones included (heal saves and checks all)
    entries: list[StatusEntry] = field(default_factory=list, repr=False)

    @property
    def drift(self) -> bool:
        return bool(self.findings) or self.heal_error is not None

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(sorted(f.key() for f in self.findings)).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service, "worktree": self.worktree, "branch": self.branch,
            "head": self.head, "on_branch": self.on_branch, "canonical": self.canonical,
            "drift": self.drift, "findings": [f.to_dict() for f in self.findings],
            "notes": self.notes, "error": self.error, "skipped": self.skipped,
            "healed": self.healed, "heal_error": self.heal_error, "change": self.change,
        }


@dataclass
class ScanReport:
    services: list[ServiceDrift]

    @property
    def exit_code(self) -> int:
        if any(s.error for s in self.services):
            return 2
        return 1 if any(s.drift for s in self.services) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "services": [s.to_dict() for s in self.services]}


# --- what the journal knows -----------------------------------------------------------------

@dataclass
class Deploys:
    """All deploy rows, read once for every service (no per-worktree queries)."""

    shas: dict[str, list[str]]  # service -> deployed shas, newest first, distinct
    running: dict[str, list[Any]]

    @classmethod
    def load(cls, journal: Journal) -> Deploys:
        shas = journal.deployed_shas()
        running: dict[str, list[Any]] = {}
        for row in journal.running_deploys():
            running.setdefault(row["service"], []).append(row)
        return cls(shas, running)

    def live_runner(self, service: str) -> Any | None:
        for row in self.running.get(service, []):
            if row["pid"] and _alive(int(row["pid"])):
                return row
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own stale row cannot be running a deploy concurrently
    return pid_alive(pid)


# --- scanning one service -------------------------------------------------------------------

def scan_service(settings: Settings, svc: ServiceSettings, deploys: Deploys) -> ServiceDrift:
    """Read-only: never changes a file."""
    rep = ServiceDrift(svc.name, str(svc.worktree), svc.branch)
    try:
        _scan(settings, svc, deploys, rep)
    except UsageError as e:
        rep.error = e.message
    except OpsError as e:  # git failed on something that should be a repository
        rep.error = f"{svc.name}: {e.message}"
    return rep


def _scan(settings: Settings, svc: ServiceSettings, deploys: Deploys, rep: ServiceDrift) -> None:
    runner = deploys.live_runner(svc.name)
    if runner is not None:
        # The pipeline is moving the worktree right now; what we would see is its work.
        rep.skipped = f"deploy #{runner['id']} of {short(runner['sha'])} is running (pid {runner['pid']})"
        return
    wt_path = Path(svc.worktree)
    # `.git` at the top, not `rev-parse`: a folder inside some other checkout is not a worktree.
    if not (wt_path / ".git").exists():
        raise UsageError(f"{svc.name}: worktree {wt_path} is not a git checkout; "
                         f"fix service.{svc.name}.worktree or clone {svc.repo} there")
    wt = Git(wt_path)
    st = gitrepo.status_v2(wt)
    rep.head, rep.on_branch, rep.entries = st.head, st.branch, list(st.entries)

    for e in st.entries:
        if not ignored(e.path, svc.drift_ignore):
            rep.findings.append(Finding(e.kind, e.path))

    if st.head is None:
        rep.notes.append("the worktree has no commit yet")
    else:
        _check_head(svc, wt, st.head, st.branch, deploys, rep)
    _check_hooks(settings, svc, rep)


def _check_head(svc: ServiceSettings, wt: Git, head: str, branch: str | None,
                deploys: Deploys, rep: ServiceDrift) -> None:
    if branch is None:
        rep.findings.append(Finding("detached", None, f"HEAD {short(head)} is detached, not on {svc.branch}"))
    elif branch != svc.branch:
        rep.findings.append(Finding("wrong-branch", None, f"HEAD is on {branch}, not {svc.branch}"))

    tip = _canonical_tip(svc, wt, rep)
    rep.canonical = tip
    if tip is not None and tip != head:
        rep.findings.append(_relation(svc, wt, head, tip))

    known = deploys.shas.get(svc.name, [])
    if not known:
        # One finding, not one per commit: before opskit's first deploy every commit is
        # "undelivered", and that says nothing about tampering.
        rep.findings.append(Finding("never-deployed", None,
                                    f"no opskit deploy of {svc.name} in the journal; HEAD is "
                                    f"{short(head)} (deploy it with `opskit deploy {svc.name}`)"))
    elif head not in known:
        commits = gitrepo.commits_not_in(wt, head, known[:50])
        if not commits:  # an older, never-deployed commit checked out by hand
            commits = [(head, wt.subject(head))]
        for sha, subject in commits:
            rep.findings.append(Finding("bypass", None, f"{sha[:12]} {subject}".strip()))


def _canonical_tip(svc: ServiceSettings, wt: Git, rep: ServiceDrift) -> str | None:
    if svc.pull_mode:
        try:
            tip = canonical_tip(svc, timeout=REMOTE_TIMEOUT)
        except GitError as e:
            # A network blip is not drift of this host; say it, do not page for it.
            rep.notes.append(f"canonical repo not readable: {e.message}")
            return None
    else:
        info = repo_info(svc, Git(svc.repo), svc.branch)
        rep.repo_info = info
        tip = info.tip if info is not None else None
    if tip is None:
        rep.notes.append(f"the canonical repo has no branch {svc.branch}")
    return tip


def _relation(svc: ServiceSettings, wt: Git, head: str, tip: str) -> Finding:
    counts = gitrepo.ahead_behind(wt, head, tip)
    if counts is None and not svc.pull_mode:
        counts = gitrepo.ahead_behind(Git(svc.repo), head, tip)
    if counts is None:
        # Neither side has both commits: each has something the other lacks.
        where = "the canonical repo lacks HEAD" if not svc.pull_mode else "its tip is not fetched here"
        return Finding("diverged", None, f"HEAD {short(head)} vs {svc.branch} {short(tip)}: {where}")
    ahead, behind = counts
    kind = "diverged" if ahead and behind else "ahead" if ahead else "behind"
    return Finding(kind, None, f"HEAD {short(head)} is {ahead} ahead, {behind} behind "
                               f"canonical {svc.branch} {short(tip)}")


def _check_hooks(settings: Settings, svc: ServiceSettings, rep: ServiceDrift) -> None:
    try:
        states: Sequence[_HookState | hooks.HookState]
        fast = _fast_hook_states(settings, svc, rep)
        if fast is not None:
            states, override = fast, []
        else:
            states = hooks.hook_states(settings, svc)
            override = hooks.hooks_path_override(svc)
    except PermissionError as e:
        raise UsageError(f"{svc.name}: hooks folder unreadable ({e.strerror}); fix its permissions") from None
    if states and all(h.state == "missing" for h in states):
        # Production must be locked: a service without opskit's hooks is drift.
        rep.findings.append(Finding("hooks-not-installed", None,
                                    f"no opskit hooks; run `opskit hooks install {svc.name}`"))
    else:
        for h in states:
            if h.state != "installed":
                rep.findings.append(Finding(f"hook-{h.state}", str(h.path), f"{h.where} {h.name}"))
    for o in override:
        rep.findings.append(Finding("hooks-path", None, f"{o}: git does not run opskit's hooks"))


@dataclass(frozen=True)
class _HookState:
    name: str
    where: str
    path: Path
    state: str


def _fast_hook_states(settings: Settings, svc: ServiceSettings,
                      rep: ServiceDrift) -> list[_HookState] | None:
    """hooks.hook_states costs ~10 git calls a service; this reads the same files with one
    rev-parse per repo. Anything unusual (core.hooksPath set, pull mode, a repo we could
    not read) returns None and the caller asks opskit.wiring.hooks itself."""
    if svc.pull_mode or rep.repo_info is None or rep.repo_info.hooks_overridden:
        return None
    wt = repo_info(svc, Git(svc.worktree))
    if wt is None or wt.hooks_overridden:
        return None
    states = []
    for where, folder, names in (("repo", rep.repo_info.hooks, hooks.REPO_HOOKS),
                                 ("worktree", wt.hooks, hooks.WORKTREE_HOOKS)):
        for name in names:
            path = folder / name
            try:
                text: str | None = path.read_bytes().decode("utf-8", "replace")
            except FileNotFoundError:
                text = None
            except IsADirectoryError:
                text = ""
            if text is None:
                state = "missing"
            elif text == hooks.expected(settings, svc, name):
                state = "installed"
            else:
                state = "modified" if hooks.is_ours(text) else "foreign"
            states.append(_HookState(name, where, path, state))
    return states


# --- healing --------------------------------------------------------------------------------

def heal_target(journal: Journal, service: str) -> str | None:
    """The last commit the pipeline delivered healthy, else the last one it deployed."""
    good = journal.last_good(service)
    if good:
        return good
    rows = journal.deploys(service, limit=1)
    return str(rows[0]["sha"]) if rows else None


def heal_service(svc: ServiceSettings, rep: ServiceDrift, journal: Journal,
                 clock: Clock = SYSTEM) -> dict[str, Any]:
    """Save the drifted state (every byte as on disk, untracked files included, and what the
    index holds as the commit's second parent, like `git stash`) to a ref, check the ref
    really holds it, then put the worktree back ON its branch at the last deployed
    commit and remove the untracked files that were drift. Raises OpsError on any doubt,
    before the worktree is touched."""
    target = heal_target(journal, svc.name)
    if target is None:
        raise OpsError("cannot heal: opskit never deployed this service, so there is no commit "
                       "to restore; deploy it first")
    wt = Git(svc.worktree)
    st = gitrepo.status_v2(wt)  # fresh: the scan's view may be seconds old
    head = st.head
    stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
    lines = [f"{f.kind} {f.describe()}".strip() for f in rep.findings]
    msg = (f"opskit drift-scan --heal: {svc.name} as found at {iso(clock.now())}\n\n"
           f"HEAD {head or '(none)'} on {st.branch or '(detached)'}; restoring {target}\n\n"
           + "\n".join(lines[:500]) + "\n")
    kept = save_dirty(wt, REF_PREFIX, stamp, msg)
    if kept is None:
        if head is None:
            raise OpsError("cannot heal: nothing to save and no HEAD")
        # Clean files but a bypass commit: the ref keeps that commit reachable.
        ref = free_ref(wt, REF_PREFIX + stamp)
        wt.update_ref(ref, head, message=msg.splitlines()[0])
        saved = head
    else:
        ref, saved = kept

    gitrepo.force_checkout_branch(wt, svc.branch, target)
    removed = _remove_untracked(wt, [e.path for e in st.entries
                                     if e.kind == "untracked" and not ignored(e.path, svc.drift_ignore)])
    return {"ref": ref, "saved": saved, "previous_head": head, "previous_branch": st.branch,
            "restored": target, "removed": removed}


def _remove_untracked(wt: Git, paths: Sequence[str]) -> list[str]:
    root = Path(wt.path).resolve()
    pw = accounts.drop_for(root)
    if pw is not None:
        return _remove_as(pw, root, paths)
    removed = []
    for rel in paths:
        p = root / rel
        # Never follow a symlinked folder out of the worktree.
        if not p.parent.resolve().is_relative_to(root):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                continue
            p.unlink()
        except FileNotFoundError:
            continue
        removed.append(rel)
        parent = p.parent
        while parent != root:
            try:
                parent.rmdir()  # only empty folders the drift left behind
            except OSError:
                break
            parent = parent.parent
    return removed


def _remove_as(pw: pwd.struct_passwd, root: Path, paths: Sequence[str]) -> list[str]:
    """As root in an account's worktree the account removes its own files: root checking a folder
    and then unlinking in it could be steered by a folder swapped for a link in between."""
    files = [rel for rel in paths if not (root / rel).is_dir() or (root / rel).is_symlink()]
    if not files:
        return []
    proc.run(["rm", "-f", "--", *files], cwd=root, user=pw, timeout=120)
    removed = [rel for rel in files if not os.path.lexists(root / rel)]
    parents = sorted({str(Path(rel).parent) for rel in removed} - {"."}, key=len, reverse=True)
    if parents:  # only empty folders the drift left behind
        proc.run(["rmdir", "-p", "--ignore-fail-on-non-empty", "--", *parents], cwd=root, user=pw, timeout=120)
    return removed


# --- state changes: events and notifications ------------------------------------------------

def _notify(settings: Settings, journal: Journal, message: str, *, title: str, level: str,
            service: str, event_id: int, clock: Clock, rep: ServiceDrift) -> None:
    # here, not at the top: a clean scan (cron's every hour) never loads the notify stack
    from opskit.notify.announce import announce

    announce(settings, journal, message, title=title, level=level, service=service, event_id=event_id,
             clock=clock, warn=rep.notes.append)


def _summary(rep: ServiceDrift, limit: int = 8) -> str:
    lines = [f"{f.kind}: {f.describe()}" for f in rep.findings[:limit]]
    if len(rep.findings) > limit:
        lines.append(f"… and {len(rep.findings) - limit} more")
    return "\n".join(lines)


def track_state(settings: Settings, journal: Journal, rep: ServiceDrift, clock: Clock,
                send: bool = True) -> None:
    """Journal and notify when the drift state changes, and again every drift_renotify
    hours while it persists: never every hour for the same thing."""
    if rep.error or rep.skipped:
        return
    now = clock.now()
    prev: dict[str, Any] | None = journal.kv_get(KV_SCOPE, rep.service)
    if not rep.drift:
        if prev is None:
            return
        ev = journal.append("drift.cleared", rep.service, {"since": prev.get("since"),
                                                          "healed": rep.healed})
        journal.kv_delete(KV_SCOPE, rep.service)
        rep.change = "cleared"
        if send:
            _notify(settings, journal, f"{rep.service}: no drift in {rep.worktree} any more",
                    title=f"drift cleared on {rep.service}", level="info", service=rep.service,
                    event_id=ev.id, clock=clock, rep=rep)
        return
    fp = rep.fingerprint()
    if prev is not None and prev.get("fingerprint") == fp:
        last = parse_iso(str(prev.get("notified") or prev.get("since")))
        if now - last < dt.timedelta(hours=settings.drift_renotify):
            return
        rep.change = "reminder"
    else:
        rep.change = "detected"
    findings = [f.to_dict() for f in rep.findings[:MAX_EVENT_FINDINGS]]
    ev = journal.append("drift.detected", rep.service, {
        "findings": findings, "count": len(rep.findings), "head": rep.head,
        "worktree": rep.worktree, "reminder": rep.change == "reminder",
    }, sha=rep.head)
    since = prev["since"] if prev is not None and rep.change == "reminder" else iso(now)
    journal.kv_set(KV_SCOPE, rep.service, {"fingerprint": fp, "since": since, "notified": iso(now),
                                           "count": len(rep.findings), "event_id": ev.id,
                                           "files": sum(f.kind in FILE_KINDS for f in rep.findings)})
    if send:
        head = ("still drifted since " + since) if rep.change == "reminder" else "drift found"
        _notify(settings, journal, f"{rep.service}: {head} in {rep.worktree}\n{_summary(rep)}",
                title=f"drift on {rep.service}", level="warning", service=rep.service,
                event_id=ev.id, clock=clock, rep=rep)


# --- the command's one call -----------------------------------------------------------------

def scan(settings: Settings, journal: Journal, names: Sequence[str] = (), *, heal: bool = False,
         notify: bool = True, clock: Clock = SYSTEM, workers: int | None = None,
         lock_wait: float = HEAL_LOCK_WAIT) -> ScanReport:
    """Scan the named services (all when none), in parallel; heal if asked; track state.

    notify=False is a look only: no events, no notifications and no change to the stored
    drift state, so the next scheduled scan still alerts on what this one saw. A heal is
    always journaled. Each heal holds the service's deploy lock (waiting up to lock_wait
    seconds): a deploy busy with the worktree makes that service's heal fail, untouched."""
    services = [settings.service(n) for n in dict.fromkeys(names)] if names else list(
        settings.services.values())
    if not services:
        where = settings.path or "no config file found"
        raise UsageError(f"{where}: no services configured; add a [service.NAME] table")
    deploys = Deploys.load(journal)
    n = workers or min(len(services), max(4, (os.cpu_count() or 2) * 4))
    with ThreadPoolExecutor(max_workers=n) as pool:
        reports = list(pool.map(lambda s: scan_service(settings, s, deploys), services))

    if heal:
        for svc, rep in zip(services, reports, strict=True):
            if rep.error or rep.skipped or not any(f.kind in HEALABLE for f in rep.findings):
                continue
            _heal_one(settings, journal, svc, rep, clock, notify, lock_wait)
        deploys = Deploys.load(journal)
        for i, (svc, rep) in enumerate(zip(services, reports, strict=True)):
            if rep.healed is not None:
                after = scan_service(settings, svc, deploys)
                after.healed, after.notes = rep.healed, rep.notes + after.notes
                reports[i] = after
    if notify:
        for rep in reports:
            track_state(settings, journal, rep, clock)
    return ScanReport(reports)


def _heal_one(settings: Settings, journal: Journal, svc: ServiceSettings, rep: ServiceDrift,
              clock: Clock, send: bool, lock_wait: float = HEAL_LOCK_WAIT) -> None:
    try:
        # Save and restore under the lock every deploy, revert and chain takes: the
        # worktree must not move under a deploy, nor a deploy start mid-heal.
        with ServiceLock(settings.state_dir, svc.name, wait=lock_wait, clock=clock, what="heal"):
            rep.healed = heal_service(svc, rep, journal, clock)
    except LockBusy as e:
        rep.heal_error = f"cannot heal: {e.message}"
        rep.notes.append(rep.heal_error)
        return
    except OpsError as e:
        rep.heal_error = e.message
        rep.notes.append(e.message)
        return
    data = dict(rep.healed, findings=[f.to_dict() for f in rep.findings[:MAX_EVENT_FINDINGS]])
    ev = journal.append("drift.healed", svc.name, data, sha=rep.healed["restored"])
    if send:
        _notify(settings, journal,
                f"{svc.name}: drift healed; the drifted state is saved in {rep.healed['ref']} "
                f"({short(rep.healed['saved'])}), worktree restored to "
                f"{short(rep.healed['restored'])}\n{_summary(rep)}",
                title=f"drift healed on {svc.name}", level="warning", service=svc.name,
                event_id=ev.id, clock=clock, rep=rep)
