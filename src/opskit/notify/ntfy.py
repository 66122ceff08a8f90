"""ntfy: the message is the POST body; title, priority and tags go in headers.

`url` is either server/topic, or the server with `topic` set. Non-ASCII titles are sent
RFC 2047-encoded, which ntfy decodes (HTTP headers are Latin-1 only).
"""

from __future__ import annotations

import base64

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome, post

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
    return h


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
