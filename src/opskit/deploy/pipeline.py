"""The deploy pipeline: a chain of small steps, each journaled.

    lock → frozen? → report an interrupted earlier deploy → gates (deploy.pre reactions, gates.py)
    → move the worktree → deploy.start
    → deploy command → deploy.complete|fail → health gate → healthy | auto-revert

Both ways a deploy starts end here: the post-receive hook (push mode, chain/routing.py) and
`opskit deploy SERVICE` (pull mode from cron, or by hand). The steps come in two halves
that other chains compose around: `GUARD_STEPS` (nothing goes live while frozen, a killed
earlier deploy is reported first) and `ROLLOUT_STEPS` (put it live, revert it if it fails).
The feature-branch chain runs its merge between the two (chain/feature.py).

The 03:57 incident: a deploy whose service never came up stayed live because nothing
watched it. Here every deploy ends in a verdict, and a failed one is reverted (revert.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from opskit.base import accounts
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import Settings
from opskit.base.errors import OpsError, UsageError
from opskit.base.lock import ServiceLock
from opskit.base.text import short
from opskit.deploy.gates import step_gates
from opskit.deploy.recovery import last_deployed, step_report_interrupted
from opskit.deploy.revert import revert_locked
from opskit.deploy.rollout import roll_out
from opskit.deploy.run import DeployResult, Run, Step, StopChain, Write, new_chain_id, run_steps
from opskit.git.land import canonical_tip
from opskit.git.worktree import fetch_worktree
from opskit.storage import fleet_locks
from opskit.storage.journal import Journal


def step_check_frozen(run: Run) -> None:
    frozen = run.journal.frozen(run.service)
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


def step_roll_out(run: Run) -> None:
    assert run.sha is not None
    run.rollout = roll_out(run, run.sha, kind="deploy", previous=run.previous)
    if run.rollout.ok:
        run.finish("healthy", run.rollout.reason)
        raise StopChain


def step_auto_revert(run: Run) -> None:
    """The deploy failed: undo it (revert.py decides how, and when to freeze instead)."""
    d = run.rollout
    assert d is not None and run.sha is not None
    rr = revert_locked(run, bad=run.sha, reason=d.reason, bad_deploy_id=d.deploy_id, stage=d.stage,
                       trigger_event=d.fail_event_id)
    status = "reverted" if rr.ok else "failed"
    run.finish(status, f"{d.reason}; " + (f"reverted to {short(rr.revert_sha)}" if rr.ok else rr.reason), ok=False)
    assert run.result is not None
    run.result.revert = rr
    raise StopChain


GUARD_STEPS: Sequence[tuple[str, Step]] = (("frozen", step_check_frozen), ("interrupted", step_report_interrupted))
ROLLOUT_STEPS: Sequence[tuple[str, Step]] = (("gate", step_gates), ("deploy", step_roll_out),
                                             ("revert", step_auto_revert))


def deploy_steps() -> list[tuple[str, Step]]:
    """A deploy of a commit already on the branch: the guard, then the roll-out."""
    return [*GUARD_STEPS, *ROLLOUT_STEPS]


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
    what = f"deploy {short(sha) if sha else svc.branch}"
    # This host's lock first, then the fleet's (a service on several hosts): one waiter per host
    # queues on the database, and a host without the database still deploys one at a time.
    with ServiceLock(settings.state_dir, service, wait=lock_wait, clock=clock, what=what, on_wait=run.say) as lock, \
            fleet_locks.deploy_lock(settings, journal, svc, wait=lock_wait, what=what, say=run.say) as shared:
        run.lock_fd = lock.fd
        if shared is not None:
            run.notes["fleet_lock"] = shared.data()
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
