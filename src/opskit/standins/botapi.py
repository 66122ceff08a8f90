"""The receiver's Telegram Bot API and ntfy topic stand-ins: the state, and the rules the
real services document (stdlib only; the HTTP routes are in receiver.py).

Telegram (core.telegram.org/bots/api), under ``/telegram/bot<token>/<method>``:
``sendMessage`` (text 1–4096 characters, ``reply_markup.inline_keyboard`` whose buttons
have a text and exactly one of url / callback_data, callback_data 1–64 bytes →
``BUTTON_DATA_INVALID``), ``getUpdates`` (``offset`` confirms every update below it: they
are gone for good; ``timeout`` long-polls; a second concurrent call ends the first with
409), ``answerCallbackQuery`` (fails for an unknown or too old query), ``editMessageText``
(unknown message → 400, no change → 400 "message is not modified"). Every error is
``{"ok": false, "error_code", "description"[, "parameters"]}``.

ntfy (docs.ntfy.sh), under ``/ntfy``: publish to ``/ntfy/<topic>`` with headers (Title,
Priority, Tags, Actions) or JSON to ``/ntfy`` (topic, message, actions); at most 3 actions;
``GET /ntfy/<topic>/json?poll=1&since=<id|unix time|all>`` answers the cached messages after
it, one JSON object a line; the cache keeps 12 hours. A topic may have an access list
(tokens that may read, tokens that may write), as a server with auth-default-access
deny-all and per-token grants does.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from typing import Any

TEXT_MAX = 4096
CALLBACK_DATA_MAX = 64
CALLBACK_TTL = 15.0  # Telegram does not document it; answers fail after roughly this long
NTFY_ACTIONS_MAX = 3
NTFY_CACHE = 12 * 3600.0
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]{20,}$")


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(str(body))
        self.status = status
        self.body = body


def _tg_error(code: int, description: str, **params: Any) -> ApiError:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if params:
        body["parameters"] = params
    return ApiError(code, body)


@dataclass
class TgMessage:
    message_id: int
    chat_id: str
    text: str
    reply_markup: dict[str, Any] | None
    date: int
    edits: list[str] = field(default_factory=list)

    def as_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message_id": self.message_id, "date": self.date, "text": self.text,
                               "chat": {"id": int(self.chat_id) if self.chat_id.lstrip("-").isdigit()
                                        else self.chat_id, "type": "group"},
                               "from": {"id": 1, "is_bot": True, "first_name": "opskit"}}
        if self.reply_markup:
            out["reply_markup"] = self.reply_markup
        return out

    def buttons(self) -> list[dict[str, Any]]:
        rows = (self.reply_markup or {}).get("inline_keyboard") or []
        return [b for row in rows for b in row]


class TelegramBot:
    """One bot's side of the Bot API, thread-safe."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.callback_ttl = CALLBACK_TTL
        self._cv = threading.Condition()
        self.messages: list[TgMessage] = []
        self._updates: list[dict[str, Any]] = []  # not yet confirmed
        self._next_update = 700_000_000 + secrets.randbelow(1000)
        self._queries: dict[str, tuple[float, bool]] = {}  # id → (created, answered)
        self._poller = 0  # the live getUpdates call's number; an older one ends with 409
        self.calls: list[str] = []  # methods called, in order
        self.polls: list[dict[str, Any]] = []  # each getUpdates' parameters, in order
        self.answers: list[dict[str, Any]] = []
        # hold(method): calls of it block until release(), to stop a client at that point
        self._held: dict[str, threading.Event] = {}
        self.reached: dict[str, threading.Event] = {}

    def hold(self, method: str) -> threading.Event:
        """Calls of `method` wait (up to 60 s) until release(); the returned event is set
        as soon as one arrived."""
        with self._cv:
            self._held[method] = threading.Event()
            self.reached[method] = threading.Event()
            return self.reached[method]

    def release(self) -> None:
        with self._cv:
            held, self._held = self._held, {}
        for ev in held.values():
            ev.set()

    # --- the API ----------------------------------------------------------------------
    def handle(self, token: str, method: str, body: dict[str, Any]) -> Any:
        if not _TOKEN.match(token):
            raise _tg_error(401, "Unauthorized")
        with self._cv:
            self.calls.append(method)
            gate = self._held.get(method)
            if gate is not None:
                self.reached[method].set()
        if gate is not None:
            gate.wait(60)
        fn = {"sendMessage": self.send_message, "getUpdates": self.get_updates, "getMe": self.get_me,
              "answerCallbackQuery": self.answer_callback_query, "editMessageText": self.edit_message_text}.get(method)
        if fn is None:
            raise _tg_error(404, "Not Found")
        return fn(body)

    def get_me(self, body: dict[str, Any]) -> Any:
        return {"id": 1, "is_bot": True, "first_name": "opskit", "username": "opskit_test_bot"}

    def send_message(self, body: dict[str, Any]) -> Any:
        chat = body.get("chat_id")
        if chat in (None, ""):
            raise _tg_error(400, "Bad Request: chat_id is empty")
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _tg_error(400, "Bad Request: message text is empty")
        if len(text) > TEXT_MAX:
            raise _tg_error(400, "Bad Request: message is too long")
        markup = self._markup(body.get("reply_markup"))
        with self._cv:
            msg = TgMessage(len(self.messages) + 1, str(chat), text, markup, int(self.clock()))
            self.messages.append(msg)
            return msg.as_api()

    def _markup(self, raw: Any) -> dict[str, Any] | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise _tg_error(400, "Bad Request: can't parse reply keyboard markup JSON object") from None
        rows = raw.get("inline_keyboard") if isinstance(raw, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            raise _tg_error(400, "Bad Request: field \"inline_keyboard\" of the InlineKeyboardMarkup must be an Array")
        for row in rows:
            for b in row:
                if not isinstance(b, dict) or not isinstance(b.get("text"), str) or not b["text"]:
                    raise _tg_error(400, "Bad Request: can't parse inline keyboard button: Text buttons are unallowed "
                                         "in the inline keyboard")
                kinds = [k for k in ("url", "callback_data") if k in b]
                if len(kinds) != 1:
                    raise _tg_error(400, "Bad Request: can't parse inline keyboard button: "
                                         "InlineKeyboardButton must have exactly one optional field")
                data = b.get("callback_data")
                if data is not None and (not isinstance(data, str)
                                         or not 1 <= len(data.encode()) <= CALLBACK_DATA_MAX):
                    raise _tg_error(400, "Bad Request: BUTTON_DATA_INVALID")
        return {"inline_keyboard": rows}

    def get_updates(self, body: dict[str, Any]) -> Any:
        with self._cv:
            self.polls.append(dict(body))
        offset = _int(body.get("offset"), 0)
        timeout = max(0.0, min(float(_int(body.get("timeout"), 0)), 50.0))
        limit = max(1, min(_int(body.get("limit"), 100), 100))
        with self._cv:
            if offset:
                # An offset confirms every update below it: they are never returned again.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._poller += 1
            me = self._poller
            self._cv.notify_all()
            end = time.monotonic() + timeout
            while not self._updates:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(min(left, 0.1))
                if self._poller != me:
                    raise _tg_error(409, "Conflict: terminated by other getUpdates request; make sure that only "
                                         "one bot instance is running")
            return [dict(u) for u in self._updates[:limit]]

    def answer_callback_query(self, body: dict[str, Any]) -> Any:
        qid = str(body.get("callback_query_id") or "")
        with self._cv:
            found = self._queries.get(qid)
            if found is None or found[1] or self.clock() - found[0] > self.callback_ttl:
                raise _tg_error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
            self._queries[qid] = (found[0], True)
            self.answers.append(dict(body))
        return True

    def edit_message_text(self, body: dict[str, Any]) -> Any:
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise _tg_error(400, "Bad Request: message text is empty")
        if len(text) > TEXT_MAX:
            raise _tg_error(400, "Bad Request: MESSAGE_TOO_LONG")
        markup = self._markup(body.get("reply_markup"))
        with self._cv:
            mid = _int(body.get("message_id"), -1)
            msg = next((m for m in self.messages if m.message_id == mid and m.chat_id == str(body.get("chat_id"))),
                       None)
            if msg is None:
                raise _tg_error(400, "Bad Request: message to edit not found")
            if msg.text == text and msg.reply_markup == markup:
                raise _tg_error(400, "Bad Request: message is not modified: specified new message content and "
                                     "reply markup are exactly the same as a current content and reply markup of "
                                     "the message")
            msg.edits.append(msg.text)
            msg.text, msg.reply_markup = text, markup
            return msg.as_api()

    # --- the person with the phone ----------------------------------------------------
    def tap(self, message_id: int, label: str, *, user_id: int, username: str | None = None,
            age: float = 0.0, data: str | None = None) -> dict[str, Any]:
        """Tap a button of a sent message as the app does: a callback_query update carrying
        the button's own callback_data and who tapped. `age`: seconds ago it happened.
        `data`: what a modified client sends instead (a replayed or forged callback)."""
        with self._cv:
            msg = next(m for m in self.messages if m.message_id == message_id)
            # a button's text names what it acts on ("Approve #3 abc1234"): its verb finds it
            button = next((b for b in msg.buttons() if b["text"] == label), None) \
                or next((b for b in msg.buttons() if str(b["text"]).split(" ")[0] == label), None)
            if data is not None:
                button = {"text": label, "callback_data": data}
            if button is None or "callback_data" not in button:
                raise LookupError(f"message {message_id} has no button {label!r}: {msg.buttons()}")
            qid = str(secrets.randbits(63))
            self._queries[qid] = (self.clock() - age, False)
            user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": username or "someone"}
            if username:
                user["username"] = username
            update = {"update_id": self._next_update,
                      "callback_query": {"id": qid, "from": user, "message": msg.as_api(),
                                         "chat_instance": "42", "data": button["callback_data"]}}
            self._next_update += 1
            self._updates.append(update)
            self._cv.notify_all()
            return update

    def pending_updates(self) -> int:
        with self._cv:
            return len(self._updates)


# --- ntfy ------------------------------------------------------------------------------

def parse_actions_header(value: str) -> list[dict[str, Any]]:
    """ntfy's short form: `http, Label, https://url, method=POST, headers.X=y, body=z; view, …`."""
    actions = []
    for part in _split(value, ";"):
        fields = [f.strip() for f in _split(part, ",")]
        if not fields or not fields[0]:
            continue
        action: dict[str, Any] = {"action": fields[0].lower()}
        positional = ["label", "url"]
        for f in fields[1:]:
            key, sep, val = f.partition("=")
            if sep and re.fullmatch(r"[a-z]+(\.[A-Za-z0-9_-]+)?", key):
                if key.startswith("headers."):
                    action.setdefault("headers", {})[key[len("headers."):]] = _unquote(val)
                else:
                    action[key] = _unquote(val)
            elif positional:
                action[positional.pop(0)] = _unquote(f)
        actions.append(action)
    return actions


def _split(text: str, sep: str) -> list[str]:
    out, cur, quote = [], "", ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            cur += ch
        elif ch == sep:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [o for o in out if o.strip()]


def _unquote(v: str) -> str:
    v = v.strip()
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] and v[0] in "\"'" else v


