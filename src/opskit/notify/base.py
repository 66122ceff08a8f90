"""What every channel kind shares: the message, the outcome, levels, cutting, HTTP.

A channel module has one function, ``deliver(ch, msg, timeout) -> Outcome``. It never
raises for a delivery problem and never lets a URL into its error text: httpx's
exceptions carry the full webhook URL, so we describe failures in our own words
("Connection refused", "timed out after 10.0s", "HTTP 503").
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from opskit.base.errors import redact

if TYPE_CHECKING:
    import httpx  # start-up: only sending needs it

# level → (emoji, colour). Colours chosen to read on Discord's dark and light themes.
LEVEL_STYLE: dict[str, tuple[str, int]] = {
    "info": ("ℹ️", 0x3498DB),  # blue
    "warning": ("⚠️", 0xFFB000),  # amber
    "error": ("🔴", 0xE74C3C),  # red
    "critical": ("🚨", 0x8B0000),  # dark red
}

# Answers that say "this will never work as configured": the channel is
# marked broken instead of retried forever.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410})
# 408/425 mean "try again" even though they are 4xx.
TRANSIENT_4XX = frozenset({408, 425, 429})

Kind = Literal["delivered", "transient", "permanent"]


@dataclass(frozen=True)
class Action:
    """A button that carries a decision back (`opskit inbox`): its label and signed token."""

    label: str
    token: str


@dataclass(frozen=True)
class Message:
    """One outbox row as a channel sees it."""

    outbox_id: int
    channel: str
    level: str
    title: str | None
    text: str
    service: str | None
    event_id: int | None
    created: str
    actions: tuple[Action, ...] = ()  # only on channels whose taps come back (telegram, ntfy reply_url)

    @property
    def emoji(self) -> str:
        return LEVEL_STYLE.get(self.level, LEVEL_STYLE["info"])[0]

    @property
    def color(self) -> int:
        return LEVEL_STYLE.get(self.level, LEVEL_STYLE["info"])[1]

    @property
    def heading(self) -> str:
        """The title, or a readable stand-in so every message has one."""
        if self.title:
            return self.title
        who = self.service or "opskit"
        return f"{who}: {self.level}"

    def truncation_marker(self) -> str:
        where = f"opskit journal event {self.event_id} / outbox {self.outbox_id}" if self.event_id \
            else f"opskit outbox {self.outbox_id} (opskit notify --show {self.outbox_id})"
        return f"… [truncated, full text in {where}]"


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    error: str | None = None
    status: int | None = None  # HTTP status or exit code, when there was one
    retry_after: float | None = None  # seconds the endpoint asked us to wait
    remote_id: str | None = None

    @classmethod
    def delivered(cls, remote_id: str | None = None, status: int | None = None) -> Outcome:
        return cls("delivered", remote_id=remote_id, status=status)

    @classmethod
    def transient(cls, error: str, *, status: int | None = None,
                  retry_after: float | None = None) -> Outcome:
        return cls("transient", error=redact(error), status=status, retry_after=retry_after)

    @classmethod
    def permanent(cls, error: str, *, status: int | None = None) -> Outcome:
        return cls("permanent", error=redact(error), status=status)


def cut(text: str, limit: int, marker: str) -> str:
    """text, or its head plus `marker`, in at most `limit` characters.

    Cuts at a line break or a space near the end when there is one, and closes a code
    fence the cut left open, so the reader sees a clean end and where the rest is.
    """
    if len(text) <= limit:
        return text
    room = max(0, limit - len(marker) - 1 - 4)  # 4: a closing "\n```" if needed
    head = text[:room]
    nl = head.rfind("\n", int(room * 0.8))
    if nl > 0:
        head = head[:nl]
    else:
        sp = head.rfind(" ", int(room * 0.9))
        if sp > 0:
            head = head[:sp]
    head = head.rstrip()
    if head.count("```") % 2:
        head += "\n```"
    return f"{head}\n{marker}"


def clip(text: str, limit: int) -> str:
    """A short field (a title) cut to `limit` with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# --- HTTP -----------------------------------------------------------------------------------

