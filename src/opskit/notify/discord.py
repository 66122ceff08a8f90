"""Discord webhooks: content + one embed, posted with ?wait=true.

Discord answers 204 without `wait`; with it, the created message comes back and its id
is our proof of delivery (stored as the outbox row's remote_id).
"""

from __future__ import annotations

from typing import Any

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome, clip, cut, post

CONTENT_MAX = 2000
EMBED_TITLE_MAX = 256
EMBED_DESCRIPTION_MAX = 4096
USERNAME_MAX = 80


def payload(ch: ChannelSettings, msg: Message) -> dict[str, Any]:
    head = f"{msg.emoji} **{msg.title}**\n" if msg.title else f"{msg.emoji} "
    meta = [f"level **{msg.level}**"]
    if msg.service:
        meta.append(f"service **{msg.service}**")
    if msg.event_id:
        meta.append(f"event #{msg.event_id}")
    meta.append(f"outbox #{msg.outbox_id}")
    body: dict[str, Any] = {
        "content": cut(head + msg.text, CONTENT_MAX, msg.truncation_marker()),
        "embeds": [{
            "title": clip(f"{msg.emoji} {msg.heading}", EMBED_TITLE_MAX),
            "description": clip(" · ".join(meta), EMBED_DESCRIPTION_MAX),
            "color": msg.color,
            "timestamp": msg.created,
        }],
        "username": clip(ch.username or "opskit", USERNAME_MAX),
        # A commit message with @everyone must not page a whole server.
        "allowed_mentions": {"parse": []},
    }
    return body


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    assert ch.url is not None
    url = ch.url.reveal()
    url += ("&" if "?" in url else "?") + "wait=true"
    outcome, resp = post(url, json_body=payload(ch, msg), timeout=timeout)
    if outcome.kind != "delivered" or resp is None:
        return outcome
    remote_id = None
    if resp.status_code == 200:
        try:
            data = resp.json()
            if isinstance(data, dict) and data.get("id") is not None:
                remote_id = str(data["id"])
        except ValueError:
            pass
    return Outcome.delivered(remote_id, resp.status_code)
