"""Smaller faults found on the way: a config file with a UTF-8 BOM, a channel whose
retry_for is shorter than its timeout, and a health body cut before the pattern."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from opskit import notify
from opskit.base import config
from opskit.base.config import HealthSettings
from opskit.deploy.health import probe_once
from opskit.standins.receiver import Receiver
from opskit.storage.journal import Journal


def test_config_with_a_utf8_bom_is_read(write_config: Callable[[str], Path]) -> None:
    p = write_config("")
    p.write_bytes("\ufeff[opskit]\nstate_dir = \"/tmp/x\"\n".encode())
    assert config.load(p).state_dir == Path("/tmp/x")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver.start()
    try:
        yield r
    finally:
        r.stop()


def test_retry_for_shorter_than_timeout_does_not_cut_a_slow_answer(write_config: Callable[[str], Path],
                                                                    receiver: Receiver, state_dir: Path) -> None:
    """The endpoint answers after 1.3 s, inside the 3 s timeout: delivered once, not cut at
    retry_for and sent again by the next flush."""
    p = write_config(f'[opskit]\nnotify = ["ops"]\n\n[notify.ops]\ntype = "discord"\nurl = "{receiver.url("discord")}"\n'
                     "retry_for = 0.3\ntimeout = 3\n")
    s = config.load(p)
    receiver.slow(1.3)
    j = Journal(state_dir)
    report = notify.send(s, j, "slow but fine")
    assert report.ok and report.delivered == ["ops"], report
    receiver.slow(0)
    assert notify.flush(s, j).delivered == 0
    assert len(receiver.messages) == 1


class _Big(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        body = b"x" * (100 * 1024) + b"READY"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass


def test_expect_body_past_the_read_limit_says_it_was_cut() -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        r = probe_once(HealthSettings(url=url, expect_body="READY", timeout=5))
        assert not r.ok and "in its first 64 KiB (the rest was not read)" in r.detail, r.detail
        small = probe_once(HealthSettings(url=url, expect_body="^x", timeout=5))
        assert small.ok
    finally:
        srv.shutdown()
        srv.server_close()