def _ntfy_error(status: int, code: int, text: str) -> ApiError:
    return ApiError(status, {"code": code, "http": status, "error": text})


@dataclass
class NtfyMessage:
    id: str
    time: int
    topic: str
    message: str
    title: str | None = None
    priority: int | None = None
    tags: list[str] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)

    def as_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "time": self.time, "expires": self.time + int(NTFY_CACHE),
                               "event": "message", "topic": self.topic, "message": self.message}
        if self.title:
            out["title"] = self.title
        if self.priority:
            out["priority"] = self.priority
        if self.tags:
            out["tags"] = self.tags
        if self.actions:
            out["actions"] = self.actions
        return out


class NtfyServer:
    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.topics: dict[str, list[NtfyMessage]] = {}
        self._acl: dict[str, tuple[set[str], set[str]]] = {}  # topic → (read tokens, write tokens)
        self._known: set[str] = set()

    def acl(self, topic: str, *, read: set[str] | None = None, write: set[str] | None = None) -> None:
        """Deny everyone on `topic` except these tokens (a token may be in both)."""
        with self._lock:
            self._acl[topic] = (set(read or ()), set(write or ()))
            self._known |= set(read or ()) | set(write or ())

    def _check(self, topic: str, auth: str | None, need: str) -> None:
        with self._lock:
            rule = self._acl.get(topic)
            known = set(self._known)
        token = auth[len("Bearer "):].strip() if auth and auth.startswith("Bearer ") else None
        if token is not None and token not in known and rule is not None:
            raise _ntfy_error(401, 40101, "unauthorized")
        if rule is None:
            return
        allowed = rule[0] if need == "read" else rule[1]
        if token is None or token not in allowed:
            raise _ntfy_error(403, 40301, "forbidden")

    def publish(self, topic: str, message: str, *, auth: str | None, title: str | None = None,
                priority: str | int | None = None, tags: list[str] | None = None,
                actions: list[dict[str, Any]] | None = None) -> NtfyMessage:
        if not re.fullmatch(r"[-_A-Za-z0-9]{1,64}", topic):
            raise _ntfy_error(400, 40010, "invalid topic")
        self._check(topic, auth, "write")
        actions = actions or []
        if len(actions) > NTFY_ACTIONS_MAX:
            raise _ntfy_error(400, 40018, f"invalid request: too many actions, only {NTFY_ACTIONS_MAX} allowed")
        for a in actions:
            if a.get("action") not in ("view", "broadcast", "http") or not a.get("label"):
                raise _ntfy_error(400, 40018, "invalid request: action invalid")
            if a["action"] in ("view", "http") and not str(a.get("url", "")).startswith(("http://", "https://")):
                raise _ntfy_error(400, 40018, "invalid request: action url invalid")
        words = {"min": 1, "low": 2, "default": 3, "high": 4, "max": 5, "urgent": 5}
        try:
            prio = words.get(str(priority), None) or (int(priority) if priority not in (None, "") else None)
        except ValueError:
            raise _ntfy_error(400, 40007, "invalid request: priority invalid") from None
        msg = NtfyMessage(id="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12)),
                          time=int(self.clock()), topic=topic, message=message, title=title, priority=prio,
                          tags=list(tags or []), actions=actions)
        with self._lock:
            self.topics.setdefault(topic, []).append(msg)
        return msg

    def poll(self, topic: str, since: str | None, *, auth: str | None) -> list[dict[str, Any]]:
        self._check(topic, auth, "read")
        now = self.clock()
        with self._lock:
            cached = [m for m in self.topics.get(topic, []) if now - m.time <= NTFY_CACHE]
        if since in (None, "", "all"):
            return [m.as_api() for m in cached]
        if since == "none":
            return []
        if since.isdigit():
            return [m.as_api() for m in cached if m.time >= int(since)]
        ids = [m.id for m in cached]
        if since in ids:
            return [m.as_api() for m in cached[ids.index(since) + 1:]]
        return [m.as_api() for m in cached]  # an id no longer cached: everything still cached


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
