"""The deploy pipeline: a chain of small steps, each journaled (issue 3 item 2).

    lock → frozen? → report an interrupted earlier deploy → move the worktree → deploy.start
    → deploy command → deploy.complete|fail → health gate → healthy | auto-revert

Both ways a deploy starts end here: the post-receive hook (push mode, `on_post_receive`) and
`opskit deploy SERVICE` (pull mode from cron, or by hand). A chain is a list of named steps
run over one `Run`; the feature-branch chain (test → review → merge, issue 5) prepends its own
steps to `deploy_steps()` and runs them under the same lock with `run_steps`.

The 03:57 incident: a deploy whose service never came up stayed live because nothing
watched it. Here every deploy ends in a verdict, and a failed one is reverted (revert.py).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opskit.base import accounts
from opskit.base import proc
from opskit.base import statefs
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, OpsError, UsageError, redact
from opskit.git.repo import ZERO, Git
from opskit.storage.journal import Event, Journal
from opskit.base.lock import ServiceLock

if TYPE_CHECKING:
    from opskit.deploy.revert import RevertResult

Write = Callable[[str], None]
FETCH_TIMEOUT = 120.0


def text(s: str | None) -> str:
    """Data from git may hold non-UTF-8 bytes (surrogate-escaped): make it safe to journal,
    to hand to a subprocess and to print, without interpreting it."""
    if not s:
        return ""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def short(sha: str | None) -> str:
    return sha[:10] if sha else "-"


@dataclass
class DeployResult:
    service: str
    ok: bool
    status: str  # healthy | nothing | superseded | reverted | failed | frozen
    sha: str | None
    reason: str
    exit_code: int
    previous: str | None = None
    deploy_id: int | None = None
    chain: str | None = None
    saved_ref: str | None = None
    revert: RevertResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "service": self.service, "ok": self.ok, "status": self.status, "sha": self.sha,
            "previous": self.previous, "reason": self.reason, "exit_code": self.exit_code,
            "deploy_id": self.deploy_id, "chain": self.chain, "saved_ref": self.saved_ref,
        }
        if self.revert is not None:
            out["revert"] = self.revert.to_dict()
        return out


@dataclass
class Delivery:
    """One commit put live: worktree moved, deploy command run, gate run."""

    ok: bool
    sha: str
    deploy_id: int
    stage: str  # where it ended: deploy | health | done
    reason: str
    saved_ref: str | None = None
    health_event_id: int | None = None
    fail_event_id: int | None = None


@dataclass
class Run:
    """What every step of one chain sees and shares."""

    settings: Settings
    journal: Journal
    svc: ServiceSettings
    chain: str
    clock: Clock = SYSTEM
    write: Write = print
    sha: str | None = None  # the commit this chain puts live (a merge step may set it)
    previous: str | None = None  # what was live before
    delivery: Delivery | None = None
    result: DeployResult | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    lock_fd: int | None = None  # the service lock's descriptor, held by the commands run under it

    @property
    def service(self) -> str:
        return self.svc.name

    def emit(self, type: str, data: dict[str, Any], *, sha: str | None = None) -> Event:
        return self.journal.append(type, self.service, data, chain=self.chain, sha=sha or self.sha)

    def say(self, line: str) -> None:
        try:
            self.write(redact(text(line)))
        except Exception:  # the pusher hung up: the pipeline goes on regardless
            pass

    def finish(self, status: str, reason: str, *, ok: bool | None = None,
               exit_code: int | None = None) -> DeployResult:
        ok = status in ("healthy", "nothing") if ok is None else ok
        self.result = DeployResult(
            service=self.service, ok=ok, status=status, sha=self.sha, reason=reason,
            exit_code=int(exit_code if exit_code is not None else (ExitCode.OK if ok else ExitCode.FAILED)),
            previous=self.previous, deploy_id=self.delivery.deploy_id if self.delivery else None,
            chain=self.chain, saved_ref=self.delivery.saved_ref if self.delivery else None,
        )
        return self.result


class StopChain(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A step decided the chain ends here; run.result holds the outcome."""


