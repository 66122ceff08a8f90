"""Parked changes: the human in the loop of the feature-branch chain.

A review that exits 3 (or a failed test with `test_failure = "human"`) parks the change
here instead of merging it. A human decides with `opskit approve ID` (chain.approve resumes
at the merge step) or `opskit reject ID --reason T` (reject() below). Each decision moves a
row out of `parked` with one compare-and-swap UPDATE, so two people deciding at once cannot
both win, and a change is never merged twice.

The table and its compare-and-swap updates are storage/approvals.py's; this module holds the
rules: rejecting, reminding, telling the owner. A change that waits longer than the service's `approval_timeout` is reminded about once
(`remind_overdue`, run by cron-check): the seed's human route failed because nobody was
told anything was waiting; an hourly nag would fail the same way, by being muted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from opskit.base import roles
from opskit.base.actor import who
from opskit.base.clock import SYSTEM, Clock, iso, parse_iso
from opskit.base.config import Settings
from opskit.base.errors import UsageError
from opskit.notify import decisions
from opskit.notify.announce import announce
from opskit.notify.base import Action
from opskit.storage.approvals import (
    DECIDED,
    SCHEMA,
    Parked,
    claim_reminder,
    decide,
    get,
    mark,
    park,
    pending,
    reopen,
    set_event,
    supersede,
)
from opskit.storage.journal import Journal

# --- reject ----------------------------------------------------------------------------------

def reject(settings: Settings, journal: Journal, approval_id: int, reason: str, *,
           clock: Clock = SYSTEM, by: str | None = None) -> Parked:
    """End a parked change: journal review.fail with who and why, notify, nothing merged."""
    if not reason or not reason.strip():
        raise UsageError('reject needs a reason: opskit reject ID --reason "what is wrong"')
    found = get(journal, approval_id)
    roles.refuse_push_account("reject", settings.state_dir, settings.services.values(),
                              found.service if found else None)
    row = decide(journal, approval_id, "rejected", by=by or who(), reason=reason.strip(), clock=clock)
    ev = journal.append("review.fail", row.service,
                        {"approval": row.id, "branch": row.branch, "decided_by": row.decided_by,
                         "reason": row.reason, "human": True, "verdict": "rejected"},
                        chain=row.chain, sha=row.sha)
    notify(settings, journal, row.service,
           f"{row.service}: change #{row.id} ({row.branch} {row.sha[:10]}) was REJECTED by {row.decided_by}.\n"
           f"Reason: {row.reason}\nNothing was merged. Event #{ev.id}.",
           title=f"{row.service}: {row.branch} rejected", level="warning", event_id=ev.id, clock=clock)
    return row


# --- reminders -------------------------------------------------------------------------------

def remind_overdue(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> int:
    """Remind once about each change parked longer than its service's approval_timeout.
    Returns how many reminders went out (cron-check calls this every 5 minutes)."""
    now = clock.now()
    sent = 0
    for row in pending(journal, limit=10_000):
        if row.reminded_at:
            continue
        svc = settings.services.get(row.service)
        timeout = svc.approval_timeout if svc is not None else 24 * 3600.0
        age = (now - parse_iso(row.created)).total_seconds()
        if age < timeout:
            continue
        if not claim_reminder(journal, row.id, iso(now)):  # two cron-checks at once remind once
            continue
        waited = _age(age)
        ev = journal.append("review.reminded", row.service,
                            {"approval": row.id, "branch": row.branch, "waiting": waited, "since": row.created,
                             "cause": row.cause}, chain=row.chain, sha=row.sha)
        notify(settings, journal, row.service,
               f"{row.service}: change #{row.id} ({row.branch} {row.sha[:10]}) has waited {waited} for a human "
               f"({row.cause or 'review asked for one'}).\n"
               f"Decide: `opskit approve {row.id}` or `opskit reject {row.id} --reason \"…\"`",
               title=f"{row.service}: still waiting for approval", level="warning", event_id=ev.id, clock=clock,
               # The first buttons expired with approval_timeout, exactly when this goes out.
               actions=decisions.buttons(settings, journal, row.service,
                                         [("approve", str(row.id)), ("reject", str(row.id))], clock=clock))
        sent += 1
    return sent


def _age(seconds: float) -> str:
    d = dt.timedelta(seconds=int(seconds))
    hours = d.days * 24 + d.seconds // 3600
    return f"{hours}h{(d.seconds % 3600) // 60:02d}m"


def notify(settings: Settings, journal: Journal, service: str, message: str, *, title: str, level: str,
           event_id: int | None, clock: Clock = SYSTEM, actions: Sequence[Action] = ()) -> bool:
    """Through the outbox; a notification problem never undoes a decision. True: delivered."""
    return announce(settings, journal, message, title=title, level=level, service=service, event_id=event_id,
                    clock=clock, actions=actions)


__all__: Sequence[str] = ["DECIDED", "Parked", "park", "get", "pending", "decide", "mark", "reopen", "set_event",
                          "supersede", "reject", "remind_overdue", "who", "SCHEMA"]
