"""Auto-revert and freeze.

A failed deploy is undone by a NEW commit on the branch (history is never rewritten; the
bad commit stays an ancestor), landed in the canonical repo and checked there, then
deployed and gated like any other commit. When that fails too the service is frozen: no
second revert, no loop, a human decides (`opskit unfreeze`).

How the revert's tree is chosen:
- the bad commit is a merge whose first parent was the last good deploy (the usual
  feature merge) → the first parent's tree, exactly what `git revert -m 1` gives;
- several commits went live at once (or the last good deploy is further back) → the tree
  of the last known-good deploy;
- no known-good deploy at all → the bad commit's first parent;
- other commits landed on top since → a real `git revert --no-commit -m 1` of the bad
  commit(s) in a throwaway worktree; a conflict aborts it and nothing is left behind.

The branch moves by `git update-ref <new> <expected old>` in the bare repo (push mode): no
hook runs, so no second pipeline and no deadlock on the lock we hold. Pull mode pushes
(never forced) to the remote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opskit.base import accounts
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, OpsError, UsageError, redact
from opskit.base.lock import ServiceLock
from opskit.base.text import printable, short
from opskit.deploy import service_logs
from opskit.deploy.freeze import freeze
from opskit.deploy.recovery import step_report_interrupted
from opskit.deploy.rollout import roll_out
from opskit.deploy.run import Run, Write, announce_run, new_chain_id
from opskit.git.land import canonical, land_commit, local_tip
from opskit.git.repo import Git
from opskit.git.worktree import deployed_head
from opskit.notify import decisions
from opskit.notify.announce import event_ref
from opskit.notify.base import Action
from opskit.storage import fleet_locks
from opskit.storage.journal import Journal

_TRAILER = re.compile(r"(?m)^Opskit-Reverts:\s*[0-9a-f]{7,40}\s*$")


def is_revert_commit(message: str) -> bool:
    return message.startswith("Auto-revert:") or bool(_TRAILER.search(message))


@dataclass
class RevertPlan:
    service: str
    branch: str
    bad: str
    tip: str
    good: str | None
    strategy: str  # merge-first-parent | last-good | parent | revert-on-top
    reverted: list[str]  # newest first
    subjects: dict[str, str]
    tree: str | None  # None until computed (revert-on-top)
    bad_tree: str
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "branch": self.branch, "bad": self.bad, "tip": self.tip,
                "good": self.good, "strategy": self.strategy, "reverted": self.reverted,
                "tree": self.tree, "bad_tree": self.bad_tree, "commands": self.commands}

    def render(self) -> list[str]:
        lines = [f"auto-revert plan for {self.service} ({self.branch} at {short(self.tip)}):",
                 f"  bad commit: {short(self.bad)} {self.subjects.get(self.bad, '')}",
                 f"  strategy:   {self.strategy}" + (f" (last good {short(self.good)})" if self.good else ""),
                 "  reverts:"]
        lines += [f"    {short(c)} {self.subjects.get(c, '')}" for c in self.reverted]
        lines.append(f"  new tree:   {self.tree or '(computed by the revert in a temporary worktree)'}")
        lines.append(f"  quarantine: tree {self.bad_tree}")
        lines.append("  commands:")
        lines += [f"    {c}" for c in self.commands]
        return lines


@dataclass
class RevertResult:
    service: str
    ok: bool
    status: str  # reverted | landed | planned | conflict | frozen | refused | failed
    reason: str
    exit_code: int
    bad: str | None = None
    revert_sha: str | None = None
    reverted: list[str] = field(default_factory=list)
    event_id: int | None = None  # rollback.start
    plan: RevertPlan | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "ok": self.ok, "status": self.status, "reason": self.reason,
                "exit_code": self.exit_code, "bad": self.bad, "revert": self.revert_sha,
                "reverted": self.reverted, "event_id": self.event_id,
                "plan": self.plan.to_dict() if self.plan else None}


class _Conflict(OpsError):
    def __init__(self, files: list[str], detail: str) -> None:
        self.files = files
        super().__init__(detail)


# --- the plan --------------------------------------------------------------------------------

def _last_good(journal: Journal, service: str, bad: str, live_before: str | None = None) -> str | None:
    """The last commit that passed its gate, other than bad; None when the journal has none.
    When the journal cannot be read, what was live before this deploy (`live_before`, which the
    pipeline knows from the worktree) stands in for it: a failed `deploy --sha` of an older
    commit is then still put back by redeploying, never by a revert commit undoing good work."""
    rows: list[Any] | None = journal.read_or(lambda: journal.deploys(service, limit=500), None)
    if rows is None:
        return live_before if live_before and live_before != bad else None
    for row in rows:
        if row["status"] == "healthy" and row["sha"] != bad:
            return str(row["sha"])
    return None


def make_plan(svc: ServiceSettings, journal: Journal, canon: Git, bad: str,
              live_before: str | None = None) -> RevertPlan:
    tip = local_tip(svc, canon)
    if tip is None:
        raise OpsError(f"{svc.name}: branch {svc.branch!r} not found in {svc.repo}; nothing to revert")
    if not canon.is_ancestor(bad, tip):
        raise OpsError(f"{svc.name}: {short(bad)} is not on {svc.branch} (tip {short(tip)}); nothing to revert")
    parents = canon.parents(bad)
    good = _last_good(journal, svc.name, bad, live_before)
    if good is not None and (canon.rev_parse(good) is None or not canon.is_ancestor(good, bad)):
        good = None  # the known-good commit is not behind this one (history was replaced): ignore it
    if len(parents) >= 2 and (good is None or good == parents[0]):
        strategy, reverted, base = "merge-first-parent", [bad], parents[0]
    elif good is not None:
        strategy, base = "last-good", good
        reverted = canon.rev_list("--first-parent", f"{good}..{bad}") or [bad]
    elif parents:
        strategy, reverted, base = "parent", [bad], parents[0]
    else:
        raise OpsError(f"{svc.name}: {short(bad)} is the first commit and nothing was ever healthy; "
                       "there is nothing to revert to. Fix forward or restore by hand")
    subjects = {c: printable(canon.subject(c)) for c in reverted + [bad]}
    ref = f"refs/heads/{svc.branch}"
    land = (f"git -C {svc.repo} update-ref {ref} <revert> {tip}" if not svc.pull_mode
            else f"git -C {svc.worktree} push {svc.repo} <revert>:{ref}")
    if tip == bad:
        tree: str | None = canon.tree(base)
        commands = [f"git commit-tree {tree} -p {tip}  # message 'Auto-revert: {svc.name}: <reason>'"]
    else:
        strategy, tree = "revert-on-top", None
        commands = [f"git worktree add --detach <tmp> {tip}",
                    f"git revert --no-commit -m 1 {' '.join(reverted)}",
                    "git write-tree", "git commit-tree <tree> -p " + tip, "git worktree remove --force <tmp>"]
    commands += [land, f"verify: {svc.branch} tip == <revert>",
                 f"git -C {svc.worktree} checkout --force -B {svc.branch} <revert>"]
    if svc.deploy:
        commands.append(f"(cd {svc.worktree} && {svc.deploy})")
    if svc.health.configured:
        commands.append(f"health gate: {svc.health.url or svc.health.tcp or svc.health.cmd}")
    return RevertPlan(service=svc.name, branch=svc.branch, bad=bad, tip=tip, good=good, strategy=strategy,
                      reverted=reverted, subjects=subjects, tree=tree, bad_tree=canon.tree(bad),
                      commands=commands)


def _revert_on_top(canon: Git, plan: RevertPlan) -> str:
    """git revert in a throwaway worktree; on conflict abort: nothing half-done anywhere."""
    with canon.temp_worktree(plan.tip, prefix="opskit-revert-") as wt:
        r = wt.run("revert", "--no-commit", "-m", "1", *plan.reverted, check=False)
        if not r.ok:
            files = wt.out("diff", "--name-only", "--diff-filter=U").splitlines()
            wt.run("revert", "--abort", check=False)
            detail = (r.stderr.strip().splitlines() or ["conflict"])[-1]
            raise _Conflict([printable(f) for f in files], printable(detail))
        return wt.out("write-tree")


def _message(plan: RevertPlan, reason: str, event_id: int, stage: str) -> str:
    first = " ".join(printable(reason).split())[:120] or "deploy failed"
    what = {"deploy": "its deploy command failed", "health": "it failed its health gate"}.get(
        stage, "it was reverted on request")
    body = [f"Auto-revert: {plan.service}: {first}", "",
            f"opskit reverted {short(plan.bad)} on {plan.branch} because {what}.",
            f"Strategy: {plan.strategy}" + (f" (last good deploy {short(plan.good)})" if plan.good else "") + ".",
            "Reverted:"]
    body += [f"  {short(c)} {plan.subjects.get(c, '')}" for c in plan.reverted]
    body += ["", "To re-land: fix the cause and push it again (a feature branch runs the chain).",
             f"The reverted tree is quarantined; see `opskit quarantine list {plan.service}`.", ""]
    body += [f"Opskit-Reverts: {c}" for c in plan.reverted]
    body.append(f"Opskit-Event: {event_id}")
    return "\n".join(body) + "\n"


# --- the revert ------------------------------------------------------------------------------

def _logs_of(run: Run, sha: str | None) -> service_logs.Captured | None:
    """What the service's own log said when sha failed (rollout.note_logs), if it was read."""
    got = run.notes.get("logs", {}).get(sha) if sha else None
    return got if isinstance(got, service_logs.Captured) else None