Step = Callable[[Run], None]


def run_steps(run: Run, steps: Sequence[tuple[str, Step]]) -> DeployResult:
    """Run named steps in order until one stops the chain; the last result wins."""
    for name, step in steps:
        run.notes["step"] = name
        try:
            step(run)
        except StopChain:
            break
    if run.result is None:  # a chain whose steps set no verdict did not deploy anything
        raise OpsError(f"{run.service}: pipeline ended without a verdict (last step {run.notes.get('step')})")
    return run.result


def new_chain_id(prefix: str = "d") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --- helpers shared with revert.py ---------------------------------------------------------

def notify(run: Run, message: str, *, title: str, level: str, event_id: int | None) -> None:
    """Send through the outbox; a notification problem never stops a rollback."""
    try:
        from opskit import notify as notify_mod

        report = notify_mod.send(run.settings, run.journal, text(message), title=text(title), level=level,
                                 service=run.service, event_id=event_id, clock=run.clock)
        if not report.ok:
            run.say(f"notification queued, not delivered yet ({', '.join(report.queued + report.broken)}); "
                    "`opskit notify --flush` retries it")
    except Exception as e:  # ImportError while notify is absent, or a bug there
        run.say(f"notification not sent: {redact(str(e))[:200]}")


def deployed_head(svc: ServiceSettings) -> str | None:
    wt = Git(svc.worktree)
    return wt.head() if wt.is_repo() else None


def last_deployed(journal: Journal, service: str) -> str | None:
    """The commit the last deploy reached a verdict on. A deploy killed on the way (row still
    'running' or 'interrupted') or a failed one whose rollback was killed before it ended is
    not done: the next run (cron's `opskit deploy`) must report it and deploy again, not say
    "already deployed" over a commit nobody watched (issue 6, kill at every step)."""
    rows = journal.deploys(service, limit=1)
    if not rows:
        return None
    row = rows[0]
    if row["status"] in ("running", "interrupted"):
        return None
    if row["status"] == "failed" and open_rollback(journal, service, row) is not None:
        return None
    return str(row["sha"])


def open_rollback(journal: Journal, service: str, row: Any) -> Event | None:
    """The rollback.start of a failed deploy's chain that no rollback.complete|fail ended."""
    if not row["chain"]:
        return None
    events = journal.query(service=service, type_prefix="rollback.", chain=str(row["chain"]))
    if events and events[-1].type == "rollback.start" and events[-1].data.get("bad") == row["sha"]:
        return events[-1]
    return None


def canonical_tip(svc: ServiceSettings) -> str | None:
    """The branch tip in the canonical repo, asked of the repo itself."""
    if svc.pull_mode:
        return Git(svc.worktree).ls_remote(svc.repo, svc.branch, timeout=FETCH_TIMEOUT)
    bare = Git(svc.repo)
    bare.require_repo("repository (service repo)")
    return bare.branch_tip(svc.branch)


def fetch_worktree(svc: ServiceSettings) -> Git:
    wt = Git(svc.worktree)
    if not wt.is_repo():
        raise UsageError(f"{svc.name}: worktree {svc.worktree} is not a git checkout; "
                         f"clone it: git clone -b {svc.branch} {svc.repo} {svc.worktree}")
    # The canonical repo by path/URL from the config, not whatever origin says today.
    wt.fetch(svc.repo, "+refs/heads/*:refs/remotes/origin/*", timeout=FETCH_TIMEOUT)
    return wt


def _ignored(path: str, patterns: Sequence[str]) -> bool:
    for pat in patterns:
        if pat.endswith("/"):
            if path.startswith(pat) or f"/{pat}" in f"/{path}":
                return True
        elif fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(os.path.basename(path), pat):
            return True
    return False


