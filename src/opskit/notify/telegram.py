"""Telegram: a bot's `sendMessage` to one chat, with inline buttons for decisions.

The bot token is part of every Bot API URL (`<api_url>/bot<token>/<method>`), so no URL
ever reaches an error text: we describe failures from Telegram's own `description`.
Telegram answers every error as JSON `{"ok": false, "error_code", "description",
"parameters": {"retry_after"}}`; a 429 is retried after `parameters.retry_after`, 400/401/403
mean the bot or chat is misconfigured (permanent, the fallback takes the message).
Text goes without parse_mode: a commit subject with `*` or `_` must not break a message.

The same module is the Bot API client `opskit inbox` uses (getUpdates, answerCallbackQuery,
editMessageText): one place knows the URL form and the error shape.
"""

from __future__ import annotations

from typing import Any

from opskit.base.config import ChannelSettings
from opskit.base.errors import redact
from opskit.notify.base import Message, Outcome, clip, cut, post

API_URL = "https://api.telegram.org"
TEXT_MAX = 4096  # sendMessage / editMessageText, in characters after entity parsing
CALLBACK_DATA_MAX = 64  # bytes, per button


def method_url(ch: ChannelSettings, method: str) -> str:
    assert ch.token is not None
    return f"{(ch.api_url or API_URL).rstrip('/')}/bot{ch.token.reveal()}/{method}"


def text_of(msg: Message) -> str:
    head = f"{msg.emoji} {msg.title}\n\n" if msg.title else f"{msg.emoji} "
    return cut(head + msg.text, TEXT_MAX, msg.truncation_marker())


def keyboard(msg: Message) -> dict[str, Any] | None:
    """One row of buttons; a token that would not fit callback_data is left out (its
    command is in the text), never sent to be refused with the whole message."""
    row = [{"text": a.label, "callback_data": a.token} for a in msg.actions
           if 0 < len(a.token.encode()) <= CALLBACK_DATA_MAX]
    return {"inline_keyboard": [row]} if row else None


def payload(ch: ChannelSettings, msg: Message) -> dict[str, Any]:
    body: dict[str, Any] = {"chat_id": ch.chat_id, "text": text_of(msg), "disable_web_page_preview": True}
    markup = keyboard(msg)
    if markup is not None:
        body["reply_markup"] = markup
    return body


def call(ch: ChannelSettings, method: str, body: dict[str, Any], timeout: float) -> tuple[Outcome, Any]:
    """One Bot API call: (outcome, the `result` on success). Errors in Telegram's words."""
    outcome, resp = post(method_url(ch, method), json_body=body, timeout=timeout)
    if resp is None:
        return outcome, None
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        if outcome.kind == "delivered":
            return Outcome.transient(f"HTTP {resp.status_code}: not a Bot API answer"), None
        return outcome, None
    if data.get("ok") is True and outcome.kind == "delivered":
        return outcome, data.get("result")
    raw_code = data.get("error_code")
    code: int = raw_code if isinstance(raw_code, int) else resp.status_code
    what = redact(clip(str(data.get("description") or f"HTTP {code}"), 160))
    if code == 429:
        raw_params = data.get("parameters")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        after = params.get("retry_after") if isinstance(params.get("retry_after"), (int, float)) else None
        return Outcome.transient(f"HTTP 429: {what}", status=429,
                                 retry_after=float(after) if after is not None else outcome.retry_after), None
    if code >= 500 or outcome.kind == "transient":
        return Outcome.transient(f"HTTP {code}: {what}", status=code), None
    return Outcome.permanent(f"HTTP {code}: {what}", status=code), None


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    outcome, result = call(ch, "sendMessage", payload(ch, msg), timeout)
    if outcome.kind != "delivered":
        return outcome
    remote = str(result["message_id"]) if isinstance(result, dict) and "message_id" in result else None
    return Outcome.delivered(remote, outcome.status)