def _log_block(run: Run, sha: str) -> list[str]:
    """The failed deploy's last log lines for a message (last, so a channel's cut keeps the rest)."""
    logs = _logs_of(run, sha)
    block = service_logs.message_block(logs.lines, logs.note) if logs is not None else ""
    return [block] if block else []


def _fail(run: Run, bad: str, reason: str, *, status: str, start_id: int | None, plan: RevertPlan | None,
          freeze_it: bool, extra: dict[str, Any] | None = None) -> RevertResult:
    data: dict[str, Any] = {"bad": bad, "reason": reason, "status": status, **(extra or {})}
    if start_id is not None:
        data["rollback_event"] = start_id
    # The re-gate's log when the revert went live and failed, else the bad deploy's own.
    logs = _logs_of(run, data.get("revert")) or _logs_of(run, bad)
    if logs is not None:
        data.update(logs.data())
    ev = run.emit("rollback.fail", data, sha=bad)
    run.say(f"✘ rollback failed: {reason}")
    msg = [f"{run.service}: the automatic rollback of {short(bad)} FAILED.", f"Why: {reason}",
           f"Event: {event_ref(ev.id)} (`opskit events --service {run.service} --type rollback`)"]
    buttons: list[Action] = []
    if freeze_it:
        freeze(run, reason, ev.id)
        msg.append(f"The service is FROZEN: deploys are refused until `opskit unfreeze {run.service}`.")
        buttons = decisions.buttons(run.settings, run.journal, run.service, [("unfreeze", run.service)], clock=run.clock)
    else:
        msg.append("The repository and the worktree were left as they were; a human must restore the service.")
    msg.append(f"The story: `opskit incident last --service {run.service}`")
    if logs is not None and (block := service_logs.message_block(logs.lines, logs.note)):
        msg.append(block)
    announce_run(run, "\n".join(msg), title=f"{run.service}: rollback failed", level="critical", event_id=ev.id,
                 actions=buttons)
    return RevertResult(service=run.service, ok=False, status=status, reason=reason, exit_code=int(ExitCode.FAILED),
                        bad=bad, reverted=plan.reverted if plan else [], event_id=start_id, plan=plan)