def move_worktree(run: Run, sha: str) -> str | None:
    """Put the worktree ON `branch` at sha; dirty state is saved to a ref first, never lost."""
    svc = run.svc
    wt = Git(svc.worktree)
    if wt.rev_parse(sha) is None:  # e.g. the revert just landed in the canonical repo
        wt = fetch_worktree(svc)
    # drift_ignore spares untracked files (logs, caches) only: `checkout --force` leaves those
    # alone, but it discards every change to a tracked file, so each one is saved first.
    dirty = [e for e in wt.status() if e.code != "??" or not _ignored(e.path, svc.drift_ignore)]
    saved: str | None = None
    if dirty:
        stamp = run.clock.now().astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        ref = f"refs/opskit/dirty/{stamp}"
        n = 1
        while wt.rev_parse(ref) is not None:
            n += 1
            ref = f"refs/opskit/dirty/{stamp}-{n}"
        wt.save_state(ref, f"opskit: dirty state of {svc.name} saved before deploying {short(sha)}")
        saved = ref
        names = ", ".join(text(e.path) for e in dirty[:5]) + (" …" if len(dirty) > 5 else "")
        run.say(f"worktree had {len(dirty)} changed file(s) ({names}); saved to {ref}")
    wt.run("checkout", "--quiet", "--force", "-B", svc.branch, sha)
    return saved


def run_locked(run: Run, argv: Sequence[str], **kw: Any) -> proc.Result:
    """proc.run for a command run under the service lock: it holds the lock while it runs, so
    if we are killed (SIGKILL, OOM) the next deploy waits for it instead of running beside it.
    What it starts in the background does not inherit the lock (proc.holding)."""
    if run.lock_fd is None:
        return proc.run(argv, **kw)
    res = proc.run(proc.holding(run.lock_fd, argv), pass_fds=(run.lock_fd,), **kw)
    res.argv = list(argv)  # say what the user configured, not the keeper around it
    return res


