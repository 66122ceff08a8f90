"""The feature-branch chain: push → test → review → merge → deploy → gate → auto-revert.

    post-receive (push of a `feature_branches` ref)
      push.received → test (temp checkout, test_timeout) → review (temp checkout, review_timeout;
      0 approve, 1 reject, 3 park for a human) → [service lock] still the branch tip? →
      merge into `branch` (merge commit or fast-forward, landed with git/land.py's land_commit, a compare-and-swap)
      → the pipeline's own steps: frozen? → roll out (deploy, health gate) → auto-revert

Every event of one push shares its chain id and carries a commit. Tests and reviews run
before the lock (they may take long and touch nothing shared); the merge and the deploy run
under the service's lock, so chains and direct deploys never interleave. The merge lands
with `update-ref` in the bare repo: the pre-receive lockdown never sees it and post-receive
does not start a second pipeline.

A failing step stops the chain, journals why with the output tail, notifies, and leaves
`branch` untouched: a merge is computed in a throwaway worktree and lands only whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opskit.base import accounts, bwrap, proc, roles
from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import ExitCode, LockBusy, OpsError, UsageError, redact
from opskit.base.lock import ServiceLock
from opskit.base.text import printable, short
from opskit.chain import approvals, decision_text
from opskit.deploy.pipeline import GUARD_STEPS, ROLLOUT_STEPS
from opskit.deploy.run import DeployResult, Run, StopChain, Write, announce_run, run_steps
from opskit.git.land import land_commit
from opskit.git.repo import OPSKIT_IDENT, Git
from opskit.git.worktree import deployed_head
from opskit.notify import decisions
from opskit.notify.announce import event_ref
from opskit.storage import fleet_locks
from opskit.storage.journal import Event, Journal

LOCK_WAIT = 1800.0  # a chain waits behind a running deploy/chain at most this long
STREAM_LINES = 200  # lines of test/review output shown to the pusher; the journal keeps the tail
TAIL_CHARS = 8000  # a test printing megabytes on one line still costs a bounded event
NOTIFY_TAIL = 15
REVIEW_EXITS = {0: "approve", 1: "reject", 3: "needs a human"}

@dataclass
class ChainResult:
    service: str
    chain: str
    branch: str
    sha: str  # the pushed commit (the feature branch tip)
    status: str  # deployed | reverted | failed | frozen | nothing | parked | test-failed
    #              | rejected | review-failed | merge-failed | superseded | deleted | busy
    ok: bool
    reason: str
    exit_code: int
    merge: str | None = None  # the commit landed on `branch`
    approval: int | None = None  # the parked change's id
    deploy: DeployResult | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "chain": self.chain, "branch": self.branch, "sha": self.sha,
                "status": self.status, "ok": self.ok, "reason": self.reason, "exit_code": self.exit_code,
                "merge": self.merge, "approval": self.approval,
                "deploy": self.deploy.to_dict() if self.deploy else None}


@dataclass
class _Ctx:
    """One chain: the pushed commit and what the steps learned about it."""

    run: Run
    branch: str
    head: str
    base: str | None
    bare: Git
    approval: approvals.Parked | None = None  # set when a human approved it
    stopped: ChainResult | None = None
    merge: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def svc(self) -> ServiceSettings:
        return self.run.svc

    def env(self) -> dict[str, str]:
        """What a test or review command is told (the range is base..head): an allowlist, not
        our environment. They run code from the pushed, unreviewed branch, which must not see
        webhook URLs, tokens or anything else opskit (or the pusher's shell) was given."""
        env = proc.untrusted_env()
        env.update({"OPSKIT_SERVICE": self.svc.name, "OPSKIT_BRANCH": self.branch,
                    "OPSKIT_BASE": self.base or "", "OPSKIT_HEAD": self.head,
                    "OPSKIT_RANGE": f"{self.base}..{self.head}" if self.base else self.head,
                    "OPSKIT_CHAIN": self.run.chain})
        return env

    def stop(self, status: str, reason: str, exit_code: int = ExitCode.FAILED, *, ok: bool = False) -> ChainResult:
        self.stopped = ChainResult(service=self.svc.name, chain=self.run.chain, branch=printable(self.branch),
                                   sha=self.head, status=status, ok=ok, reason=reason, exit_code=int(exit_code),
                                   merge=self.merge,
                                   approval=self.approval.id if self.approval else self.extra.get("approval"))
        return self.stopped


# --- entry points ----------------------------------------------------------------------------

def supersede_parked(journal: Journal, service: str, ref: str, sha: str, *, chain: str,
                     clock: Clock = SYSTEM) -> list[str]:
    """A new push of a branch supersedes its parked change: journal it; the lines for the pusher."""
    branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref
    lines = []
    for old in approvals.supersede(journal, service, branch, by_chain=chain, by_sha=sha, clock=clock):
        journal.append("push.superseded", service, {"branch": printable(branch), "approval": old.id, "by": sha,
                                                     "by_chain": chain, "reason": old.reason, "was": "parked"},
                       chain=old.chain, sha=old.sha)
        lines.append(f"{service}: parked change #{old.id} ({short(old.sha)}) is superseded by this push")
    return lines


def run_now(settings: Settings, journal: Journal, service: str, ref: str, sha: str, *, chain: str,
            clock: Clock = SYSTEM, write: Write = print, lock_wait: float = LOCK_WAIT) -> ChainResult:
    """The whole chain in this process (the push's detached worker, `opskit push-run`)."""
    ctx = _context(settings, journal, service, ref, sha, chain=chain, clock=clock, write=write)
    clear_stale(journal)
    with _crash_recorded(ctx):
        for name, step in (("test", _test), ("review", _review)):
            _progress(ctx, name)
            step(ctx)
            if ctx.stopped is not None:
                return ctx.stopped
        return _land_and_roll_out(ctx, lock_wait)


def approve(settings: Settings, journal: Journal, approval_id: int, *, clock: Clock = SYSTEM,
            write: Write = print, lock_wait: float = LOCK_WAIT, by: str | None = None) -> ChainResult:
    """`opskit approve ID`: record who decided, then resume the chain at the merge step."""
    found = approvals.get(journal, approval_id)
    if found is None:
        raise UsageError(f"no parked change #{approval_id}; `opskit pending` lists the ones waiting")
    roles.refuse_push_account("approve", settings.state_dir, settings.services.values(), found.service)
    svc = settings.services.get(found.service)
    owner = accounts.service_account(svc) if svc is not None else None
    if os.geteuid() != 0 and owner is not None and owner.pw_uid != os.geteuid():
        # The merge runs git in the account's repository, which only root may hand to that
        # account: said before the decision, so the change keeps waiting.
        raise UsageError(f"approve: the merge runs git in service {found.service}'s repository, which belongs to "
                         f"{owner.pw_name}; an operator approves as root: sudo opskit approve {approval_id} "
                         "(or taps the button on a phone)")
    # Everything that can refuse (service gone from the config, repo missing) before the decision.
    ctx = _context(settings, journal, found.service, f"refs/heads/{found.raw_branch}", found.sha, chain=found.chain,
                   clock=clock, write=write, base=found.base)
    row = approvals.decide(journal, approval_id, "approved", by=by or approvals.who(), clock=clock)
    ctx.approval = row
    ctx.run.emit("review.pass", {"approval": row.id, "branch": printable(row.branch), "decided_by": row.decided_by,
                                 "human": True, "verdict": "approved", "cause": row.cause})
    ctx.run.say(f"{row.service}: change #{row.id} ({printable(row.branch)} {short(row.sha)}) approved by "
                f"{row.decided_by}; merging")
    try:
        with _crash_recorded(ctx):
            result = _land_and_roll_out(ctx, lock_wait)
    except BaseException as e:
        if ctx.merge is None:  # nothing landed: the decision must not be used up by a crash
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            approvals.reopen(journal, row.id, f"the approval did not get to merge ({why})")
        raise
    if result.status in ("superseded", "deleted"):
        approvals.mark(journal, row.id, "superseded", result.reason)
    elif result.status in ("busy", "frozen") and ctx.merge is None:
        # never got to merge (the lock stayed busy, the service is frozen): the human may
        # approve it again later, e.g. after `opskit unfreeze`
        approvals.reopen(journal, row.id, result.reason)
    elif result.status == "merge-failed" and ctx.merge is None:
        # Nothing landed (a conflict, git failing as the account): the decision is not used up —
        # the change waits again, and the approver is told (a tap's reply carries this reason).
        approvals.reopen(journal, row.id, result.reason)
        result.reason += (f"; change #{row.id} waits again: fix the cause and `opskit approve {row.id}`, "
                          "or push the branch again")
    return result


@contextlib.contextmanager
def _crash_recorded(ctx: _Ctx) -> Iterator[None]:
    """A crash or Ctrl-C in test, review or merge leaves an event saying where it stopped
    ; roll_out() records its own. Progress is cleared either way."""
    try:
        yield
    except BaseException as e:
        step = str(ctx.run.notes.get("chain_step") or "")
        if step in ("test", "review", "merge", "current", "waiting for the lock"):
            kind = step if step in ("test", "review") else "merge"
            why = "interrupted" if isinstance(e, KeyboardInterrupt) else redact(f"{type(e).__name__}: {e}")[:300]
            try:
                ctx.run.emit(f"{kind}.fail", {"branch": printable(ctx.branch), "step": step, "reason": why,
                                              "crashed": True}, sha=ctx.head)
            except Exception:
                pass
        raise
    finally:
        _progress(ctx, None)


# --- context and progress ---------------------------------------------------------------------

def _context(settings: Settings, journal: Journal, service: str, ref: str, sha: str, *, chain: str,
             clock: Clock, write: Write, base: str | None = None) -> _Ctx:
    svc = settings.service(service)
    if svc.pull_mode:
        raise UsageError(f"{service}: feature-branch chains need the canonical repo on this host (push mode); "
                         f"{svc.repo} is remote")
    bare = Git(svc.repo)
    bare.require_repo("repository (service repo)")
    branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref
    run = Run(settings=settings, journal=journal, svc=svc, chain=chain, clock=clock, write=write, sha=sha)
    if base is None:
        tip = bare.branch_tip(svc.branch)
        if tip is not None:
            r = bare.run("merge-base", tip, sha, check=False)
            base = r.stdout.strip() or None if r.ok else None
    return _Ctx(run=run, branch=branch, head=sha, base=base, bare=bare)


def _progress_key(ctx: _Ctx) -> str:
    return f"{ctx.svc.name} {ctx.run.chain}"


def _progress(ctx: _Ctx, step: str | None) -> None:
    """Where each chain is, for `opskit status` (kv scope `chain`); None: it ended."""
    ctx.run.notes["chain_step"] = step
    try:
        if step is None:
            ctx.run.journal.kv_delete("chain", _progress_key(ctx))
            return
        ctx.run.journal.kv_set("chain", _progress_key(ctx), {
            "service": ctx.svc.name, "chain": ctx.run.chain, "branch": printable(ctx.branch), "sha": ctx.head,
            "step": step, "since": iso(ctx.run.clock.now()), "pid": os.getpid()})
    except Exception:  # progress is for the eyes; it never stops a chain
        pass


# --- test and review (before the lock, in throwaway checkouts) --------------------------------

def _capped(ctx: _Ctx, what: str) -> Callable[[str], None]:
    shown = [0]

    def say(line: str) -> None:
        shown[0] += 1
        if shown[0] <= STREAM_LINES:
            ctx.run.say(f"  | {line}")
        elif shown[0] == STREAM_LINES + 1:
            ctx.run.say(f"  | … ({what} output continues; its last lines are kept in the event)")

    return say


def _tail(res: proc.Result) -> str:
    t = res.tail_text()
    return t if len(t) <= TAIL_CHARS else "…" + t[-TAIL_CHARS:]


def _short_tail(tail: str) -> str:
    return "\n".join(tail.splitlines()[-NOTIFY_TAIL:])[-1500:]


def _run_in_checkout(ctx: _Ctx, command: str, timeout: float, what: str) -> proc.Result:
    # Never the production worktree: a test may write, build or delete anything it likes.
    # Pushed code runs in the sandbox (bwrap.py) unless the service says sandbox = "none";
    # a bwrap that cannot start raises bwrap.Unavailable: the step fails, never runs bare.
    tool = bwrap.require(ctx.svc.name) if ctx.svc.sandbox == "bwrap" else None
    with ctx.bare.temp_worktree(ctx.head, prefix=f"opskit-{what}-") as wt:
        # As root, the step runs as the service's account, sandboxed or not.
        user = accounts.drop_for_service(ctx.svc)
        if tool is None:
            return proc.run(proc.shell_argv(command), cwd=wt.path, timeout=timeout, env=ctx.env(),
                            stream=_capped(ctx, what), user=user)
        with bwrap.private_copy(wt.path, user) as work:
            policy = bwrap.policy_for(ctx.run.settings, ctx.svc, work, wt.path, command, home=_home(user))
            return proc.run(bwrap.argv(policy, proc.shell_argv(command), bwrap=tool), cwd=work, timeout=timeout,
                            env=ctx.env(), stream=_capped(ctx, what), user=user)


def _home(user: Any) -> Path | None:
    return Path(user.pw_dir) if user is not None else None


def _not_found(ctx: _Ctx, what: str, command: str, res: proc.Result) -> str | None:
    """Why a step's program was not there, when that is the cause: hidden by the sandbox (which
    path hides it, how to show it), or not found at all — the configured command, not bwrap's argv."""
    if res.ok or res.timed_out:
        return None
    hidden = bwrap.hidden_tools(ctx.run.settings, ctx.svc, command, home=_home(accounts.drop_for_service(ctx.svc)),
                                path=ctx.env().get("PATH"))
    if hidden:
        return f"{what}: \"{command}\" (exit {res.returncode}) — {hidden[0].advice(ctx.svc.name)}"
    if res.returncode == 127:
        inside = " inside the sandbox" if ctx.svc.sandbox == "bwrap" else ""
        return f"{what} command not found{inside}: `{command}` (exit 127); fix `{what}` in the config"
    return None


def _sandbox_fields(ctx: _Ctx, e: OpsError | None = None) -> dict[str, Any]:
    return {"sandbox": "unavailable" if isinstance(e, bwrap.Unavailable) else ctx.svc.sandbox}


def _test(ctx: _Ctx) -> None:
    svc, run = ctx.svc, ctx.run
    if not svc.test:
        run.emit("test.skipped", {"branch": printable(ctx.branch), "reason": "no `test` command configured"})
        run.say(f"test: skipped (no `test` command configured for {svc.name})")
        return
    run.say(f"test: {svc.test} (timeout {svc.test_timeout:g}s, sandbox {svc.sandbox}) on {short(ctx.head)}")
    try:
        res = _run_in_checkout(ctx, svc.test, svc.test_timeout, "test")
    except OpsError as e:
        _fail_test(ctx, f"the test could not run: {e}", {"error": str(e), **_sandbox_fields(ctx, e)}, "")
        return
    data: dict[str, Any] = {"branch": printable(ctx.branch), "command": svc.test, "exit": res.returncode,
                            "timed_out": res.timed_out, "duration": round(res.duration, 2), "tail": _tail(res),
                            **_sandbox_fields(ctx)}
    if res.ok:
        run.emit("test.pass", data)
        run.say(f"✔ test passed in {res.duration:.1f}s")
        return
    reason = (f"test timed out after {svc.test_timeout:g}s" if res.timed_out
              else _not_found(ctx, "test", svc.test, res) or f"test failed: {res.describe()}")
    _fail_test(ctx, reason, data, data["tail"])


def _fail_test(ctx: _Ctx, reason: str, data: dict[str, Any], tail: str) -> None:
    run = ctx.run
    ev = run.emit("test.fail", {**data, "reason": reason, "branch": printable(ctx.branch)})
    run.say(f"✘ {reason}")
    if ctx.svc.test_failure == "human":
        _park(ctx, f"the test failed ({reason}) and test_failure = \"human\"", tail)
        return
    _announce_stop(ctx, "tests failed", reason, tail, ev, level="error")
    ctx.stop("test-failed", reason)


def _review(ctx: _Ctx) -> None:
    svc, run = ctx.svc, ctx.run
    if ctx.stopped is not None:
        return
    if not svc.review:
        run.emit("review.skipped", {"branch": printable(ctx.branch), "reason": "no `review` command configured"})
        run.say(f"review: skipped (no `review` command configured for {svc.name})")
        return
    run.say(f"review: {svc.review} (sandbox {svc.sandbox}) on {ctx.base[:10] + '..' if ctx.base else ''}{short(ctx.head)}")
    data: dict[str, Any] = {"branch": printable(ctx.branch), "command": svc.review, "base": ctx.base, "head": ctx.head,
                            **_sandbox_fields(ctx)}
    try:
        res = _run_in_checkout(ctx, svc.review, svc.review_timeout, "review")
    except OpsError as e:
        _review_error(ctx, f"the review could not run: {e}", {**data, **_sandbox_fields(ctx, e)}, "")
        return
    data.update({"exit": res.returncode, "timed_out": res.timed_out, "duration": round(res.duration, 2),
                 "tail": _tail(res)})
    if res.timed_out:
        _review_error(ctx, f"review timed out after {svc.review_timeout:g}s", data, data["tail"])
    elif res.returncode == 0:
        run.emit("review.pass", {**data, "verdict": "approved"})
        run.say("✔ review approved")
    elif res.returncode == 1:
        reason = f"review rejected the change: {res.describe()}"
        ev = run.emit("review.fail", {**data, "verdict": "rejected", "reason": reason})
        run.say(f"✘ {reason}")
        _announce_stop(ctx, "review rejected", reason, data["tail"], ev, level="warning")
        ctx.stop("rejected", reason)
    elif res.returncode == 3:
        _park(ctx, "the review asked for a human (exit 3)", data["tail"], review=data)
    elif (missing := _not_found(ctx, "review", svc.review, res)) is not None:
        _review_error(ctx, missing, data, data["tail"])
    elif res.returncode == 126:
        _review_error(ctx, f"review command is not executable: `{svc.review}` (exit 126); "
                      "chmod +x it or fix `review` in the config", data, data["tail"])
    else:
        _review_error(ctx, f"review exited {res.returncode}, which means nothing (0 approve, 1 reject, "
                      f"3 needs a human): {res.describe()}", data, data["tail"])


def _review_error(ctx: _Ctx, reason: str, data: dict[str, Any], tail: str) -> None:
    ev = ctx.run.emit("review.fail", {**data, "verdict": "error", "reason": reason})
    ctx.run.say(f"✘ {reason}")
    _announce_stop(ctx, "review failed", reason, tail, ev, level="error")
    ctx.stop("review-failed", reason)


def _announce_stop(ctx: _Ctx, what: str, reason: str, tail: str, ev: Event, *, level: str) -> None:
    svc = ctx.svc
    lines = [f"{svc.name}: {what} for {printable(ctx.branch)} ({short(ctx.head)}); not merged, "
             f"{svc.branch} is untouched.", f"Why: {reason}"]
    if tail.strip():
        lines.append("Last lines:\n" + _short_tail(tail))
    lines.append(f"Event: {event_ref(ev.id)} (`opskit events --service {svc.name} --since 1h`)")
    announce_run(ctx.run, "\n".join(lines), title=f"{svc.name}: {what} ({printable(ctx.branch)})", level=level,
           event_id=ev.id)


def _park(ctx: _Ctx, cause: str, tail: str, review: dict[str, Any] | None = None) -> None:
    run, svc = ctx.run, ctx.svc
    row = approvals.park(run.journal, service=svc.name, chain=run.chain, branch=ctx.branch, sha=ctx.head,
                         base=ctx.base, cause=cause, clock=run.clock)
    ev = run.emit("review.needs-human", {**(review or {}), "branch": printable(ctx.branch), "approval": row.id,
                                         "cause": cause, "tail": tail[-TAIL_CHARS:],
                                         "approve": f"opskit approve {row.id}",
                                         "reject": f'opskit reject {row.id} --reason "…"'})
    approvals.set_event(run.journal, row.id, ev.id)
    run.say(f"⏸ parked as change #{row.id}: {cause}")
    run.say(f"  decide: opskit approve {row.id}   |   opskit reject {row.id} --reason \"…\"")
    lines = decision_text.parked(run.journal, ctx.bare, service=svc.name, branch=printable(ctx.branch), head=ctx.head,
                                 base=ctx.base, cause=cause, approval_id=row.id, chain=run.chain, tail=tail)
    lines += [f"Approve (merge and deploy): `opskit approve {row.id}`",
              f"Reject: `opskit reject {row.id} --reason \"…\"`"]
    buttons = decisions.buttons(run.settings, run.journal, svc.name,
                                [("approve", str(row.id)), ("reject", str(row.id))], clock=run.clock)
    announce_run(run, "\n".join(lines), title=f"{svc.name}: approval needed ({printable(ctx.branch)})",
                 level="warning", event_id=ev.id, actions=buttons)
    ctx.extra["approval"] = row.id
    ctx.stop("parked", f"waiting for a human as change #{row.id}: {cause}", ExitCode.OK, ok=True)


# --- under the lock: still current? merge, land, then the pipeline's own steps ----------------

def _land_and_roll_out(ctx: _Ctx, lock_wait: float) -> ChainResult:
    run, svc = ctx.run, ctx.svc
    _progress(ctx, "waiting for the lock")
    try:
        what = f"chain {printable(ctx.branch)} {short(ctx.head)}"
        with ServiceLock(run.settings.state_dir, svc.name, wait=lock_wait, clock=run.clock, what=what,
                         on_wait=run.say) as lock, \
                fleet_locks.deploy_lock(run.settings, run.journal, svc, wait=lock_wait, what=what,
                                        say=run.say) as shared:
            run.lock_fd = lock.fd
            if shared is not None:
                run.notes["fleet_lock"] = shared.data()
            # No merge while frozen, and a killed earlier deploy is reported first: the
            # pipeline's guard, then this chain's own steps, then the pipeline's roll-out.
            steps: list[tuple[str, Callable[[Run], None]]] = [
                *GUARD_STEPS, ("current", lambda r: _still_current(ctx)), ("merge", lambda r: _merge(ctx)),
                *ROLLOUT_STEPS]
            result = run_steps(run, [(n, _tracked(ctx, n, s)) for n, s in steps])
    except LockBusy as e:
        ev = run.emit("merge.fail", {"branch": printable(ctx.branch), "reason": str(e), "step": "lock"})
        run.say(f"✘ {e}")
        _announce_stop(ctx, "merge not attempted", str(e), "", ev, level="error")
        return ctx.stop("busy", str(e))
    if ctx.stopped is not None:
        return ctx.stopped
    status = {"healthy": "deployed"}.get(result.status, result.status)
    return ChainResult(service=svc.name, chain=run.chain, branch=printable(ctx.branch), sha=ctx.head, status=status,
                       ok=result.ok, reason=result.reason, exit_code=result.exit_code, merge=ctx.merge,
                       approval=ctx.approval.id if ctx.approval else None, deploy=result)


def _tracked(ctx: _Ctx, name: str, step: Callable[[Run], None]) -> Callable[[Run], None]:
    def tracked(run: Run) -> None:
        _progress(ctx, name)
        step(run)

    return tracked


def _halt(ctx: _Ctx, status: str, reason: str) -> None:
    """Stop inside run_steps: the pipeline wants a result, the chain keeps its own."""
    ctx.stop(status, reason)
    ctx.run.finish("failed", reason, ok=False)
    raise StopChain


def _still_current(ctx: _Ctx) -> None:
    """A later push of the same branch supersedes a chain still waiting."""
    run = ctx.run
    tip = ctx.bare.branch_tip(ctx.branch)
    if tip == ctx.head:
        return
    if tip is None:
        reason = f"{printable(ctx.branch)} was deleted while its chain waited; nothing merged"
        run.emit("push.superseded", {"branch": printable(ctx.branch), "deleted": True, "by": None, "reason": reason})
        run.say(f"✘ {reason}")
        _halt(ctx, "deleted", reason)
    reason = (f"{printable(ctx.branch)} moved to {short(tip)} while this chain waited; the newer push's chain "
              f"takes over, {short(ctx.head)} is not merged")
    run.emit("push.superseded", {"branch": printable(ctx.branch), "deleted": False, "by": tip, "reason": reason})
    run.say(f"✘ superseded: {reason}")
    _halt(ctx, "superseded", reason)


class _MergeFailed(OpsError):
    def __init__(self, message: str, files: Sequence[str] = ()) -> None:
        self.files = list(files)
        super().__init__(message)


def _merge(ctx: _Ctx) -> None:
    run, svc, bare = ctx.run, ctx.svc, ctx.bare
    tip = bare.branch_tip(svc.branch)
    data: dict[str, Any] = {"branch": printable(ctx.branch), "into": svc.branch, "strategy": svc.merge,
                            "head": ctx.head, "base": tip}
    try:
        if tip is None:
            raise _MergeFailed(f"{svc.branch!r} does not exist in {svc.repo}; push it once first")
        if bare.is_ancestor(ctx.head, tip):
            reason = f"{short(ctx.head)} is already on {svc.branch}; nothing to merge"
            run.emit("merge.complete", {**data, "merge": None, "note": reason})
            run.say(reason)
            ctx.stop("nothing", reason, ExitCode.OK, ok=True)
            run.finish("nothing", reason)
            raise StopChain
        if svc.merge == "ff":
            if not bare.is_ancestor(tip, ctx.head):
                ahead = len(bare.rev_list(f"{ctx.head}..{tip}"))
                raise _MergeFailed(f"cannot fast-forward {svc.branch} to {short(ctx.head)}: {svc.branch} has "
                                   f"{ahead} commit(s) that {printable(ctx.branch)} does not; rebase it on "
                                   f"{svc.branch} and push again")
            new = ctx.head
        else:
            new = _merge_commit(ctx, tip)
        tree = bare.tree(new)
        q = run.journal.quarantined(svc.name, tree)
        if q is not None:
            raise _MergeFailed(f"the merged tree {tree[:12]} was auto-reverted before (rollback event "
                               f"#{q['event_id']}: {q['reason']}); release it first: "
                               f"opskit quarantine release {svc.name} {tree[:12]}")
        land_commit(svc, bare, new, tip, what="merge" if svc.merge == "merge" else "fast-forward")
    except _MergeFailed as e:
        _merge_failed(ctx, str(e), {**data, "conflicts": e.files})
        return
    except OpsError as e:  # the CAS lost (someone pushed meanwhile) or git failed: nothing landed
        _merge_failed(ctx, f"could not land the merge: {e}", data)
        return
    ctx.merge = new
    run.sha = new
    run.previous = deployed_head(svc)
    parents = bare.parents(new)
    run.emit("merge.complete", {**data, "merge": new, "parents": parents,
                                "approved_by": ctx.approval.decided_by if ctx.approval else None}, sha=new)
    run.say(f"✔ merged {printable(ctx.branch)} into {svc.branch}: {short(new)}"
            + (" (fast-forward)" if new == ctx.head else ""))


def _merge_failed(ctx: _Ctx, reason: str, data: dict[str, Any]) -> None:
    ev = ctx.run.emit("merge.fail", {**data, "reason": reason})
    ctx.run.say(f"✘ merge failed: {reason}")
    _announce_stop(ctx, "merge failed", reason, "", ev, level="error")
    _halt(ctx, "merge-failed", reason)


def _merge_commit(ctx: _Ctx, tip: str) -> str:
    """`git merge --no-ff` in a throwaway worktree of the bare repo at the branch tip: the
    first parent is the tip, so `git revert -m 1` (and auto-revert) undoes exactly this."""
    svc, run = ctx.svc, ctx.run
    lines = [f"Merge {printable(ctx.branch)} into {svc.branch}", "",
             f"Merged by opskit chain {run.chain}"
             + (f", approved by {ctx.approval.decided_by} (change #{ctx.approval.id})" if ctx.approval else "")
             + ".", "", f"Opskit-Chain: {run.chain}", f"Opskit-Branch: {printable(ctx.branch)}",
             f"Opskit-Head: {ctx.head}"]
    with ctx.bare.temp_worktree(tip, prefix="opskit-merge-") as wt:
        # No hooks at all: the repo's hooks guard pushes and the production worktree, not our merge
        # (--no-verify alone still lets a post-merge hook run).
        r = wt.run("-c", "core.hooksPath=/dev/null", "merge", "--no-ff", "--no-verify", "--no-edit", "-m", "\n".join(lines), "--end-of-options",
                   ctx.head, check=False, env={**OPSKIT_IDENT, "GIT_MERGE_AUTOEDIT": "no"})
        if not r.ok:
            files = [printable(f) for f in wt.out("diff", "--name-only", "--diff-filter=U").splitlines()]
            wt.run("merge", "--abort", check=False)
            detail = (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or ["merge failed"])[-1]
            if files:
                raise _MergeFailed(f"{printable(ctx.branch)} conflicts with {svc.branch} in "
                                   f"{', '.join(files[:5])}{' …' if len(files) > 5 else ''}; merge "
                                   f"{svc.branch} into it, resolve, and push again", files)
            raise _MergeFailed(f"git merge failed: {printable(detail)}")
        new = wt.head()
    if new is None or ctx.bare.parents(new) != [tip, ctx.head]:
        raise _MergeFailed(f"the merge did not produce a commit with parents {short(tip)} and {short(ctx.head)}")
    return new


# --- status section ----------------------------------------------------------------------------

class _Section(dict[str, Any]):
    """The chain section of `opskit status`: a dict for --json, one readable line for the screen."""

    def __str__(self) -> str:
        parts = []
        for p in self["in_progress"]:
            state = "" if p["alive"] else " (process gone)"
            parts.append(f"{p['branch']} {p['sha'][:10]} at {p['step']} since {p['since']}{state}")
        running = "; ".join(parts) if parts else "none in progress"
        parked = self["parked"]
        waiting = (f"{len(parked)} parked (" + ", ".join(f"#{p['id']} {p['branch']}" for p in parked[:5])
                   + (" …" if len(parked) > 5 else "") + "; opskit pending)") if parked else "nothing parked"
        return f"{running}; {waiting}"


def status_section(settings: Settings, journal: Journal, svc: ServiceSettings) -> dict[str, Any]:
    in_progress = []
    for key, value in journal.kv_all("chain").items():
        if not isinstance(value, dict) or value.get("service") != svc.name:
            continue
        in_progress.append({**value, "alive": proc.pid_alive(int(value.get("pid") or 0)), "key": key})
    parked = [p.to_dict() for p in approvals.pending(journal, svc.name)]
    return _Section(in_progress=in_progress, parked=parked)


def clear_stale(journal: Journal) -> int:
    """Forget progress entries whose process is gone (a SIGKILLed chain)."""
    n = 0
    for key, value in journal.kv_all("chain").items():
        if isinstance(value, dict) and not proc.pid_alive(int(value.get("pid") or 0)):
            journal.kv_delete("chain", key)
            n += 1
    return n


__all__: Sequence[str] = ["ChainResult", "supersede_parked", "run_now", "approve", "status_section", "clear_stale"]
