"""Gates: reactions on `deploy.pre` with `gate = true`, run before the deploy command.

The one synchronous kind of reaction. Each gate that applies to the service (its `service`,
or none) runs in the pipeline, under the deploy lock, as the service's account, in the
worktree — which still holds the live commit: the commit about to go live is in
OPSKIT_COMMIT (a script reads it with `git show "$OPSKIT_COMMIT:…"`). A gate that exits
non-zero, or outlives its timeout, stops the deploy exactly as a failed test does:
`deploy.fail` (step "gate", the reaction's name and output tail), the owner told, and the
old commit left live — nothing was moved, so there is nothing to revert.
"""

from __future__ import annotations

from opskit.base.clock import iso, iso_precise
from opskit.base.text import short
from opskit.deploy.run import Run, StopChain, announce_run
from opskit.reactions import runner
from opskit.storage.journal import Event


def step_gates(run: Run) -> None:
    gates = [r for r in run.settings.reactions if r.gate and r.service in (None, run.service)]
    if not gates:
        return
    assert run.sha is not None
    now = run.clock.now()
    # Not journaled (a gate is no subscriber of the journal): the event a gate is handed, id 0.
    ev = Event(id=0, ts=iso(now), type="deploy.pre", service=run.service,
               data={"sha": run.sha, "previous": run.previous}, chain=run.chain, sha=run.sha,
               ts_precise=iso_precise(now))
    for r in gates:
        run.say(f"gate {r.name}: checking {short(run.sha)}")
        out = runner.run_command(run.settings, r, ev, runner.target(run.settings, r, run.service),
                                 lock_fd=run.lock_fd, env={"OPSKIT_PREVIOUS": run.previous or ""})
        data = {"reaction": r.name, "event_type": ev.type, "gate": True, "sha": run.sha, **out.data()}
        if out.ok:
            run.emit("reaction.ok", data)
            continue
        run.emit("reaction.fail", data)
        reason = f"gate {r.name} refused the deploy: {out.reason}"
        run.say(f"✘ {reason}")
        for line in out.tail.splitlines()[-10:]:
            run.say(f"  | {line}")
        fail = run.emit("deploy.fail", {"sha": run.sha, "previous": run.previous, "step": "gate",
                                        "reaction": r.name, "reason": reason, "exit": out.exit,
                                        "timed_out": out.timed_out, "tail": out.tail})
        tail = f"\nGate output (last lines):\n```\n{out.tail[-600:]}\n```" if out.tail else ""
        announce_run(run, f"{run.service}: the deploy of {short(run.sha)} was refused by gate {r.name}: "
                          f"{out.reason}. {short(run.previous)} stays live.{tail}",
                     title=f"{run.service}: deploy refused by gate {r.name}", level="error", event_id=fail.id)
        run.finish("failed", reason)
        raise StopChain
