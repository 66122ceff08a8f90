"""ntfy: the message is the POST body; title, priority and tags go in headers.

`url` is either server/topic, or the server with `topic` set. Non-ASCII titles are sent
RFC 2047-encoded, which ntfy decodes (HTTP headers are Latin-1 only).
"""

from __future__ import annotations

import base64

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome, post

ACTIONS_MAX = 3  # ntfy refuses a message with more
PRIORITY = {"info": "3", "warning": "4", "error": "4", "critical": "5"}
TAGS = {"info": "information_source", "warning": "warning", "error": "red_circle",
        "critical": "rotating_light"}


def _header(value: str) -> str:
    value = " ".join(value.split())  # no newlines in a header
    try:
        value.encode("ascii")
        return value
    except UnicodeEncodeError:
        return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


def headers(ch: ChannelSettings, msg: Message) -> dict[str, str]:
    h = {"Title": _header(msg.heading), "Priority": PRIORITY.get(msg.level, "3"),
         "Tags": ",".join(t for t in (TAGS.get(msg.level), msg.service) if t)}
    if ch.token is not None:
        h["Authorization"] = f"Bearer {ch.token.reveal()}"
    actions = action_header(ch, msg)
    if actions:
        h["Actions"] = actions
    return h


def action_header(ch: ChannelSettings, msg: Message) -> str | None:
    """ntfy's short action form: each button POSTs its token to the reply topic with the
    reply credential, which can write only that topic (the phone holds it, not opskit's)."""
    if ch.reply_url is None or not msg.actions:
        return None
    auth = f", headers.Authorization=Bearer {ch.reply_token.reveal()}" if ch.reply_token is not None else ""
    return "; ".join(f"http, {a.label}, {ch.reply_url.reveal()}, method=POST{auth}, body={a.token}, clear=true"
                     for a in msg.actions[:ACTIONS_MAX])


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    assert ch.url is not None
    url = ch.url.reveal()
    if ch.topic:
        url = url.rstrip("/") + "/" + ch.topic
    outcome, resp = post(url, content=msg.text.encode(), headers=headers(ch, msg), timeout=timeout)
    if outcome.kind != "delivered" or resp is None:
        return outcome
    try:
        data = resp.json()
        remote = str(data["id"]) if isinstance(data, dict) and "id" in data else None
    except ValueError:
        remote = None
    return Outcome.delivered(remote, resp.status_code)
