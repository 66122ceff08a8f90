"""Tell the owner, and never let telling fail the thing being told about.

Every system that notifies (a deploy, its revert, a job, a drift scan, verify-push, a break
glass, a parked change) goes through `announce`: the message is queued in the outbox and
sent; a channel that is down keeps it queued for `opskit notify --flush`, and any other
problem is reported through `warn` instead of raised, because the event that caused the
message is journaled already and the caller's own work must go on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opskit.base.clock import Clock
from opskit.base.config import Settings
from opskit.base.errors import redact
from opskit.base.text import printable, shown
from opskit.notify import send
from opskit.notify.base import Action
from opskit.storage.journal import Journal


def announce(settings: Settings, journal: Journal, message: str, *, title: str, level: str,
             service: str | None, event_id: int | None, clock: Clock | None = None,
             retry_for: float | None = None, warn: Callable[[str], None] | None = None,
             actions: Sequence[Action] = ()) -> bool:
    """Queue and send; True when every channel has it. Never raises."""
    try:
        # Messages quote commit subjects, branch names and step output: escaped once, here,
        # for every system's message (and so in the outbox and `notify --show`).
        report = send(settings, journal, shown(printable(message), lines=True), title=shown(printable(title)),
                      level=level,
                      service=service, event_id=event_id, clock=clock or journal.clock, retry_for=retry_for,
                      actions=actions)
    except Exception as e:  # a bug in a channel, a journal that cannot be written
        _warn(warn, f"notification not sent ({printable(title)}): {redact(f'{type(e).__name__}: {e}')[:200]}")
        return False
    if not report.ok:
        _warn(warn, f"notification queued, not delivered yet ({report.problem() or 'no channel answered'}); "
                    "`opskit notify --flush` retries it")
    return bool(report.ok)


def event_ref(event_id: int | None) -> str:
    """How a message names its event: `#42`, or why there is no number yet (the journal could
    not take the event; it is kept aside and journaled later, `opskit events` then shows it)."""
    return f"#{event_id}" if event_id else "not journaled yet (kept aside until the journal can take it)"


def _warn(warn: Callable[[str], None] | None, line: str) -> None:
    if warn is None:
        return
    try:
        warn(line)
    except Exception:  # the pusher hung up: nothing more to tell them
        pass
