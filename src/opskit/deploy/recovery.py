"""Work a killed process left half done: a deploy row still 'running', a rollback never ended.

The next run that holds the service lock (a push, cron's `opskit deploy`, `auto-revert`)
closes each one with an event and tells the owner, so nothing stays half done unannounced.
"""

from __future__ import annotations

from typing import Any

from opskit.base import proc
from opskit.base.errors import OpsError
from opskit.base.text import short
from opskit.deploy.run import Run, announce_run
from opskit.git.land import canonical_tip
from opskit.storage.journal import Event, Journal


def last_deployed(journal: Journal, service: str) -> str | None:
    """The commit the last deploy reached a verdict on. A deploy killed on the way (row still
    'running' or 'interrupted') or a failed one whose rollback was killed before it ended is
    not done: the next run (cron's `opskit deploy`) must report it and deploy again, not say
    "already deployed" over a commit nobody watched."""
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
        announce_run(run, f"{run.service}: {reason}. The next deploy takes over; check `opskit status`.",
               title=f"{run.service}: deploy interrupted", level="warning", event_id=ev.id)
    _report_interrupted_rollback(run)


def _report_interrupted_rollback(run: Run) -> None:
    """A failed deploy whose rollback died mid-way (SIGKILL between rollback.start and its end):
    close it with rollback.fail in its own chain, so it is reported once and the journal says
    where the branch was left (the revert landed or not; git/land.py's land_commit is one compare-and-swap)."""
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
    announce_run(run, f"{run.service}: {reason}. This run deploys {run.svc.branch} again; check `opskit status`.",
           title=f"{run.service}: rollback interrupted", level="warning", event_id=ev.id)
