"""A local stand-in for Discord, Slack, a generic webhook and ntfy (stdlib only).

It enforces the limits the real services document, so a payload that would bounce off
Discord in production bounces off here too:

- Discord ``POST /discord/<id>/<token>[?wait=true]``: JSON body; content ≤ 2000 chars,
  ≤ 10 embeds, embed title ≤ 256, description ≤ 4096, all embed text ≤ 6000, username
  ≤ 80 and not containing "discord"/"clyde"; content or embeds required. Errors are 400
  with Discord's error JSON. ``wait=true`` answers 200 with the message (``id``), else 204.
- Slack ``POST /slack/...``: needs ``text`` or ``blocks`` (else 400 ``no_text``), answers
  200 ``ok``; text over 40,000 chars is truncated, as Slack does.
- ``POST /webhook/...`` accepts anything.
- ntfy under ``/ntfy`` and the Telegram Bot API under ``/telegram/bot<token>/<method>``,
  with the rules in standins/botapi.py (``r.ntfy``, ``r.telegram``; ``r.telegram.tap(...)``
  is a person tapping a button). ``advance(s)`` moves their clock (ntfy's 12 h cache).

Faults on demand: ``fail_next(n, status, retry_after)``, ``hang_next(n)``, ``hang()``, ``slow(s)``,
``set_failure_rate(p, seed)`` (a random 500/429/hang mix for soak tests), and ``stop()`` /
``restart()`` on the same port for "down". Loopback only.

Run as a process: ``python -m opskit.standins.receiver --port P [--record FILE]``; then
``GET /_received`` lists what was accepted and ``POST /_control`` sets faults, e.g.
``{"fail_next": {"n": 2, "status": 503}}``, ``{"hang": true}``, ``{"reset": true}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opskit.standins.botapi import ApiError, NtfyServer, TelegramBot, parse_actions_header

HOST = "127.0.0.1"

# Discord's documented webhook limits (developer docs: Execute Webhook, Embed Limits).
DISCORD_CONTENT_MAX = 2000
DISCORD_EMBEDS_MAX = 10
DISCORD_EMBED_TITLE_MAX = 256
DISCORD_EMBED_DESCRIPTION_MAX = 4096
DISCORD_EMBED_TOTAL_MAX = 6000
DISCORD_USERNAME_MAX = 80
SLACK_TEXT_MAX = 40_000
SLACK_BLOCKS_MAX = 50


@dataclass
class Received:
    """One accepted message."""

    kind: str  # discord | slack | webhook | ntfy
    path: str
    body: Any  # parsed JSON, or the text for ntfy / non-JSON webhooks
    headers: dict[str, str]
    ts: str
    remote_id: str | None = None


@dataclass
class _Faults:
    fail_left: int = 0
    fail_status: int = 500
    fail_retry_after: float | None = None
    hang_left: int = 0
    hang_all: bool = False
    rate: float = 0.0
    delay: float = 0.0
    rng: random.Random = field(default_factory=random.Random)


class Receiver:
    """The receiver as a thread server: ``with Receiver.start() as r: ... r.messages``."""

    def __init__(self, port: int | None = None, *, record: Path | None = None,
                 hang_seconds: float = 30.0) -> None:
        self.port = port or 0
        self.record = record
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self.requests: list[tuple[str, int]] = []  # (path without token, status answered)
        self._faults = _Faults()
        self._ids = itertools.count(int(time.time() * 1000) << 22)
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._skew = 0.0
        self.telegram = TelegramBot(clock=self.time)
        self.ntfy = NtfyServer(clock=self.time)

    def time(self) -> float:
        """The stand-in services' clock: real time plus what advance() added."""
        return time.time() + self._skew

    def advance(self, seconds: float) -> None:
        self._skew += seconds

    # --- lifecycle ------------------------------------------------------------------------
    @classmethod
    def start(cls, port: int | None = None, *, record: Path | None = None,
              hang_seconds: float = 30.0) -> Receiver:
        r = cls(port, record=record, hang_seconds=hang_seconds)
        r._serve()
        return r

    def _serve(self) -> None:
        self._release = threading.Event()
        server = _Server((HOST, self.port), _Handler)
        server.receiver = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"receiver:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Go down: the port refuses connections until restart()."""
        server, self._server = self._server, None
        self._release.set()  # let hanging requests end
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        """Come back up on the same port."""
        if self._server is None:
            self._serve()

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------------
    def url(self, kind: str = "discord", name: str = "ops") -> str:
        """A webhook URL of this kind. Its token part is long and unique so tests can grep for it."""
        base = f"http://{HOST}:{self.port}"
        if kind == "discord":
            return f"{base}/discord/1234567890/tok-{name}-Zq8xK2mVn4Lp7RtY"
        if kind == "slack":
            return f"{base}/slack/T000/B000/tok-{name}-Hs5dWq1Jk9Uc3Fe"
        if kind == "webhook":
            return f"{base}/webhook/{name}"
        if kind == "ntfy":
            return f"{base}/ntfy/{name}"
        if kind == "telegram":  # the api_url; the bot token goes after it
            return f"{base}/telegram"
        raise ValueError(f"unknown receiver kind {kind!r}")

    # --- what arrived ---------------------------------------------------------------------
    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """The messages, once at least `count` arrived (or the timeout passed)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msgs = self.messages
            if len(msgs) >= count:
                return msgs
            time.sleep(0.02)
        return self.messages

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self.requests.clear()

    # --- faults ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int, retry_after: float | None = None) -> None:
        """The next n requests get `status` (429 carries Discord's rate-limit JSON + Retry-After)."""
        with self._lock:
            self._faults.fail_left = n
            self._faults.fail_status = status
            self._faults.fail_retry_after = retry_after

    def hang_next(self, n: int) -> None:
        with self._lock:
            self._faults.hang_left = n

    def hang(self, on: bool = True) -> None:
        """Accept connections and never answer (until hang_seconds, then drop)."""
        with self._lock:
            self._faults.hang_all = on

    def set_failure_rate(self, p: float, seed: int | None = None) -> None:
        """A fraction p of requests fail: an even mix of 500, 429 and a hang."""
        with self._lock:
            self._faults.rate = p
            self._faults.rng = random.Random(seed)

    def slow(self, seconds: float) -> None:
        """Answer every request after `seconds` (0 turns it off)."""
        with self._lock:
            self._faults.delay = seconds

    def reset(self) -> None:
        with self._lock:
            self._faults = _Faults()

    def _fault(self) -> tuple[str, int, float | None] | None:
        """What to do to this request: ("hang"|"status", status, retry_after), or None."""
        with self._lock:
            f = self._faults
            if f.hang_all:
                return ("hang", 0, None)
            if f.hang_left > 0:
                f.hang_left -= 1
                return ("hang", 0, None)
            if f.fail_left > 0:
                f.fail_left -= 1
                return ("status", f.fail_status, f.fail_retry_after)
            if f.rate > 0 and f.rng.random() < f.rate:
                pick = f.rng.choice(("500", "429", "hang"))
                if pick == "hang":
                    return ("hang", 0, None)
                return ("status", int(pick), 0.05 if pick == "429" else None)
        return None

    def _accept(self, msg: Received) -> None:
        with self._lock:
            self._messages.append(msg)
            if self.record is not None:
                with self.record.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(asdict(msg), ensure_ascii=False) + "\n")

    def next_id(self) -> str:
        with self._lock:
            return str(next(self._ids))

    def control(self, spec: dict[str, Any]) -> None:
        """Faults set over HTTP when the receiver runs as its own process."""
        if spec.get("reset"):
            self.reset()
        if "clear" in spec:
            self.clear()
        if "fail_next" in spec:
            f = spec["fail_next"]
            self.fail_next(int(f.get("n", 1)), int(f.get("status", 500)), f.get("retry_after"))
        if "hang_next" in spec:
            self.hang_next(int(spec["hang_next"]))
        if "hang" in spec:
            self.hang(bool(spec["hang"]))
        if "slow" in spec:
            self.slow(float(spec["slow"]))
        if "failure_rate" in spec:
            f = spec["failure_rate"]
            self.set_failure_rate(float(f.get("p", 0)), f.get("seed"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart() on the same port while old sockets linger
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the client went away (killed during a long poll): nothing to report
        super().handle_error(request, client_address)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "opskit-receiver/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # --- plumbing -------------------------------------------------------------------------
    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            ctype = "application/json"
        elif body is None:
            data, ctype = b"", "text/plain"
        else:
            data, ctype = str(body).encode(), "text/plain; charset=utf-8"
        # Recorded before the answer goes out: a client that has its answer may look at once.
        with self.server.receiver._lock:
            self.server.receiver.requests.append((self._public_path(), status))
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if status != 204 and data:
            self.wfile.write(data)

    def _public_path(self) -> str:
        path = urlsplit(self.path).path
        parts = path.split("/")
        if len(parts) > 2 and parts[1] in ("discord", "slack"):
            return "/".join(parts[:2]) + "/…"
        if len(parts) > 3 and parts[1] == "telegram":
            return f"/telegram/bot…/{parts[3]}"
        return path

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # --- routes ---------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        r = self.server.receiver
        path = urlsplit(self.path).path
        parts = [p for p in path.split("/") if p]
        if path == "/_received":
            self._reply(200, [asdict(m) for m in r.messages])
        elif path == "/_health":
            self._reply(200, "ok")
        elif parts[:1] in (["telegram"], ["ntfy"]):
            self._faulted_or(parts[0], lambda: self._api_get(parts))
        else:
            self._reply(404, {"message": "404: Not Found", "code": 0})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        r = self.server.receiver
        split = urlsplit(self.path)
        parts = [p for p in split.path.split("/") if p]
        raw = self._body()
        if parts[:1] == ["_control"]:
            try:
                r.control(json.loads(raw or b"{}"))
            except (ValueError, TypeError, AttributeError) as e:
                self._reply(400, {"error": str(e)})
                return
            self._reply(200, {"ok": True})
            return
        kind = parts[0] if parts else ""
        if kind == "telegram" or (kind == "ntfy" and len(parts) == 1):
            self._faulted_or(kind, lambda: self._api_post(parts, raw))
            return
        if kind not in ("discord", "slack", "webhook", "ntfy"):
            self._reply(404, {"message": "404: Not Found", "code": 0})
            return
        with r._lock:
            delay = r._faults.delay
        if delay > 0:
            r._release.wait(delay)
        fault = r._fault()
        if fault is not None:
            self._inject(kind, *fault)
            return
        query = parse_qs(split.query)
        if kind == "discord":
            self._discord(parts, raw, query.get("wait", ["false"])[0].lower() == "true")
        elif kind == "slack":
            self._slack(raw)
        elif kind == "ntfy":
            self._ntfy(parts, raw)
        else:
            self._webhook(raw)

    def _faulted_or(self, kind: str, answer: Any) -> None:
        r = self.server.receiver
        with r._lock:
            delay = r._faults.delay
        if delay > 0:
            r._release.wait(delay)
        fault = r._fault()
        if fault is not None:
            self._inject(kind, *fault)
            return
        try:
            status, body = answer()
        except ApiError as e:
            self._reply(e.status, e.body)
            return
        self._reply(status, body)

    def _api_get(self, parts: list[str]) -> tuple[int, Any]:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
        if parts[0] == "telegram":
            return self._telegram(parts, query)
        if len(parts) == 3 and parts[2] == "json" and query.get("poll") in ("1", "true"):
            found = self.server.receiver.ntfy.poll(parts[1], query.get("since"),
                                                   auth=self.headers.get("Authorization"))
            return 200, "".join(json.dumps(m) + "\n" for m in found)
        return 404, {"code": 40401, "http": 404, "error": "page not found"}

    def _api_post(self, parts: list[str], raw: bytes) -> tuple[int, Any]:
        if parts[0] == "telegram":
            body: dict[str, Any] = {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if raw:
                try:
                    loaded = json.loads(raw)
                except ValueError:
                    return 400, {"ok": False, "error_code": 400, "description": "Bad Request: invalid JSON"}
                if isinstance(loaded, dict):
                    body.update(loaded)
            return self._telegram(parts, body)
        try:  # ntfy's JSON publishing: POST to the server root
            spec = json.loads(raw)
            assert isinstance(spec, dict) and isinstance(spec.get("topic"), str)
        except (ValueError, AssertionError):
            return 400, {"code": 40024, "http": 400, "error": "invalid request: JSON body invalid"}
        msg = self.server.receiver.ntfy.publish(
            spec["topic"], str(spec.get("message", "triggered")), auth=self.headers.get("Authorization"),
            title=spec.get("title"), priority=spec.get("priority"), tags=spec.get("tags"),
            actions=spec.get("actions"))
        self.server.receiver._accept(Received("ntfy", self._public_path(), spec, dict(self.headers), _now(), msg.id))
        return 200, msg.as_api()

    def _telegram(self, parts: list[str], body: dict[str, Any]) -> tuple[int, Any]:
        if len(parts) != 3 or not parts[1].startswith("bot"):
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        result = self.server.receiver.telegram.handle(parts[1][3:], parts[2], body)
        if parts[2] == "sendMessage":
            self.server.receiver._accept(Received("telegram", self._public_path(), body, dict(self.headers),
                                                  _now(), str(result["message_id"])))
        return 200, {"ok": True, "result": result}

    def _inject(self, kind: str, how: str, status: int, retry_after: float | None) -> None:
        r = self.server.receiver
        if how == "hang":
            r._release.wait(r.hang_seconds)
            self.close_connection = True
            return
        if kind == "telegram":
            tg: dict[str, Any] = {"ok": False, "error_code": status,
                                  "description": {429: "Too Many Requests: retry after 1", 401: "Unauthorized",
                                                  403: "Forbidden: bot was kicked from the group chat",
                                                  400: "Bad Request: chat not found"}.get(status, "Internal Server Error")}
            if status == 429:
                wait = 1 if retry_after is None else max(0, math.ceil(retry_after))
                tg["description"] = f"Too Many Requests: retry after {wait}"
                tg["parameters"] = {"retry_after": wait}
            self._reply(status, tg)
            return
        if status == 429:
            after = 1.0 if retry_after is None else retry_after
            headers = {"Retry-After": str(max(0, math.ceil(after)))}
            if kind == "discord":
                headers["X-RateLimit-Scope"] = "user"
                self._reply(429, {"message": "You are being rate limited.", "retry_after": after,
                                  "global": False}, headers)
            else:
                self._reply(429, "rate_limited", headers)
            return
        if kind == "discord":
            known = {404: ("Unknown Webhook", 10015), 401: ("Invalid Webhook Token", 50027),
                     403: ("Missing Access", 50001)}
            text, code = known.get(status, (f"{status}: injected failure", 0))
            self._reply(status, {"message": text, "code": code})
        elif kind == "slack":
            known_s = {404: "no_service", 403: "invalid_token", 410: "channel_is_archived", 400: "invalid_payload"}
            self._reply(status, known_s.get(status, "internal_error"))
        else:
            self._reply(status, {"error": f"injected {status}"})

    def _discord(self, parts: list[str], raw: bytes, wait: bool) -> None:
        if len(parts) < 3:
            self._reply(404, {"message": "Unknown Webhook", "code": 10015})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._reply(400, {"message": "The request body contains invalid JSON.", "code": 50109})
            return
        if not isinstance(body, dict):
            self._reply(400, {"message": "Invalid Form Body", "code": 50035})
            return
        errors = discord_errors(body)
        if errors == "empty":
            self._reply(400, {"message": "Cannot send an empty message", "code": 50006})
            return
        if errors:
            self._reply(400, {"message": "Invalid Form Body", "code": 50035, "errors": errors})
            return
        r = self.server.receiver
        mid = r.next_id()
        r._accept(Received("discord", self._public_path(), body, dict(self.headers), _now(), mid))
        if wait:
            self._reply(200, {"id": mid, "type": 0, "content": body.get("content", ""),
                              "channel_id": "1", "webhook_id": parts[1],
                              "embeds": body.get("embeds", []), "timestamp": _now()})
        else:
            self._reply(204)

    def _slack(self, raw: bytes) -> None:
        try:
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("application/x-www-form-urlencoded"):
                body = json.loads(parse_qs(raw.decode())["payload"][0])
            else:
                body = json.loads(raw)
        except (ValueError, KeyError):
            self._reply(400, "invalid_payload")
            return
        if not isinstance(body, dict):
            self._reply(400, "invalid_payload")
            return
        text, blocks = body.get("text"), body.get("blocks")
        if not (isinstance(text, str) and text.strip()) and not blocks:
            self._reply(400, "no_text")
            return
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > SLACK_BLOCKS_MAX):
            self._reply(400, "invalid_blocks")
            return
        if isinstance(text, str) and len(text) > SLACK_TEXT_MAX:
            body = dict(body, text=text[:SLACK_TEXT_MAX])  # Slack truncates, it does not refuse
        r = self.server.receiver
        r._accept(Received("slack", self._public_path(), body, dict(self.headers), _now()))
        self._reply(200, "ok")

    def _ntfy(self, parts: list[str], raw: bytes) -> None:
        r = self.server.receiver
        text = raw.decode("utf-8", "replace")
        topic = parts[1] if len(parts) > 1 else ""
        h = self.headers
        try:
            actions = parse_actions_header(h.get("Actions") or h.get("X-Actions") or "")
            msg = r.ntfy.publish(topic, text, auth=h.get("Authorization"), title=h.get("Title") or h.get("X-Title"),
                                 priority=h.get("Priority") or h.get("X-Priority"),
                                 tags=[t for t in (h.get("Tags") or "").split(",") if t], actions=actions)
        except ApiError as e:
            self._reply(e.status, e.body)
            return
        r._accept(Received("ntfy", self._public_path(), text, dict(self.headers), _now(), msg.id))
        self._reply(200, msg.as_api())

    def _webhook(self, raw: bytes) -> None:
        body: Any
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        r = self.server.receiver
        r._accept(Received("webhook", self._public_path(), body, dict(self.headers), _now()))
        self._reply(200, {"ok": True})


def discord_errors(body: dict[str, Any]) -> dict[str, Any] | str | None:
    """Discord's verdict on a webhook body: None if accepted, "empty", or its error tree."""
    errors: dict[str, Any] = {}

    def too_long(n: int) -> dict[str, Any]:
        return {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {n} or fewer in length."}]}

    content = body.get("content")
    embeds = body.get("embeds")
    if content is not None and not isinstance(content, str):
        errors["content"] = {"_errors": [{"code": "BASE_TYPE_STRING", "message": "Must be a string."}]}
    elif isinstance(content, str) and len(content) > DISCORD_CONTENT_MAX:
        errors["content"] = too_long(DISCORD_CONTENT_MAX)
    username = body.get("username")
    if isinstance(username, str):
        if len(username) > DISCORD_USERNAME_MAX:
            errors["username"] = too_long(DISCORD_USERNAME_MAX)
        elif any(w in username.lower() for w in ("discord", "clyde")):
            errors["username"] = {"_errors": [{"code": "USERNAME_INVALID_CONTAINS",
                                               "message": "Username cannot contain \"discord\""}]}
    if embeds is not None:
        if not isinstance(embeds, list):
            errors["embeds"] = {"_errors": [{"code": "BASE_TYPE_ARRAY", "message": "Must be an array."}]}
        elif len(embeds) > DISCORD_EMBEDS_MAX:
            errors["embeds"] = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
                                             "message": f"Must be {DISCORD_EMBEDS_MAX} or fewer in length."}]}
        else:
            total = 0
            for i, e in enumerate(embeds):
                if not isinstance(e, dict):
                    errors.setdefault("embeds", {})[str(i)] = {"_errors": [{"code": "MODEL_TYPE_CONVERT"}]}
                    continue
                sub: dict[str, Any] = {}
                title, desc = e.get("title") or "", e.get("description") or ""
                if len(title) > DISCORD_EMBED_TITLE_MAX:
                    sub["title"] = too_long(DISCORD_EMBED_TITLE_MAX)
                if len(desc) > DISCORD_EMBED_DESCRIPTION_MAX:
                    sub["description"] = too_long(DISCORD_EMBED_DESCRIPTION_MAX)
                total += len(title) + len(desc)
                total += len((e.get("footer") or {}).get("text") or "")
                total += len((e.get("author") or {}).get("name") or "")
                for f in e.get("fields") or []:
                    total += len(f.get("name") or "") + len(f.get("value") or "")
                color = e.get("color")
                if color is not None and (not isinstance(color, int) or not 0 <= color <= 0xFFFFFF):
                    sub["color"] = {"_errors": [{"code": "NUMBER_TYPE_MAX", "message": "Invalid color."}]}
                if sub:
                    errors.setdefault("embeds", {})[str(i)] = sub
            if total > DISCORD_EMBED_TOTAL_MAX:
                errors.setdefault("embeds", {})["_errors"] = [{
                    "code": "MAX_EMBED_SIZE_EXCEEDED",
                    "message": f"Embed size exceeds maximum size of {DISCORD_EMBED_TOTAL_MAX}"}]
    if errors:
        return errors
    has_content = isinstance(content, str) and content.strip() != ""
    if not has_content and not embeds:
        return "empty"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opskit.standins.receiver",
                                 description="Local Discord/Slack/webhook/ntfy stand-in (127.0.0.1 only).")
    ap.add_argument("--port", type=int, default=0, help="port to bind (default: any free port)")
    ap.add_argument("--record", type=Path, help="append each accepted message to this file (JSON lines)")
    ap.add_argument("--hang-seconds", type=float, default=30.0, help="how long a hung request is held")
    args = ap.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    r = Receiver.start(args.port, record=args.record, hang_seconds=args.hang_seconds)
    print(f"receiver listening on http://{HOST}:{r.port}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        r.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