def deliver(run: Run, sha: str, *, kind: str = "deploy", previous: str | None = None) -> Delivery:
    """Move the worktree to sha, run `deploy`, run the health gate; the deploys row tells
    where it is at every moment so a crash leaves a record of where it stopped."""
    svc, journal = run.svc, run.journal
    deploy_id = journal.deploy_start(svc.name, sha, previous=previous, chain=run.chain, kind=kind)
    d = Delivery(ok=False, sha=sha, deploy_id=deploy_id, stage="worktree", reason="")
    try:
        journal.deploy_step(deploy_id, "worktree")
        d.saved_ref = move_worktree(run, sha)
        subject = text(Git(svc.worktree).subject(sha))
        d.stage = "deploy"
        journal.deploy_step(deploy_id, "deploy")
        run.emit("deploy.start", {"sha": sha, "previous": previous, "step": "deploy", "kind": kind,
                                  "deploy_id": deploy_id, "subject": subject, "saved_ref": d.saved_ref},
                 sha=sha)
        run.say(f"{'reverting' if kind == 'revert' else 'deploying'} {svc.name} {short(sha)} {subject}")
        if svc.deploy:
            res = run_locked(run, proc.shell_argv(svc.deploy), cwd=svc.worktree, timeout=svc.deploy_timeout,
                             stream=lambda ln: run.say(f"  | {ln}"),
                             env=proc.clean_env({"OPSKIT_SERVICE": svc.name, "OPSKIT_SHA": sha,
                                                 "OPSKIT_PREVIOUS": previous or ""}),
                             user=accounts.drop_for_service(svc))
            data = {"sha": sha, "previous": previous, "step": "deploy", "kind": kind, "deploy_id": deploy_id,
                    "exit": res.returncode, "timed_out": res.timed_out, "duration": round(res.duration, 2),
                    "tail": res.tail_text()}
            if not res.ok:
                d.reason = ("deploy command timed out after "
                            f"{svc.deploy_timeout:.0f}s" if res.timed_out else f"deploy command failed: {res.describe()}")
                data["reason"] = d.reason
                d.fail_event_id = run.emit("deploy.fail", data, sha=sha).id
                journal.deploy_finish(deploy_id, "failed", d.reason)
                run.say(f"✘ {d.reason}")
                return d
            run.emit("deploy.complete", data, sha=sha)
            run.say(f"deploy command finished in {res.duration:.1f}s")
        else:
            run.emit("deploy.complete", {"sha": sha, "previous": previous, "step": "deploy", "kind": kind,
                                         "deploy_id": deploy_id, "note": "no deploy command configured"}, sha=sha)
        d.stage = "health"
        journal.deploy_step(deploy_id, "health")
        if not svc.health.configured:
            # No probe configured means no gate to fail: say so loudly rather than invent a pass.
            run.say(f"warning: {svc.name} has no [health] probe: the deploy is not gated")
            d.ok, d.stage, d.reason = True, "done", "deployed (no health gate configured)"
            journal.deploy_finish(deploy_id, "healthy", d.reason)
            return d
        from opskit.deploy import health

        h = svc.health
        run.say(f"health gate: watching for {h.window:g}s (startup {h.startup:g}s, {h.failures} failures fail it)")
        verdict = health.gate(h, journal=journal, service=svc.name, chain=run.chain, sha=sha, clock=run.clock,
                              on_probe=lambda p: run.say(f"  probe +{p.at:.1f}s {'ok ' if p.ok else 'BAD'} {p.detail}"))
        d.health_event_id = verdict.event_id
        if verdict.healthy:
            d.ok, d.stage, d.reason = True, "done", verdict.reason or "healthy"
            journal.deploy_finish(deploy_id, "healthy", None)
            run.say(f"✔ healthy: {verdict.reason}")
        else:
            d.reason = verdict.reason or "health gate failed"
            d.fail_event_id = verdict.event_id
            journal.deploy_finish(deploy_id, "failed", d.reason)
            run.say(f"✘ health gate failed: {d.reason}")
        return d
    except BaseException as e:
        # A crash or Ctrl-C inside a step: leave a record of where it stopped (ARCHITECTURE §6).
        # The row ends 'interrupted', never 'failed': the commit got no verdict, so the next run
        # (cron's `opskit deploy`) must deploy it again, not call it "already deployed".
        ctrl_c = isinstance(e, KeyboardInterrupt)
        why = "interrupted" if ctrl_c else redact(f"{type(e).__name__}: {e}")[:300]
        ev: Event | None = None
        try:
            ev = run.emit("deploy.fail", {"sha": sha, "previous": previous, "step": d.stage, "kind": kind,
                                          "deploy_id": deploy_id, "reason": why, "interrupted": ctrl_c,
                                          "crashed": not ctrl_c}, sha=sha)
            journal.deploy_finish(deploy_id, "interrupted", why)
        except Exception:
            pass
        # A git or OS failure mid-deploy (a leftover .git/index.lock, a full disk): someone must
        # know. The revert's own redeploy is announced by revert.py, which freezes the service.
        if isinstance(e, Exception) and not (kind == "revert" and isinstance(e, OpsError)):
            what = "revert" if kind == "revert" else "deploy"
            notify(run, f"{svc.name}: the {what} of {short(sha)} stopped at step '{d.stage}': {why}\n"
                        f"It did not reach a verdict; the next `opskit deploy {svc.name}` tries again once "
                        f"the cause is fixed. Event: #{ev.id if ev else '?'}",
                   title=f"{svc.name}: {what} of {short(sha)} crashed", level="error",
                   event_id=ev.id if ev else None)
            mark_notified(e)
        raise


def mark_notified(e: BaseException) -> None:
    """Note on the exception that it was announced already (on_post_receive must not repeat it)."""
    try:
        e._opskit_notified = True  # type: ignore[attr-defined]
    except Exception:
        pass


def was_notified(e: BaseException) -> bool:
    return bool(getattr(e, "_opskit_notified", False))


# --- steps ---------------------------------------------------------------------------------

