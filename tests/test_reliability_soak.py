"""Faulty receiver soak (issue 6): 1,000 notifications over two channels to a receiver that
fails 30% of requests at random — 500, 429 with retry_after, hangs past a short per-request
timeout — and goes down (connection refused) between and during flushes. After repeated
flushes (in process, plus one real `opskit notify --flush`), every message arrived exactly
once and in order per channel, and the outbox holds nothing undelivered.

Backoff waits run on a FakeClock (they cost no real time); a hang costs its real timeout,
so hangs are a smaller share of the faults than in the receiver's own even mix.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit import notify
from opskit.base import config
from opskit.standins.receiver import Receiver
from opskit.storage.journal import Journal
from tests.support.notify import RecordingClock, channel_toml, config_toml, outbox_rows
from tests.support.reliability import Timer

MESSAGES = 1000
SENT = 100  # through notify.send; each send first retries its channel's whole backlog, so a
# send costs O(backlog) (≈50 ms at 500 queued here): the rest are written as queued rows.
TIMEOUT = 0.1  # seconds one request may take: a hang costs this much


class FaultyReceiver(Receiver):
    """30% of requests fail: 14% 500, 12% 429 (retry_after 0.05 s), 4% hang."""

    def __init__(self, *a: object, seed: int = 6, **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.rng = random.Random(seed)
        self.faulty = True

    def _fault(self) -> tuple[str, int, float | None] | None:
        with self._lock:
            if not self.faulty:
                return None
            x = self.rng.random()
        if x < 0.04:
            return ("hang", 0, None)
        if x < 0.16:
            return ("status", 429, 0.05)
        if x < 0.30:
            return ("status", 500, None)
        return None


@pytest.fixture
def rcv() -> Iterator[FaultyReceiver]:
    r = FaultyReceiver(hang_seconds=TIMEOUT * 3)
    r._serve()
    try:
        yield r
    finally:
        r.stop()


def _texts(r: Receiver, kind: str) -> list[str]:
    out = []
    for m in r.messages:
        if m.kind == kind:
            body = m.body["content"] if kind == "discord" else m.body["text"]
            out.append(next(w for w in body.split() if w.startswith("soak-")))
    return out


def test_thousand_notifications_to_a_faulty_receiver_arrive_once_in_order(
        rcv: FaultyReceiver, write_config, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_config(config_toml(
        ["ops", "dev"],
        channel_toml("ops", "discord", rcv.url("discord"), retry_for=3, timeout=TIMEOUT),
        channel_toml("dev", "slack", rcv.url("slack", "dev"), retry_for=3, timeout=TIMEOUT)))
    s = config.load(path)
    j = Journal(state_dir)
    clock = RecordingClock()
    expected: dict[str, list[str]] = {"ops": [], "dev": []}
    rcv.stop()  # the incident: the receiver is down while the messages are written; they queue
    with Timer() as t_send:
        for i in range(MESSAGES):
            ch = "ops" if i % 2 == 0 else "dev"
            text = f"soak-{i:04d} from the reliability suite"
            if i < SENT:  # the real send path: tries at once, refused, queued
                notify.send(s, j, text, channels=[ch], clock=clock, retry_for=0)
            else:  # the rest as queued rows, as a burst of killed senders leaves them (see module doc)
                with j.tx() as c:
                    c.execute("INSERT INTO outbox (channel, created, level, message, status) "
                              "VALUES (?, ?, 'info', ?, 'queued')", (ch, j.now(), text))
            expected[ch].append(f"soak-{i:04d}")
    rcv.restart()
    assert rcv.requests == [] and len(outbox_rows(state_dir)) == MESSAGES
    with Timer() as t_flush:
        delivered: list[int] = []
        for n in range(60):
            clock.advance(600)  # every queued message is due again
            cut: threading.Timer | None = None
            if n % 3 == 1:
                rcv.stop()  # a flush against a receiver that is down
            elif n % 3 == 2:  # ... and one that goes down in the middle of a flush
                cut = threading.Timer(0.2, rcv.stop)
                cut.start()
            report = notify.flush(s, j, clock=clock)
            if cut is not None:
                cut.cancel()
                cut.join()
            rcv.restart()
            delivered.append(report.delivered)
            if report.ok and report.still_queued == 0:
                break
    assert sum(delivered) == MESSAGES and len(delivered) > 3, delivered  # it took several flushes
    # Leave a few behind for the real CLI flush (cron's `opskit notify --flush`).
    rcv.stop()
    for i in range(MESSAGES, MESSAGES + 4):
        ch = "ops" if i % 2 == 0 else "dev"
        notify.send(s, j, f"soak-{i:04d} from the reliability suite", channels=[ch], clock=clock, retry_for=0)
        expected[ch].append(f"soak-{i:04d}")
    rcv.restart()
    rcv.faulty = False
    cli = subprocess.run([sys.executable, "-m", "opskit", "--config", str(path), "notify", "--flush", "--json"],
                         check=False, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    print(f"\nsoak: {MESSAGES} queued in {t_send.took:.1f}s, flushes delivered {delivered} in {t_flush.took:.1f}s, "
          f"{len(rcv.requests)} requests, statuses {sorted({c for _, c in rcv.requests})}")
    # Exactly once, in order, per channel.
    assert _texts(rcv, "discord") == expected["ops"]
    assert _texts(rcv, "slack") == expected["dev"]
    assert {r["status"] for r in outbox_rows(state_dir)} == {"delivered"}
    assert len(outbox_rows(state_dir)) == MESSAGES + 4
    # The faults really happened (and were survived), refusals included.
    statuses = [c for _, c in rcv.requests]
    assert statuses.count(429) > 50 and statuses.count(500) > 50
    failed = j.query(type_prefix="notify.failed")
    assert any("refused" in str(e.data.get("error", "")).lower() for e in failed)
    assert any("timed out" in str(e.data.get("error", "")).lower() or "timeout" in str(e.data.get("error", "")).lower()
               for e in failed)
