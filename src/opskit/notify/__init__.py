"""Durable notifications: outbox first, then deliver, never silently.

    from opskit import notify
    report = notify.send(settings, journal, "deploy failed", level="error", service="web")
    if not report.ok: ...   # queued for `opskit notify --flush`, or a channel is broken

send() never raises for a delivery failure (the pipeline must go on when Discord is
down); it raises UsageError for bad input. httpx is imported only on the send path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import LEVELS, Settings
from opskit.base.errors import UsageError
from opskit.notify.base import Action
from opskit.notify.courier import Courier
from opskit.notify.direct import send_direct
from opskit.storage import fleet_outbox, outbox
from opskit.storage.fallback import JournalWriteError
from opskit.storage.fleet import Unreachable
from opskit.storage.journal import Journal

__all__ = ["FlushReport", "NotifyReport", "broken_channels", "flush", "outbox_summary", "send", "show"]


@dataclass
class NotifyReport:
    outbox_ids: list[int]
    delivered: list[str]  # channel names
    queued: list[str]  # transient failure: still queued for `notify --flush`
    broken: list[str]  # permanent failure (4xx): channel marked broken
    errors: dict[str, str] = field(default_factory=dict)  # channel → why, for what failed

    @property
    def ok(self) -> bool:
        """Everything was delivered to the channels asked for."""
        return not self.queued and not self.broken

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}

    def problem(self) -> str | None:
        """One line for stderr saying what did not arrive, or None."""
        parts = []
        for name in self.broken:
            parts.append(f"{name} is broken ({self.errors.get(name, 'refused')})")
        for name in self.queued:
            parts.append(f"{name} not reached ({self.errors.get(name, 'no answer')})")
        if not parts:
            return None
        line = "notification not delivered: " + "; ".join(parts)
        if self.queued:
            line += "; queued for `opskit notify --flush`"
        if self.broken and self.delivered:
            line += f"; delivered to {', '.join(self.delivered)}"
        return line


@dataclass
class FlushReport:
    delivered: int
    still_queued: int
    broken: int
    busy: int = 0  # rows another live process is delivering right now
    problems: list[str] = field(default_factory=list)  # "channel: why", one per stalled/broken channel

    @property
    def ok(self) -> bool:
        return self.still_queued == 0 and self.broken == 0

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def _check(settings: Settings, message: str, level: str, channels: Sequence[str] | None) -> None:
    if not message or not message.strip():
        raise UsageError("empty message: give the text to send, or - to read it from stdin")
    if level not in LEVELS:
        raise UsageError(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    for name in channels or ():
        settings.channel(name)  # ConfigError (exit 2) naming the configured channels


def send(settings: Settings, journal: Journal, message: str, *, title: str | None = None,
         level: str = "info", service: str | None = None, channels: Sequence[str] | None = None,
         event_id: int | None = None, clock: Clock = SYSTEM, retry_for: float | None = None,
         actions: Sequence[Action] = ()) -> NotifyReport:
    """Write the message to the outbox for each channel, then deliver it.

    channels None → settings.channels_for(service); none configured → journal-only, an
    empty report with ok True. A channel's older queue is delivered first, in order.
    `actions` (decision buttons) go only to channels whose taps come back to `opskit inbox`.
    """
    _check(settings, message, level, channels)
    names = list(dict.fromkeys(channels if channels is not None else settings.channels_for(service)))
    if not names:
        return NotifyReport([], [], [], [])
    title = title.strip() if title and title.strip() else None
    box = fleet_outbox.box_for(journal)  # the fleet's shared outbox while its database answers
    try:
        return _send(settings, journal, box, names, message, title=title, level=level, service=service,
                     event_id=event_id, clock=clock, retry_for=retry_for, actions=actions)
    finally:
        box.close()


def _send(settings: Settings, journal: Journal, box: outbox.Box, names: list[str], message: str, *,
          title: str | None, level: str, service: str | None, event_id: int | None, clock: Clock,
          retry_for: float | None, actions: Sequence[Action]) -> NotifyReport:
    # Every row is durable before the first byte goes out: a crash mid-send leaves them
    # for the next flush.
    new_ids: list[int] = []
    not_held: JournalWriteError | None = None
    stranded: list[str] = []  # queued in the shared outbox, whose database then went away
    for name in names:
        acts = [(a.label, a.token) for a in actions] if settings.channels[name].actionable else []
        try:
            try:
                new_ids.append(box.enqueue(journal, clock, name, level=level, title=title, message=message,
                                           service=service, event_id=event_id, actions=acts))
            except Unreachable:
                # The host's own outbox holds it (forwarded once the database is back); what the
                # shared one already holds is delivered by the next flush of any host.
                stranded, new_ids, box = names[:len(new_ids)], [], outbox.LOCAL
                new_ids.append(box.enqueue(journal, clock, name, level=level, title=title, message=message,
                                           service=service, event_id=event_id, actions=acts))
        except JournalWriteError as e:  # disk full, corrupt journal: the owner must still be told
            not_held = e
            break
    names = [n for n in names if n not in stranded]
    direct = names[len(new_ids):]
    names = names[:len(new_ids)]
    courier = Courier(settings, journal, clock, retry_for, fresh=set(new_ids), box=box)
    behind: set[str] = set()  # channels another host was delivering: it sends ours after its own
    for name, new_id in zip(names, new_ids, strict=True):
        # Claimed only now, not up front: a slow earlier channel (minutes of 429s) must not
        # let this channel's claim go stale, or a concurrent flush takes the rows over.
        rows, held = box.claim_channel(journal, clock, name, fresh=new_id)
        if held and not rows and box.drains:
            behind.add(name)
        _deliver(courier, box, name, rows)

    report = NotifyReport(list(new_ids), [], [], [])

    def outcome(row_id: int, channel: str) -> tuple[str, str | None, int | None]:
        """(delivered | queued | broken, why, fallback row id) for one row of this send."""
        result = courier.results.get(row_id)
        if result is not None:
            return result.status, result.error, result.fallback_id
        if row_id in courier.claimed and row_id not in courier.lost:
            # Never tried: an older message of this channel failed first.
            if row_id in courier.fresh:
                courier.waiting(row_id, channel, service)
            return "queued", courier.stalled.get(channel), None
        # Another opskit process (a flush) has it, or took it over: report where it stands.
        row = box.get(journal, row_id)
        if row is None:
            return "queued", None, None
        if row.status == "delivered":
            return "delivered", None, None
        if row.status == "sending":
            return "queued", "being sent by another opskit process", None
        if row.status == "queued" and channel in behind:
            return "queued", "another opskit process is delivering this channel: it sends this message next", None
        if row.status == "forwarded":  # the database came back and the row moved to the shared outbox
            return "queued", "moved to the fleet's shared outbox: any host's flush delivers it", None
        return row.status, row.last_error, None

    for name, new_id in zip(names, new_ids, strict=True):
        status, error, fallback_id = outcome(new_id, name)
        if status == "delivered":
            report.delivered.append(name)
            continue
        (report.broken if status == "broken" else report.queued).append(name)
        report.errors[name] = error or courier.stalled.get(name) or "not delivered"
        # A broken channel's message went on to its fallback (and maybe that one's).
        channel = name
        while fallback_id is not None:
            report.outbox_ids.append(fallback_id)
            channel = settings.channels[channel].fallback or "?"
            status, error, fallback_id = outcome(report.outbox_ids[-1], channel)
            if status == "delivered":
                report.delivered.append(channel)
                continue
            (report.broken if status == "broken" else report.queued).append(channel)
            report.errors.setdefault(channel, error or courier.stalled.get(channel) or "not delivered")
    for name in stranded:
        report.queued.append(name)
        report.errors[name] = "queued in the fleet outbox, whose database went away; the next flush delivers it"
    if not_held is not None:
        send_direct(settings, journal, direct, message, title=title, level=level, service=service,
                    event_id=event_id, clock=clock, retry_for=retry_for, error=not_held, report=report)
    return report


def flush(settings: Settings, journal: Journal, *, clock: Clock = SYSTEM,
          retry_for: float | None = None, channels: Sequence[str] | None = None) -> FlushReport:
    """Retry the queue, oldest first, each message exactly once, per-channel order kept.
    `channels`: only these (inbox sends the messages waiting for their buttons to be signed)."""
    box = fleet_outbox.box_for(journal)  # the fleet's shared outbox while its database answers
    try:
        courier = Courier(settings, journal, clock, retry_for, box=box)
        busy = 0
        with box.batched():
            for name in box.channels_with_work(journal):
                if name in courier.stalled or (channels is not None and name not in channels):
                    continue
                rows, held = box.claim_channel(journal, clock, name)
                busy += held
                _deliver(courier, box, name, rows)
        still = box.queued_count(journal)
    finally:
        box.close()
    results = list(courier.results.values())
    problems = [f"{name}: {why}" for name, why in courier.stalled.items()]
    for r in results:
        if r.status == "broken":
            problems.append(f"{r.channel}: broken ({r.error})")
    return FlushReport(
        delivered=sum(r.status == "delivered" for r in results),
        still_queued=int(still),
        broken=sum(r.status == "broken" for r in results),
        busy=busy + len(courier.lost),  # taken over mid-flush: the taker delivers them
        problems=list(dict.fromkeys(problems)),
    )


def _deliver(courier: Courier, box: outbox.Box, name: str, rows: list[outbox.Row]) -> None:
    """Deliver a claimed channel; the shared outbox's holder then takes what was queued on the
    channel while it held it (other hosts left it to the holder, to keep the order)."""
    while rows:
        courier.deliver_rows(name, rows)
        if not box.drains or name in courier.stalled:
            return
        rows, _ = box.claim_channel(courier.journal, courier.clock, name)


def outbox_summary(journal: Journal) -> dict[str, dict[str, int]]:
    """channel → {status: count}, for `opskit status`."""
    box = fleet_outbox.box_for(journal)
    try:
        return box.summary(journal)
    finally:
        box.close()


def broken_channels(journal: Journal) -> dict[str, Any]:
    """channel → {broken, status, error, since}: channels whose endpoint refused for good."""
    return journal.kv_all("channel")


def show(journal: Journal, outbox_id: int) -> dict[str, Any]:
    """One outbox row, with the full message text (Discord shows a cut version)."""
    box = fleet_outbox.box_for(journal)
    try:
        row = box.get(journal, outbox_id)
    finally:
        box.close()
    if row is None:
        raise UsageError(f"no outbox message #{outbox_id}; see `opskit events --type notify`")
    return asdict(row)