def step_check_frozen(run: Run) -> None:
    from opskit.deploy.revert import is_frozen

    frozen = is_frozen(run.journal, run.service)
    if not frozen:
        return
    reason = (f"{run.service} is frozen since {frozen.get('since', '?')}: {frozen.get('reason', '?')}; "
              f"deploys are refused until `opskit unfreeze {run.service}`")
    last = run.journal.last("deploy.fail", service=run.service)
    # cron runs `deploy` every minute in pull mode: one refusal per commit, not one a minute.
    if not (last and last.data.get("frozen") and last.data.get("sha") == run.sha):
        run.emit("deploy.fail", {"sha": run.sha, "step": "frozen", "frozen": True, "reason": reason,
                                 "frozen_event": frozen.get("event_id")})
    run.say(f"✘ refused: {reason}")
    run.finish("frozen", reason)
    raise StopChain


def step_report_interrupted(run: Run) -> None:
    """We hold the lock, so any deploy still marked running died mid-way (SIGKILL, reboot)."""
    for row in run.journal.running_deploys(run.service):
        where = row["step"] or "start"
        alive = proc.pid_alive(int(row["pid"] or 0))
        reason = (f"deploy {short(row['sha'])} (pid {row['pid']}, started {row['started']}) was interrupted "
                  f"at step '{where}'" + ("" if not alive else " (its pid is alive but no longer holds the lock)"))
        run.journal.deploy_finish(int(row["id"]), "interrupted", reason)
        ev = run.emit("deploy.fail", {"sha": row["sha"], "previous": row["previous"], "step": where,
                                      "deploy_id": row["id"], "pid": row["pid"], "interrupted": True,
                                      "reason": reason}, sha=row["sha"])
        run.say(f"warning: {reason}; marked interrupted (event {ev.id}), the lock is recovered")
        notify(run, f"{run.service}: {reason}. The next deploy takes over; check `opskit status`.",
               title=f"{run.service}: deploy interrupted", level="warning", event_id=ev.id)
    _report_interrupted_rollback(run)


def _report_interrupted_rollback(run: Run) -> None:
    """A failed deploy whose rollback died mid-way (SIGKILL between rollback.start and its end):
    close it with rollback.fail in its own chain, so it is reported once and the journal says
    where the branch was left (the revert landed or not; revert.land_commit is one CAS)."""
    # Not just the newest row: a kill during the revert's own redeploy leaves the revert row
    # (kind 'revert', now 'interrupted') on top of the failed deploy whose rollback it was.
    found = next(((row, start) for row in run.journal.deploys(run.service, limit=50)
                  if row["kind"] == "deploy" and row["status"] == "failed"
                  and (start := open_rollback(run.journal, run.service, row)) is not None), None)
    if found is None:
        return
    row, start = found
    try:
        tip = canonical_tip(run.svc)
    except OpsError:
        tip = None
    landed = tip is not None and tip != row["sha"]
    reason = (f"the rollback of {short(row['sha'])} (event {start.id}) was interrupted "
              + (f"after {run.svc.branch} moved to {short(tip)}" if landed
                 else f"before its revert landed ({run.svc.branch} is still at {short(tip)})"))
    ev = run.journal.append("rollback.fail", run.service, {
        "bad": row["sha"], "reason": reason, "status": "interrupted", "interrupted": True,
        "rollback_event": start.id, "tip": tip, "landed": landed}, chain=row["chain"], sha=row["sha"])
    run.say(f"warning: {reason} (event {ev.id}); this run deploys the branch tip again")
    notify(run, f"{run.service}: {reason}. This run deploys {run.svc.branch} again; check `opskit status`.",
           title=f"{run.service}: rollback interrupted", level="warning", event_id=ev.id)


def step_deliver(run: Run) -> None:
    assert run.sha is not None
    run.delivery = deliver(run, run.sha, kind="deploy", previous=run.previous)
    if run.delivery.ok:
        run.finish("healthy", run.delivery.reason)
        raise StopChain