def post(url: str, *, timeout: float, json_body: Any = None, content: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[Outcome, httpx.Response | None]:
    """POST and classify the answer. The response is returned for a delivered outcome."""
    return request("POST", url, timeout=timeout, json_body=json_body, content=content, headers=headers)


def request(method: str, url: str, *, timeout: float, json_body: Any = None, content: bytes | None = None,
            headers: dict[str, str] | None = None,
            params: dict[str, str] | None = None) -> tuple[Outcome, httpx.Response | None]:
    """Any method, classified as post() does (`opskit inbox` GETs ntfy's reply topic)."""
    import httpx  # imported on the send path only: hooks and --help stay fast

    try:
        resp = _client().request(method, url, json=json_body, content=content, headers=headers, timeout=timeout,
                                 params=params, follow_redirects=False)
    except httpx.TimeoutException:
        return Outcome.transient(f"timed out after {timeout:.1f}s"), None
    except httpx.ConnectError as e:
        return Outcome.transient(_connect_phrase(e)), None
    except httpx.RemoteProtocolError:
        return Outcome.transient("the connection closed without an answer"), None
    except httpx.TransportError as e:
        return Outcome.transient(f"network error ({type(e).__name__})"), None
    except (httpx.InvalidURL, httpx.UnsupportedProtocol):
        return Outcome.permanent("the channel's URL is not valid"), None
    except UnicodeEncodeError:
        return Outcome.permanent("a header could not be encoded"), None
    return classify(resp), resp


_shared: tuple[int, httpx.Client] | None = None


def _client() -> httpx.Client:
    """One client per process: building one costs ~50 ms (TLS context), a flush of a
    long queue would spend most of its time there."""
    import httpx  # start-up: only sending needs it

    global _shared
    if _shared is None or _shared[0] != os.getpid():
        _shared = (os.getpid(), httpx.Client(headers={"User-Agent": "opskit"}))
    return _shared[1]


def _connect_phrase(e: Exception) -> str:
    text = str(e).lower()
    if "refused" in text:
        return "Connection refused"
    if "name or service not known" in text or "nodename nor servname" in text \
            or "temporary failure in name resolution" in text:
        return "cannot resolve the host name"
    if "unreachable" in text:
        return "network unreachable"
    if "ssl" in text or "certificate" in text:
        return "TLS handshake failed"
    return "cannot connect"


def classify(resp: httpx.Response) -> Outcome:
    status = resp.status_code
    if 200 <= status < 300:
        return Outcome.delivered(status=status)
    detail = _detail(resp)
    what = f"HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429:
        after = retry_after(resp)
        hint = f" (rate limited, retry after {after:g}s)" if after is not None else " (rate limited)"
        return Outcome.transient(f"HTTP 429{hint}", status=status, retry_after=after)
    if status >= 500 or status in TRANSIENT_4XX:
        return Outcome.transient(what, status=status)
    if 300 <= status < 400:
        return Outcome.permanent(f"HTTP {status}: redirected; use the final URL", status=status)
    return Outcome.permanent(what, status=status)


def _detail(resp: httpx.Response) -> str:
    """The endpoint's own short reason (Discord's "Unknown Webhook", Slack's "no_service")."""
    try:
        text = resp.text
    except Exception:
        return ""
    text = text.strip()
    if not text:
        return ""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str):
                text = body[key]
                break
        else:
            return ""
    if "<" in text[:1]:  # an HTML error page says nothing useful in one line
        return ""
    line = text.splitlines()[0] if text else ""
    return redact(clip(line, 120))


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds to wait from Discord's JSON `retry_after`, else the Retry-After header."""
    try:
        body = resp.json()
        if isinstance(body, dict) and isinstance(body.get("retry_after"), (int, float)):
            return max(0.0, float(body["retry_after"]))
    except (ValueError, UnicodeDecodeError):
        pass
    header = resp.headers.get("Retry-After")
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    import email.utils  # rare path: keep it off the import of opskit.notify

    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())