def revert_locked(run: Run, *, bad: str, reason: str, bad_deploy_id: int | None = None, stage: str = "manual",
                  no_deploy: bool = False, trigger_event: int | None = None) -> RevertResult:
    """Revert `bad` while the caller holds the service lock (the pipeline, or auto_revert)."""
    svc = run.svc
    run.say(f"auto-revert of {short(bad)}: {reason}")
    try:
        canon = canonical(svc)
        message = canon.message(bad)
    except OpsError as e:
        return _fail(run, bad, f"cannot read {short(bad)}: {e}", status="failed", start_id=None, plan=None,
                     freeze_it=False)
    if is_revert_commit(message):
        # No loops, ever: a revert that fails is not reverted again; the service freezes instead.
        return _fail(run, bad, f"{short(bad)} is itself an auto-revert and it failed too ({reason}); "
                     "refusing to revert a revert", status="frozen", start_id=None, plan=None, freeze_it=True)
    try:
        good = _last_good(run.journal, svc.name, bad, run.previous)
        tip = local_tip(svc, canon)
        if (good is not None and tip is not None and canon.rev_parse(good) is not None
                and (canon.is_ancestor(bad, good) or not canon.is_ancestor(bad, tip))):
            # `deploy --sha` of an older commit, or of one not on the branch: the branch does not
            # carry it as new work, so a revert commit would undo good work. Put back what was good.
            return _restore_last_good(run, canon, bad=bad, good=good, reason=reason, bad_deploy_id=bad_deploy_id,
                                      stage=stage, no_deploy=no_deploy, trigger_event=trigger_event,
                                      off_branch=not canon.is_ancestor(bad, tip))
        plan = make_plan(svc, run.journal, canon, bad, run.previous)
    except OpsError as e:
        return _fail(run, bad, str(e), status="failed", start_id=None, plan=None, freeze_it=False)
    start = run.emit("rollback.start", {"bad": bad, "reverted": plan.reverted, "tip": plan.tip, "good": plan.good,
                                        "strategy": plan.strategy, "reason": reason, "stage": stage,
                                        "trigger_event": trigger_event}, sha=bad)
    for line in plan.render():
        run.say(line)
    try:
        tree = plan.tree or _revert_on_top(canon, plan)
    except _Conflict as c:
        return _fail(run, bad, f"the revert of {short(bad)} conflicts with commits that landed on top "
                     f"({', '.join(c.files[:5]) or c.message}); nothing was changed", status="conflict",
                     start_id=start.id, plan=plan, freeze_it=False, extra={"conflicts": c.files})
    except OpsError as e:
        return _fail(run, bad, f"could not compute the revert: {e}", status="failed", start_id=start.id,
                     plan=plan, freeze_it=False)
    plan.tree = tree
    try:
        new = canon.commit_tree(tree, [plan.tip], _message(plan, reason, start.id, stage))
        land_commit(svc, canon, new, plan.tip)
    except OpsError as e:
        return _fail(run, bad, f"could not land the revert: {e}", status="failed", start_id=start.id, plan=plan,
                     freeze_it=False)
    run.say(f"revert {short(new)} landed on {svc.branch}")
    run.journal.quarantine_add(svc.name, plan.bad_tree, bad, start.id, reason)
    result = RevertResult(service=svc.name, ok=True, status="landed", reason=reason, exit_code=int(ExitCode.OK),
                          bad=bad, revert_sha=new, reverted=plan.reverted, event_id=start.id, plan=plan)
    if not no_deploy:
        try:
            d = roll_out(run, new, kind="revert", previous=bad)
        except OpsError as e:  # git or the OS failed mid-redeploy: the bad commit may still be live
            return _fail(run, bad, f"the revert {short(new)} could not be deployed: {e}", status="frozen",
                         start_id=start.id, plan=plan, freeze_it=True, extra={"revert": new, "crashed": True})
        if not d.ok:
            return _fail(run, bad, f"the revert {short(new)} failed too ({d.stage}): {d.reason}", status="frozen",
                         start_id=start.id, plan=plan, freeze_it=True, extra={"revert": new})
        result.status = "reverted"
    if bad_deploy_id is not None:
        run.journal.deploy_finish(bad_deploy_id, "reverted", reason)
    done = run.emit("rollback.complete", {"reverted": plan.reverted, "bad": bad, "revert": new, "reason": reason,
                                          "strategy": plan.strategy, "deployed": not no_deploy,
                                          "rollback_event": start.id, "quarantined_tree": plan.bad_tree}, sha=new)
    run.say(f"✔ rolled back: {svc.name} now runs {short(new)}" + (" (not redeployed: --no-deploy)" if no_deploy else ""))
    listing = "\n".join(f"• {short(c)} {plan.subjects.get(c, '')}" for c in plan.reverted[:10])
    announce_run(run, "\n".join([
        f"{svc.name}: deploy of {short(bad)} was reverted automatically.",
        f"Why: {printable(reason)}",
        f"Reverted:\n{listing}",
        f"Now live: {short(new)} (Auto-revert) on {svc.branch}" + (", healthy." if not no_deploy else ", NOT redeployed."),
        f"Event: {event_ref(start.id)} (`opskit events --service {svc.name} --type rollback`)",
        f"Re-land: fix the cause and push again; the same tree is refused until "
        f"`opskit quarantine release {svc.name} {plan.bad_tree[:12]}`.",
        f"The story: `opskit incident last --service {svc.name}`. Hold further deploys: "
        f"`opskit freeze {svc.name}` (or the Freeze button).",
        *_log_block(run, bad),
    ]), title=f"{svc.name}: auto-reverted {short(bad)}", level="error", event_id=done.id,
        actions=decisions.buttons(run.settings, run.journal, svc.name, [("freeze", svc.name)], clock=run.clock))
    return result