def step_auto_revert(run: Run) -> None:
    """The deploy failed: undo it (revert.py decides how, and when to freeze instead)."""
    from opskit.deploy.revert import revert_locked

    d = run.delivery
    assert d is not None and run.sha is not None
    rr = revert_locked(run, bad=run.sha, reason=d.reason, bad_deploy_id=d.deploy_id, stage=d.stage,
                       trigger_event=d.fail_event_id)
    status = "reverted" if rr.ok else "failed"
    run.finish(status, f"{d.reason}; " + (f"reverted to {short(rr.revert_sha)}" if rr.ok else rr.reason), ok=False)
    assert run.result is not None
    run.result.revert = rr
    raise StopChain


def deploy_steps() -> list[tuple[str, Step]]:
    """The steps after the lock; a feature-branch chain puts test/review/merge in front."""
    return [("frozen", step_check_frozen), ("interrupted", step_report_interrupted),
            ("deploy", step_deliver), ("revert", step_auto_revert)]


# --- entry points ----------------------------------------------------------------------------

def deploy(settings: Settings, journal: Journal, service: str, sha: str | None = None, *,
           chain: str | None = None, clock: Clock = SYSTEM, write: Write = print,
           lock_wait: float = 600.0, newest_only: bool | None = None) -> DeployResult:
    """Deploy sha (or the branch tip when it moved since the last deploy) with gate and revert.

    newest_only (default: for push chains, ids `p-…`, also when the hook runs it in the
    background): a pushed sha that is no longer the branch tip once the lock is ours is
    superseded, not deployed — 20 pushes waiting on the lock must not put older commits live
    after newer ones; the push that brought the tip deploys it. A human's `--sha` is obeyed.
    """
    if newest_only is None:
        newest_only = bool(chain and chain.startswith("p-"))
    svc = settings.service(service)
    accounts.check_actor(svc)
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain or new_chain_id(), clock=clock, write=write)
    if sha is None:
        # Cheap check first, no lock: cron calls this every minute in pull mode.
        tip = canonical_tip(svc)
        if tip is None:
            raise OpsError(f"{service}: branch {svc.branch!r} not found in {svc.repo}; push it first")
        if tip == last_deployed(journal, service):
            run.sha = tip
            return run.finish("nothing", f"{svc.branch} is at {short(tip)}, already deployed")
    with ServiceLock(settings.state_dir, service, wait=lock_wait, clock=clock,
                     what=f"deploy {short(sha) if sha else svc.branch}", on_wait=run.say) as lock:
        run.lock_fd = lock.fd
        wt = fetch_worktree(svc)
        if sha is None:
            target = wt.rev_parse(f"refs/remotes/origin/{svc.branch}")
            if target is None:
                raise OpsError(f"{service}: fetched no {svc.branch!r} from {svc.repo}")
            if target == last_deployed(journal, service):  # someone deployed it while we waited
                run.sha = target
                return run.finish("nothing", f"{svc.branch} is at {short(target)}, already deployed")
        else:
            target = wt.rev_parse(sha)
            if target is None:
                raise UsageError(f"{service}: commit {sha!r} is not in {svc.repo}; push it first or fix the SHA")
            tip = wt.rev_parse(f"refs/remotes/origin/{svc.branch}")
            if newest_only and tip is not None and tip != target and wt.is_ancestor(target, tip):
                run.sha = target
                reason = (f"{svc.branch} moved to {short(tip)} while this push waited for the deploy lock; "
                          f"the newer push deploys it, {short(target)} is not deployed on its own")
                run.emit("push.superseded", {"branch": svc.branch, "by": tip, "reason": reason})
                run.say(f"superseded: {reason}")
                return run.finish("superseded", reason, ok=True)
        run.sha = target
        run.previous = wt.head()
        return run_steps(run, deploy_steps())


def run_chain(settings: Settings, journal: Journal, service: str, ref: str, sha: str, *,
              chain: str, clock: Clock = SYSTEM, write: Write = print) -> int:
    """Feature-branch chain: test → review → merge → deploy (issue 5; lives in opskit.chain.feature)."""
    from opskit.chain import feature as chain_mod

    result = chain_mod.start(settings, journal, service, ref, sha, chain=chain, clock=clock, write=write)
    if result.status != "background":
        write(f"{service}: {result.status}: {result.reason}")
    return result.exit_code


