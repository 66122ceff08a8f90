"""Freeze: the service takes no more deploys until a human says `opskit unfreeze`.

Set when a revert fails too, or by hand (`opskit freeze`, the Freeze button on an
auto-revert's notification). Read once, `Journal.frozen`: the pipeline refuses while frozen,
pre-receive's lockdown and `status` show it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from opskit.base import roles
from opskit.base.actor import who as acting
from opskit.base.clock import SYSTEM, Clock, iso, iso_precise
from opskit.base.config import Settings
from opskit.deploy.run import Run, new_chain_id
from opskit.storage.journal import Journal


def freeze(run: Run, reason: str, event_id: int | None) -> int:
    # freeze_id names this freeze from its first write: an Unfreeze offered before its event is
    # journaled (or when the journal cannot take it) is still bound to this freeze alone.
    now = run.clock.now()
    state = {"reason": reason, "event_id": event_id, "since": iso(now), "since_precise": iso_precise(now),
             "freeze_id": secrets.token_hex(8)}
    run.journal.kv_set("frozen", run.service, state)
    ev = run.emit("service.frozen", {"reason": reason, "event_id": event_id})
    if ev.id:  # which freeze this is: an Unfreeze button is bound to it (tests/test_pusher_cannot_decide.py)
        run.journal.kv_set("frozen", run.service, {**state, "frozen_event": ev.id})
    run.say(f"✘ {run.service} is FROZEN: {reason}. Deploys are refused until `opskit unfreeze {run.service}`")
    return ev.id


def unfreeze(settings: Settings, journal: Journal, service: str, who: str | None = None) -> dict[str, Any] | None:
    """Clear the freeze; returns what was cleared (None: it was not frozen)."""
    settings.service(service)
    roles.refuse_push_account("unfreeze", settings.state_dir, settings.services.values(), service)
    was = journal.frozen(service)
    if was is None:
        return None
    who = who or acting()
    journal.kv_delete("frozen", service)
    journal.append("service.unfrozen", service, {"who": who, "was": was})
    return was


def freeze_by_hand(settings: Settings, journal: Journal, service: str, *, by: str, reason: str | None = None,
                   clock: Clock = SYSTEM, write: Callable[[str], None] = print) -> int | None:
    """`opskit freeze` and the Freeze button: the service.frozen event id, or None when it was
    frozen already."""
    svc = settings.service(service)
    if journal.frozen(service) is not None:
        return None
    run = Run(settings=settings, journal=journal, svc=svc, chain=new_chain_id(), clock=clock, write=write)
    return freeze(run, f"frozen by {by}" + (f": {reason}" if reason else ""), None)