def _restore_last_good(run: Run, canon: Git, *, bad: str, good: str, reason: str, bad_deploy_id: int | None,
                       stage: str, no_deploy: bool, trigger_event: int | None, off_branch: bool) -> RevertResult:
    svc = run.svc
    start = run.emit("rollback.start", {"bad": bad, "reverted": [bad], "good": good, "strategy": "redeploy-last-good",
                                        "reason": reason, "stage": stage, "trigger_event": trigger_event}, sha=bad)
    run.say(f"{short(bad)} is not new work on {svc.branch}: no revert commit needed, "
            f"redeploying the last good deploy {short(good)}")
    if off_branch:  # a commit that never reached the branch: keep its tree from coming back by push
        run.journal.quarantine_add(svc.name, canon.tree(bad), bad, start.id, reason)
    result = RevertResult(service=svc.name, ok=True, status="landed", reason=reason, exit_code=int(ExitCode.OK),
                          bad=bad, revert_sha=good, reverted=[bad], event_id=start.id)
    if not no_deploy:
        try:
            d = roll_out(run, good, kind="revert", previous=bad)
        except OpsError as e:
            return _fail(run, bad, f"the last good deploy {short(good)} could not be deployed: {e}",
                         status="frozen", start_id=start.id, plan=None, freeze_it=True,
                         extra={"revert": good, "crashed": True})
        if not d.ok:
            return _fail(run, bad, f"the last good deploy {short(good)} failed too ({d.stage}): {d.reason}",
                         status="frozen", start_id=start.id, plan=None, freeze_it=True, extra={"revert": good})
        result.status = "reverted"
    if bad_deploy_id is not None:
        run.journal.deploy_finish(bad_deploy_id, "reverted", reason)
    done = run.emit("rollback.complete", {"reverted": [bad], "bad": bad, "revert": good, "reason": reason,
                                          "strategy": "redeploy-last-good", "deployed": not no_deploy,
                                          "rollback_event": start.id}, sha=good)
    run.say(f"✔ rolled back: {svc.name} runs the last good deploy {short(good)} again")
    announce_run(run, "\n".join([
        f"{svc.name}: deploy of {short(bad)} {printable(canon.subject(bad))} failed and was rolled back.",
        f"Why: {printable(reason)}",
        f"Now live: {short(good)} (the last good deploy)" + (", healthy." if not no_deploy else ", NOT redeployed."),
        f"Event: {event_ref(start.id)} (`opskit events --service {svc.name} --type rollback`)",
        f"The branch was not changed ({short(bad)} is not new work on {svc.branch}).",
        f"The story: `opskit incident last --service {svc.name}`. Hold further deploys: "
        f"`opskit freeze {svc.name}` (or the Freeze button).",
        *_log_block(run, bad),
    ]), title=f"{svc.name}: rolled back {short(bad)}", level="error", event_id=done.id,
        actions=decisions.buttons(run.settings, run.journal, svc.name, [("freeze", svc.name)], clock=run.clock))
    return result