def on_post_receive(config_path: Path, service: str, updates: list[tuple[str, str, str]],
                    write: Write) -> int:
    """post-receive entry: deploy pushes to `branch` (direct_push), start chains for features.

    A post-receive hook cannot undo a push; its exit code is only shown to the pusher.
    """
    from opskit.base import config

    settings = config.load(config_path)
    svc = settings.service(service)
    journal = Journal(settings.state_dir)
    code = int(ExitCode.OK)
    branch_ref = f"refs/heads/{svc.branch}"
    for old, new, ref in updates:
        chain = new_chain_id("p")
        if new == ZERO:
            action = "deleted"
        elif ref == branch_ref:
            action = "deploy" if svc.direct_push else "ignored (direct_push = false)"
        elif ref.startswith("refs/heads/") and any(
                fnmatch.fnmatchcase(ref[len("refs/heads/"):], pat) for pat in svc.feature_branches):
            action = "chain"
        else:
            action = "ignored"
        journal.append("push.received", service, {"ref": text(ref), "old": old, "new": new, "action": action},
                       chain=chain, sha=None if new == ZERO else new)
        try:
            if action == "deploy":
                if svc.background:
                    code = max(code, _spawn_background(settings, svc, new, chain, write))
                else:
                    result = deploy(settings, journal, service, new, chain=chain, write=write)
                    write(f"{service}: {result.status}: {result.reason}")
                    code = max(code, result.exit_code)
            elif action == "chain":
                code = max(code, run_chain(settings, journal, service, ref, new, chain=chain, write=write))
            elif action.startswith("ignored (direct_push"):
                write(f"{service}: push to {svc.branch} not deployed: direct_push is off for this service")
        except OpsError as e:
            # One ref's failure (the lock stayed busy, git failed) must not drop the other refs
            # of the same push, and must not pass unnoticed: the push itself has landed.
            _ref_failed(settings, journal, svc, ref, new, action, chain, e, write)
            code = max(code, int(ExitCode.FAILED))
    return code


def _ref_failed(settings: Settings, journal: Journal, svc: ServiceSettings, ref: str, new: str, action: str,
                chain: str, e: OpsError, write: Write) -> None:
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain, write=write, sha=new)
    why = redact(str(e))[:500]
    what = "deploy" if action == "deploy" else "feature-branch chain"
    ev = run.emit("push.fail", {"ref": text(ref), "new": new, "action": action, "reason": why,
                                "error": type(e).__name__})
    run.say(f"{svc.name}: {text(ref)} {short(new)}: the {what} failed: {why} (event {ev.id})")
    if not was_notified(e):
        notify(run, f"{svc.name}: the push of {text(ref)} ({short(new)}) landed, but its {what} failed: {why}\n"
                    f"Nothing else was done for this ref; see `opskit events --service {svc.name}`. Event: #{ev.id}",
               title=f"{svc.name}: {what} of {text(ref)} failed", level="error", event_id=ev.id)


def _spawn_background(settings: Settings, svc: ServiceSettings, sha: str, chain: str, write: Write) -> int:
    log = settings.state_dir / "logs" / f"{svc.name}.log"
    argv = [sys.executable, "-m", "opskit"]
    if settings.path is not None:
        argv += ["--config", str(Path(settings.path).resolve())]
    argv += ["deploy", svc.name, "--sha", sha, "--chain", chain]
    statefs.mkdir(log.parent, settings.state_dir)
    pid = proc.spawn_detached(argv, log=log, cwd="/", env=proc.clean_env())
    statefs.share(log, settings.state_dir)
    write(f"{svc.name}: deploying {short(sha)} in the background (pid {pid}); log: {log}; "
          f"follow it with `opskit events --service {svc.name} --follow`")
    return int(ExitCode.OK)
