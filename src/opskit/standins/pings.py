"""A local stand-in for healthchecks.io's ping API and Uptime Kuma's push monitor (stdlib only).

healthchecks.io (https://healthchecks.io/docs/http_api/, /docs/attaching_logs/): HEAD, GET or
POST to ``/<uuid>`` (success), ``/<uuid>/start``, ``/<uuid>/fail``, ``/<uuid>/log`` or
``/<uuid>/<0-255>`` (0 success, else failure); answers 200 ``OK``. A check is named by its UUID
(a malformed one is 400, an unknown one 404 ``not found``). Of a POST body only the first
BODY_LIMIT (100 kB = 100,000) bytes are kept, as the real service logs only those; a ping whose
body went over is marked ``cut``. Uptime Kuma: ``GET /api/push/<token>?status=up|down&msg=…``
answers ``{"ok": true}``.

Faults: ``hang(True)`` (accept, never answer until stop), ``trickle(interval)`` (answer 200 with a
50-byte body sent one byte per interval: every read is quick, the whole answer slow; ``trickled``
says whether one was sent to the end), ``stop()`` / ``restart()`` on the same port for "down".
Loopback only.
"""

from __future__ import annotations

import re
import threading
import uuid as uuidlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
BODY_LIMIT = 100_000  # healthchecks.io: "will log the first 100 kB (100000 bytes) of the request body"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Ping:
    check: str  # the uuid or Uptime Kuma token
    kind: str  # success | start | fail | log | exit (healthchecks); up | down (kuma)
    exit_status: int | None
    method: str
    body: bytes  # what the service keeps (≤ BODY_LIMIT)
    cut: bool  # the body sent was longer than BODY_LIMIT

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def failed(self) -> bool:
        return self.kind in ("fail", "down") or (self.kind == "exit" and self.exit_status != 0)


class PingReceiver:
    """``with PingReceiver.start() as r: url = r.check_url(); ... r.pings``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.checks: set[str] = set()
        self.pings: list[Ping] = []
        self.requests: list[str] = []  # every request line, for "the URL was hit"
        self._lock = threading.Lock()
        self._hang = False
        self._trickle: float | None = None
        self.trickled = False
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, port: int = 0) -> PingReceiver:
        r = cls(port)
        r._serve()
        return r

    def _serve(self) -> None:
        self._release = threading.Event()
        server = _Server((HOST, self.port), _Handler)
        server.pings = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"pings:{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        self._release.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def restart(self) -> None:
        if self._server is None:
            self._serve()

    def hang(self, on: bool = True) -> None:
        self._hang = on
        if not on:
            self._release.set()
            self._release = threading.Event()

    def trickle(self, interval: float | None) -> None:
        self._trickle = interval

    def __enter__(self) -> PingReceiver:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def check_url(self) -> str:
        """A new check's ping URL: http://127.0.0.1:PORT/<uuid> (the uuid is its secret)."""
        check = str(uuidlib.uuid4())
        self.checks.add(check)
        return f"http://{HOST}:{self.port}/{check}"

    def kuma_url(self) -> str:
        token = uuidlib.uuid4().hex[:10]
        self.checks.add(token)
        return f"http://{HOST}:{self.port}/api/push/{token}?status=up&msg=OK&ping="

    def of(self, url: str) -> list[Ping]:
        check = url.split("/api/push/", 1)[-1].split("?")[0].rsplit("/", 1)[-1]
        with self._lock:
            return [p for p in self.pings if p.check == check]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    pings: PingReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and went away: nothing to report


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "opskit-pings/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _reply(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Ping-Body-Limit", str(BODY_LIMIT))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        r = self.server.pings
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with r._lock:
            r.requests.append(f"{self.command} {self.path}")
        if r._hang:
            r._release.wait(60)
            return
        if r._trickle is not None:
            self._trickle_answer(r, r._trickle)
            return
        parts = urlsplit(self.path)
        segs = [s for s in parts.path.split("/") if s]
        if len(segs) == 3 and segs[:2] == ["api", "push"]:
            q = parse_qs(parts.query)
            status = (q.get("status") or ["up"])[0]
            if segs[2] not in r.checks or status not in ("up", "down"):
                self._reply(404, '{"ok": false, "msg": "Monitor not found or not active."}')
                return
            self._keep(Ping(segs[2], status, None, self.command, (q.get("msg") or [""])[0].encode(), False))
            self._reply(200, '{"ok": true}')
            return
        if not segs or len(segs) > 2 or not _UUID.match(segs[0]):
            self._reply(400, "invalid url format")
            return
        kind, code = "success", None
        if len(segs) == 2:
            tail = segs[1]
            if tail in ("start", "fail", "log"):
                kind = tail
            elif tail.isdigit() and 0 <= int(tail) <= 255:
                kind, code = "exit", int(tail)
            else:
                self._reply(400, "invalid url format")
                return
        if segs[0] not in r.checks:
            self._reply(404, "not found")
            return
        self._keep(Ping(segs[0], kind, code, self.command, body[:BODY_LIMIT], len(body) > BODY_LIMIT))
        self._reply(200, "OK")

    def _trickle_answer(self, r: PingReceiver, interval: float) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "50")
        self.end_headers()
        for _ in range(50):
            self.wfile.write(b"x")
            self.wfile.flush()
            if r._release.wait(interval):
                return
        r.trickled = True

    def _keep(self, p: Ping) -> None:
        with self.server.pings._lock:
            self.server.pings.pings.append(p)

    do_GET = do_POST = do_HEAD = _handle  # noqa: N815 - stdlib names
