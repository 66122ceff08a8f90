"""Slack incoming webhooks: {"text": ...} in Slack's mrkdwn.

Slack truncates `text` past 40,000 characters and advises far less; we cut at 3,000 with
a marker so the reader knows where the full text is.
"""

from __future__ import annotations

from typing import Any

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome, cut, post

TEXT_MAX = 3000


def _escape(text: str) -> str:
    # Slack's documented escaping: these three are control characters in mrkdwn.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(ch: ChannelSettings, msg: Message) -> dict[str, Any]:
    head = f"{msg.emoji} *{_escape(msg.title)}*\n" if msg.title else f"{msg.emoji} "
    body: dict[str, Any] = {"text": cut(head + _escape(msg.text), TEXT_MAX, msg.truncation_marker())}
    if ch.username:
        body["username"] = ch.username
    return body


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    assert ch.url is not None
    outcome, resp = post(ch.url.reveal(), json_body=payload(ch, msg), timeout=timeout)
    return outcome