def auto_revert(settings: Settings, journal: Journal, service: str, *, commit: str | None = None,
                reason: str | None = None, dry_run: bool = False, no_deploy: bool = False,
                chain: str | None = None, clock: Clock = SYSTEM, write: Write = print,
                lock_wait: float = 600.0) -> RevertResult:
    """`opskit auto-revert`: revert `commit` (default: what the worktree runs) by hand or from cron."""
    svc = settings.service(service)
    if not dry_run:
        accounts.check_actor(svc)
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain or new_chain_id("r"), clock=clock, write=write)
    why = reason or "reverted by hand (opskit auto-revert)"
    if dry_run:
        canon = canonical(svc)
        bad = _resolve(canon, svc, commit)
        plan = make_plan(svc, journal, canon, bad)
        if is_revert_commit(canon.message(bad)):
            write(f"{service}: {short(bad)} is itself an auto-revert: a real run would refuse and freeze")
        for line in plan.render():
            write(redact(line))
        write("dry run: nothing was changed")
        return RevertResult(service=service, ok=True, status="planned", reason=why, exit_code=int(ExitCode.OK),
                            bad=bad, reverted=plan.reverted, plan=plan)
    with ServiceLock(settings.state_dir, service, wait=lock_wait, clock=clock, what="auto-revert",
                     on_wait=run.say) as lock, \
            fleet_locks.deploy_lock(settings, journal, svc, wait=lock_wait, what="auto-revert", say=run.say) as shared:
        run.lock_fd = lock.fd
        if shared is not None:
            run.notes["fleet_lock"] = shared.data()
        frozen = journal.frozen(service)
        if frozen:
            raise OpsError(f"{service} is frozen ({frozen.get('reason')}); `opskit unfreeze {service}` first")
        step_report_interrupted(run)
        canon = canonical(svc)
        bad = _resolve(canon, svc, commit)
        run.sha = bad
        return revert_locked(run, bad=bad, reason=why, no_deploy=no_deploy)


def _resolve(canon: Git, svc: ServiceSettings, commit: str | None) -> str:
    if commit:
        sha = canon.rev_parse(commit)
        if sha is None:
            raise UsageError(f"{svc.name}: --commit {commit!r} is not a commit in {svc.repo}; fix the SHA")
        return sha
    head = deployed_head(svc)
    if head is None:
        raise UsageError(f"{svc.name}: worktree {svc.worktree} has no commit; pass --commit SHA")
    return head


__all__: Sequence[str] = ["auto_revert", "revert_locked", "is_revert_commit", "make_plan", "RevertPlan",
                          "RevertResult"]
