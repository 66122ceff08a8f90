"""Straight to the channels, when the outbox cannot hold a message (disk full, corrupt journal).

The outbox is what makes a notification durable; when it cannot be written, waiting for it
would mean the owner is not told that production was reverted. So the message goes out now,
to each channel in turn with the channel's own retries, saying why it did not go the usual
way; whatever no channel took is kept aside (storage/fallback.py) and queued in the outbox
once the journal can be written again, so `notify --flush` still delivers it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opskit.base.clock import Clock, iso
from opskit.base.config import Settings
from opskit.notify.base import Message, Outcome
from opskit.notify.courier import BACKOFF_MAX, BACKOFF_START, KINDS
from opskit.storage.fallback import JournalWriteError
from opskit.storage.journal import Journal

if TYPE_CHECKING:
    from opskit.notify import NotifyReport


def send_direct(settings: Settings, journal: Journal, names: Sequence[str], message: str, *, title: str | None,
                level: str, service: str | None, event_id: int | None, clock: Clock, retry_for: float | None,
                error: JournalWriteError, report: NotifyReport) -> None:
    """Deliver to each channel in names now, without an outbox row; results go into report.
    A channel that refuses for good hands the message to its `fallback`, as the courier does."""
    text = f"{message}\n\n(sent directly: opskit's outbox could not hold it: {error.message})"
    todo = [(name, text) for name in names]
    tried = set(names)
    while todo:
        name, text = todo.pop(0)
        ch = settings.channels[name]
        module = importlib.import_module(f"opskit.notify.{KINDS[ch.type]}")
        msg = Message(outbox_id=0, channel=name, level=level, title=title, text=text, service=service,
                      event_id=event_id, created=iso(clock.now()))
        budget = retry_for if retry_for is not None else ch.retry_for
        deadline = clock.monotonic() + max(0.0, budget)
        delay, attempts = BACKOFF_START, 0
        while True:
            timeout = ch.timeout
            try:
                outcome: Outcome = module.deliver(ch, msg, timeout)
            except Exception as e:  # a bug in one channel must not stop the others
                outcome = Outcome.transient(f"internal error in the {ch.type} channel ({type(e).__name__})")
            attempts += 1
            wait = outcome.retry_after if outcome.retry_after is not None else delay
            if outcome.kind != "transient" or clock.monotonic() + wait > deadline:
                break
            clock.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX)
        data: dict[str, object] = {"channel": name, "kind": ch.type, "attempts": attempts, "direct": True,
                                   "why": error.message}
        if title:
            data["title"] = title[:100]
        if outcome.kind == "delivered":
            report.delivered.append(name)
            journal.append("notify.sent", service, {**data, "status": "delivered"})
            continue
        (report.broken if outcome.kind == "permanent" else report.queued).append(name)
        report.errors[name] = outcome.error or "not delivered"
        fb = ch.fallback
        if outcome.kind == "permanent" and fb is not None and fb not in tried and fb in settings.channels:
            tried.add(fb)
            data["fallback"] = fb
            todo.append((fb, f"{text}\n\n(sent via fallback: channel {name!r} is broken: {outcome.error})"))
        journal.append("notify.failed", service, {**data, "status": "queued", "error": outcome.error or ""})
        if "fallback" in data:
            continue  # its fallback carries it now (and is kept aside itself if it cannot)
        journal.keep_outbox(name, level=level, title=title, message=text, service=service, event_id=event_id,
                            error=error)
