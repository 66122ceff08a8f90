"""The heartbeat: each cron-check tells an external monitor that this host is alive and well.

When the host dies, the disk fills or cron stops, nothing on the host can say so: the monitor
(healthchecks.io, Uptime Kuma, Better Stack, Cronitor) notices the missing ping and tells the
owner. When the host is up but something needs a person, the ping takes the failure form with
a one-paragraph body: the reasons are status's "needs attention" (views/status.py attention(),
one source), computed from the journal only.

The ping comes after cron-check's work, has a short timeout and never raises. A failed ping is
journaled once per outage (`heartbeat.failed`; `heartbeat.recovered` when a ping gets through
again) and shown by `opskit status`.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.config import Settings
from opskit.base.errors import redact
from opskit.notify import ping
from opskit.storage.journal import Journal, kv_update
from opskit.views.status import attention, watch_data


@dataclass(frozen=True)
class Beat:
    sent: bool  # False: no heartbeat configured
    healthy: bool  # the form sent: success (True) or failure
    reasons: list[str]
    result: ping.PingResult | None
    event_id: int | None = None  # heartbeat.failed / heartbeat.recovered appended by this beat

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"sent": self.sent, "healthy": self.healthy, "reasons": self.reasons,
                "delivered": bool(r and r.ok), "error": r.error if r else None}


def reasons(settings: Settings, journal: Journal, clock: Clock = SYSTEM, cron_check: Any = None) -> list[str]:
    """What needs attention now, for the ping: status's attention() over the journal-only data.
    The heartbeat's own failure is not among them (this ping is how it ends)."""
    try:
        return attention(watch_data(settings, journal, clock, cron_check))
    except Exception as e:  # a broken journal read is itself a reason, not a silent success
        return [redact(f"opskit could not read its own health: {type(e).__name__}: {e}")[:300]]


def body(items: list[str]) -> str:
    host = socket.gethostname()
    if not items:
        return f"opskit on {host}: all well."
    return f"opskit on {host} needs attention: " + "; ".join(items) + "."


def beat(settings: Settings, journal: Journal, clock: Clock = SYSTEM, *, cron_check: Any = None,
         timeout: float = ping.TIMEOUT) -> Beat:
    """Ping [opskit] heartbeat with this host's health; journal a failed ping once per outage."""
    mon = settings.monitor
    if mon.heartbeat is None:
        return Beat(False, True, [], None)
    items = reasons(settings, journal, clock, cron_check)
    healthy = not items
    result = ping.send(mon.heartbeat, suffix="" if healthy else mon.heartbeat_fail, body=body(items),
                       style=mon.heartbeat_style, up=healthy, timeout=timeout)
    return Beat(True, healthy, items, result, _record(journal, clock, result, healthy))


def _record(journal: Journal, clock: Clock, result: ping.PingResult, healthy: bool) -> int | None:
    now = iso(clock.now())
    before: dict[str, Any] = {}

    def update(old: Any) -> Any:
        before.clear()
        before.update(old or {})
        st = dict(old or {})
        if result.ok:
            st.update(failing=False, last_success=now, last_form="success" if healthy else "failure",
                      error=None, since=None)
        else:
            st.update(failing=True, last_failure=now, error=result.error, status=result.status,
                      since=st.get("since") if st.get("failing") else now)
        return st

    kv_update(journal, ping.HEARTBEAT, "state", update)
    if not result.ok and not before.get("failing"):
        return journal.append("heartbeat.failed", None, {"error": result.error, "status": result.status,
                                                          "since": now}).id
    if result.ok and before.get("failing"):
        return journal.append("heartbeat.recovered", None, {"since": before.get("since")}).id
    return None
