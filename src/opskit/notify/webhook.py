"""A generic JSON webhook: {title, message, level, service, event_id, ts}.

The outbox id goes in an Idempotency-Key header: a receiver that honours it can drop the
duplicate that a crash between "sent" and "marked delivered" would cause.
"""

from __future__ import annotations

from typing import Any

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome, post


def payload(msg: Message) -> dict[str, Any]:
    return {"title": msg.title, "message": msg.text, "level": msg.level, "service": msg.service,
            "event_id": msg.event_id, "ts": msg.created}


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    assert ch.url is not None
    headers = {"Idempotency-Key": f"opskit-outbox-{msg.outbox_id}", "User-Agent": "opskit"}
    outcome, _ = post(ch.url.reveal(), json_body=payload(msg), headers=headers, timeout=timeout)
    return outcome
