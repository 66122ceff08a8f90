"""Pings to an external dead man's switch (healthchecks.io, Uptime Kuma, Better Stack, Cronitor…).

One request, a short timeout, never an exception: a monitor that is down or hangs must not
stop the work that pings it. The URL holds the check's secret (its uuid or token), so nothing
here puts it in an error: the errors are redacted and name the kind of failure only.

healthchecks.io's ping API (https://healthchecks.io/docs/http_api/): `URL` success, `URL/start`,
`URL/fail`, `URL/<0-255>` (0 success, anything else failure); a POST body is logged up to
100 kB (100,000 bytes) — the first BODY_MAX bytes are what we send. Uptime Kuma's push monitor:
`GET URL?status=up|down&msg=…`.
"""

from __future__ import annotations

import threading
import urllib.parse
from dataclasses import dataclass

from opskit.base.config import Secret

BODY_MAX = 100_000  # healthchecks.io logs the first 100 kB of a ping's body
KUMA_MSG_MAX = 250  # Uptime Kuma shows the msg in a one-line list: keep it short
TIMEOUT = 10.0  # seconds for the whole request: cron-check runs every few minutes


@dataclass(frozen=True)
class PingResult:
    ok: bool
    status: int | None = None  # the HTTP status, None when no answer came
    error: str | None = None  # what went wrong, without the URL


def cut(body: str, limit: int = BODY_MAX) -> bytes:
    """The body's UTF-8 bytes, cut to limit on a character boundary (the tail is what matters
    least for a heartbeat; a job's output tail is cut from the front by the caller)."""
    data = body.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def suffixed(url: str, suffix: str) -> str:
    """url with suffix after its path (`/start`, `/fail`, `/1`), the query string kept."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") + "/" + suffix.lstrip("/") if suffix else parts.path
    return urllib.parse.urlunsplit(parts._replace(path=path))


def kuma(url: str, up: bool, msg: str) -> str:
    """An Uptime Kuma push URL saying up or down with msg (status/msg already in it are replaced)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k not in ("status", "msg")]
    short = msg if len(msg) <= KUMA_MSG_MAX else msg[:KUMA_MSG_MAX - 3] + "..."
    query += [("status", "up" if up else "down"), ("msg", short)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def send(url: Secret, *, suffix: str = "", body: str | None = None, style: str = "healthchecks",
         up: bool = True, timeout: float = TIMEOUT) -> PingResult:
    """One ping. healthchecks style: POST URL+suffix with body (≤ BODY_MAX bytes). uptime-kuma
    style: GET with status and msg. Never raises; a 2xx answer is ok.

    httpx's timeout bounds each phase (connect, write, each read), so a monitor that trickles its
    answer a byte at a time could hold a request far longer; the request runs in a daemon thread
    and is abandoned at the deadline (the process exits without waiting for it)."""
    t = min(timeout, TIMEOUT)
    done: list[PingResult] = []
    worker = threading.Thread(target=lambda: done.append(_request(url, suffix, body, style, up, t)),
                              name="opskit-ping", daemon=True)
    worker.start()
    worker.join(t + 0.5)
    return done[0] if done else PingResult(False, None, f"no answer within {t:g}s")


def _request(url: Secret, suffix: str, body: str | None, style: str, up: bool, t: float) -> PingResult:
    import httpx  # only when a ping is configured: run-job's start-up stays light without one

    raw = url.reveal()
    try:
        with httpx.Client(timeout=httpx.Timeout(t), follow_redirects=False) as client:
            if style == "uptime-kuma":
                r = client.get(kuma(raw, up, body or ("OK" if up else "failing")))
            else:
                r = client.post(suffixed(raw, suffix), content=cut(body or ""),
                                headers={"Content-Type": "text/plain; charset=utf-8"})
    except httpx.TimeoutException:
        return PingResult(False, None, f"no answer within {t:g}s")
    except httpx.HTTPError as e:
        return PingResult(False, None, _kind(e))
    except Exception as e:  # a ping must never take its caller down
        # never the exception's text: an invalid host is quoted there, and the host can hold the secret
        return PingResult(False, None, f"the ping URL is not usable ({type(e).__name__})")
    if 200 <= r.status_code < 300:
        return PingResult(True, r.status_code)
    return PingResult(False, r.status_code, f"the monitor answered HTTP {r.status_code}")


def _kind(e: Exception) -> str:
    """The failure's kind and the OS's reason, never httpx's message (it can quote the URL)."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else type(e).__name__
    return f"cannot reach the monitor ({reason})"


# --- the heartbeat's own record (kv scope "heartbeat", key "state") ----------------------------
# {"failing": bool, "since": ISO of the outage's first failed ping, "error": …, "last_success": ISO,
#  "last_failure": ISO, "last_form": "success" | "failure"}: status and metrics read it.
HEARTBEAT = "heartbeat"
