"""The fleet's shared outbox on a real PostgreSQL (tests/support/postgres.py): hosts are
separate configs and state dirs on this machine, flushes are real `opskit notify --flush`
processes, and the channels are the local receiver (opskit.standins.receiver), failing on demand."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.clock import FakeClock
from opskit.standins.receiver import Receiver
from opskit.storage import fleet as fleet_mod
from opskit.storage import fleet_outbox
from opskit.storage.journal import Journal
from tests.conftest import RunOpskit
from tests.support.fleet import Host, fleet_rows, make_host
from tests.support.notify import RecordingClock, channel_toml, outbox_rows
from tests.support.postgres import Postgres


def _fleet_host(tmp_path: Path, name: str, url: str, extra: str = "") -> Host:
    return make_host(tmp_path, name, url, extra)


def _migrate(host: Host) -> None:
    settings = config.load_file(host.config)
    assert settings.fleet is not None
    fleet_mod.migrate(fleet_mod.Fleet(settings.fleet, settings.state_dir))


def _journal(host: Host, clock: FakeClock | None = None) -> Journal:
    settings = config.load_file(host.config)
    return Journal(settings.state_dir, clock or FakeClock(), fleet=settings.fleet)


def _texts(rx: Receiver, channel: str) -> list[str]:
    """What the webhook channel's endpoint accepted, in arrival order."""
    return [m.body["message"] for m in rx.messages if m.path == f"/webhook/{channel}"]


def _discord_texts(rx: Receiver, channel: str) -> list[str]:
    """The same for Discord channels whose texts begin with the channel's name (the path the
    receiver keeps has no token): a content is the level's emoji, a space and the text."""
    texts = [m.body["content"].split(" ", 1)[1] for m in rx.messages if m.kind == "discord"]
    return [t for t in texts if t.startswith(f"{channel} ")]


def _flush(host: Host) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "opskit", "--config", str(host.config), "notify", "--flush",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def failing_receiver() -> Iterator[Receiver]:
    """A receiver whose hangs end after a second (the channels time out sooner)."""
    r = Receiver.start(hang_seconds=1.0)
    try:
        yield r
    finally:
        r.stop()


CHANNELS = [f"c{i}" for i in range(24)]


@pytest.mark.slow
def test_three_hosts_flushing_together_deliver_1000_messages_once_each_in_order(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres, failing_receiver: Receiver) -> None:
    rx = failing_receiver
    # retry_for below the 500's backoff: a 429 (Discord's retry_after 0.05 s) is retried in the
    # flush, a 500 or a hang stops the channel until the next flush, as cron's next run would.
    channels = "".join(channel_toml(c, "discord", rx.url("discord", c), timeout=0.1, retry_for=0.2)
                       for c in CHANNELS)
    hosts = [_fleet_host(tmp_path, n, fleet_url, channels) for n in ("a", "b", "c")]
    _migrate(hosts[0])
    clock = FakeClock()
    j = _journal(hosts[0], clock)
    box = fleet_outbox.box_for(j)
    assert isinstance(box, fleet_outbox.Shared)
    for i in range(1000):
        c = CHANNELS[i % len(CHANNELS)]
        box.enqueue(j, clock, c, level="info", title=None, message=f"{c} m{i:04d}", service=None, event_id=None)
        clock.advance(1)
    box.close()
    j.close()
    rx.set_failure_rate(0.3, seed=23)

    def open_rows() -> int:
        return int(fleet_rows(postgres_server, fleet_url,
                              "SELECT COUNT(*) FROM outbox WHERE status <> 'delivered'")[0][0])

    runs: dict[str, int] = {h.name: 0 for h in hosts}
    errors: list[str] = []

    def host_loop(host: Host) -> None:
        end = time.monotonic() + 50
        while time.monotonic() < end and open_rows():
            p = _flush(host)
            out, err = p.communicate(timeout=60)
            runs[host.name] += 1
            if p.returncode not in (0, 1):
                errors.append(f"{host.name}: exit {p.returncode}: {err[-500:]}")
                return

    threads = [threading.Thread(target=host_loop, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert errors == []
    assert open_rows() == 0
    for n, c in enumerate(CHANNELS):
        expected = [f"{c} m{i:04d}" for i in range(n, 1000, len(CHANNELS))]
        assert _discord_texts(rx, c) == expected  # each once, oldest first
    assert len(rx.messages) == 1000
    refused = [status for _, status in rx.requests if status != 200]
    assert refused and all(s in (429, 500) for s in refused)  # the receiver did fail
    # every host delivered a share: the three flushes really ran together
    for h in hosts:
        conn = sqlite3.connect(h.state_dir / "journal.db")
        sent = conn.execute("SELECT COUNT(*) FROM events WHERE type = 'notify.sent'").fetchone()[0]
        conn.close()
        assert sent > 0, (h.name, runs)


def test_a_flusher_killed_mid_delivery_leaves_the_channel_to_the_next_host_at_once(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres) -> None:
    with Receiver.start(hang_seconds=30.0) as rx:
        ch = channel_toml("ops", "webhook", rx.url("webhook", "ops"), timeout=20, retry_for=20)
        a, b = (_fleet_host(tmp_path, n, fleet_url, ch) for n in ("a", "b"))
        _migrate(a)
        clock = FakeClock()
        j = _journal(a, clock)
        box = fleet_outbox.box_for(j)
        for i in range(5):
            box.enqueue(j, clock, "ops", level="info", title=None, message=f"m{i}", service=None, event_id=None)
            clock.advance(1)
        box.close()
        j.close()
        rx.hang_next(1)  # a's first POST gets no answer: a is killed while it waits
        p = _flush(a)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            held = fleet_rows(postgres_server, fleet_url,
                              "SELECT COUNT(*) FROM outbox WHERE status = 'sending' AND claimed_by LIKE 'a:%'")
            locked = fleet_rows(postgres_server, fleet_url,
                                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            if held[0][0] == 5 and locked[0][0] == 1:
                break
            time.sleep(0.05)
        else:
            p.kill()
            pytest.fail("host a never claimed the channel")
        time.sleep(0.5)  # its POST is on the wire
        os.kill(p.pid, signal.SIGKILL)
        p.communicate(timeout=10)
        q = _flush(b)
        out, err = q.communicate(timeout=60)
        assert q.returncode == 0, err
        report = json.loads(out)
        # b did not find the channel held (no stale claim to wait out) and delivered all five
        assert (report["delivered"], report["busy"], report["still_queued"]) == (5, 0, 0)
        assert _texts(rx, "ops") == [f"m{i}" for i in range(5)]  # the hung one never arrived: once each
        rows = fleet_rows(postgres_server, fleet_url, "SELECT status, COUNT(*) FROM outbox GROUP BY status")
        assert rows == [("delivered", 5)]


def test_a_message_sent_while_another_host_holds_its_channel_goes_out_next_in_order(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres, opskit: RunOpskit) -> None:
    with Receiver.start(hang_seconds=30.0) as rx:
        ch = channel_toml("ops", "webhook", rx.url("webhook", "ops"), timeout=4, retry_for=20)
        a, b = (_fleet_host(tmp_path, n, fleet_url, ch) for n in ("a", "b"))
        _migrate(a)
        clock = FakeClock()
        j = _journal(a, clock)
        box = fleet_outbox.box_for(j)
        for i in range(2):
            box.enqueue(j, clock, "ops", level="info", title=None, message=f"m{i}", service=None, event_id=None)
            clock.advance(1)
        box.close()
        j.close()
        rx.hang_next(1)  # a holds the channel through a 4 s timeout and a retry
        p = _flush(a)
        end = time.monotonic() + 20
        while time.monotonic() < end and fleet_rows(
                postgres_server, fleet_url, "SELECT COUNT(*) FROM outbox WHERE claimed_by LIKE 'a:%'")[0][0] < 2:
            time.sleep(0.05)
        r = opskit("--config", str(b.config), "notify", "--channel", "ops", "fresh")
        assert r.returncode == 1  # not delivered by b: it is a's to send, after a's two
        assert "another opskit process is delivering this channel: it sends this message next" in r.stderr
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert json.loads(out)["delivered"] == 3
        assert _texts(rx, "ops") == ["m0", "m1", "fresh"]  # each once, oldest first


def test_without_the_database_notify_delivers_from_the_host_and_forwards_once_when_back(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres, opskit: RunOpskit) -> None:
    with Receiver.start() as rx:
        ch = channel_toml("ops", "webhook", rx.url("webhook", "ops"), timeout=2, retry_for=0.1)
        a = _fleet_host(tmp_path, "a", fleet_url, 'notify = ["ops"]\n' + ch)
        b = _fleet_host(tmp_path, "b", fleet_url, 'notify = ["ops"]\n' + ch)
        _migrate(a)
        cfg_a = ["--config", str(a.config)]
        try:
            postgres_server.stop()
            r = opskit(*cfg_a, "notify", "down, delivered")
            assert r.returncode == 0, r.stderr
            assert _texts(rx, "ops") == ["down, delivered"]  # the host's own outbox, as on one host
            rx.stop()
            for i in range(3):
                r = opskit(*cfg_a, "notify", f"down, queued {i}")
                assert r.returncode == 1 and "queued" in r.stderr
        finally:
            postgres_server.start()
            rx.restart()
        local = outbox_rows(a.state_dir)
        assert [(x["message"], x["status"]) for x in local] == [
            ("down, delivered", "delivered"), ("down, queued 0", "queued"), ("down, queued 1", "queued"),
            ("down, queued 2", "queued")]
        r = opskit(*cfg_a, "journal", "sync")
        assert r.returncode == 0, r.stderr
        shared = "SELECT host, local_id, created, message, status FROM outbox ORDER BY id"
        want = [("a", x["id"], x["created"], x["message"], "queued") for x in local[1:]]
        assert fleet_rows(postgres_server, fleet_url, shared) == want  # in order, their own times
        assert [x["status"] for x in outbox_rows(a.state_dir)] == ["delivered", "forwarded", "forwarded",
                                                                   "forwarded"]
        # killed after the database committed and before the local mark: forwarded again, inserted once
        conn = sqlite3.connect(a.state_dir / "journal.db")
        with conn:
            conn.execute("UPDATE outbox SET status = 'forwarding' WHERE status = 'forwarded'")
        conn.close()
        assert opskit(*cfg_a, "journal", "sync").returncode == 0
        assert fleet_rows(postgres_server, fleet_url, shared) == want
        assert [x["status"] for x in outbox_rows(a.state_dir)][1:] == ["forwarded"] * 3
        # another host's flush delivers them, each once, in order; a's own flush finds nothing left
        r = opskit("--config", str(b.config), "notify", "--flush", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["delivered"] == 3
        r = opskit(*cfg_a, "notify", "--flush", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["delivered"] == 0, r.stderr
        assert _texts(rx, "ops") == ["down, delivered", "down, queued 0", "down, queued 1", "down, queued 2"]


def test_429_and_a_permanent_failure_keep_their_rules_on_the_shared_outbox(
        tmp_path: Path, fleet_url: str, postgres_server: Postgres) -> None:
    from opskit import notify

    with Receiver.start() as rx:
        chans = (channel_toml("ops", "discord", rx.url("discord", "ops"), fallback="backup", retry_for=30)
                 + channel_toml("backup", "webhook", rx.url("webhook", "backup")))
        a = _fleet_host(tmp_path, "a", fleet_url, chans)
        _migrate(a)
        settings = config.load_file(a.config)
        clock = RecordingClock()
        j = Journal(settings.state_dir, clock, fleet=settings.fleet)
        rx.fail_next(1, 429, retry_after=2.5)
        report = notify.send(settings, j, "slowed down", channels=["ops"], clock=clock)
        assert (report.delivered, report.queued, report.broken) == (["ops"], [], [])
        assert 2.5 in clock.sleeps  # Retry-After, not our backoff
        rx.fail_next(1, 404)
        report = notify.send(settings, j, "refused", channels=["ops"], clock=clock)
        assert (report.delivered, report.broken) == (["backup"], ["ops"])
        rows = fleet_rows(postgres_server, fleet_url,
                          "SELECT id, host, channel, status, attempts, left(message, 7) FROM outbox ORDER BY id")
        assert [r[1:] for r in rows] == [("a", "ops", "delivered", 2, "slowed "), ("a", "ops", "broken", 1, "refused"),
                                         ("a", "backup", "delivered", 1, "refused")]
        assert report.outbox_ids == [rows[1][0], rows[2][0]]
        assert [m.body["message"] for m in rx.messages if m.kind == "webhook"] == [
            "refused\n\n(sent via fallback: channel 'ops' is broken: " + report.errors["ops"] + ")"]
        failed = [e.data for e in j.query(type_prefix="notify.failed")]
        assert [(d["status"], d.get("fallback"), d["http_status"]) for d in failed] == [("broken", "backup", 404)]
        assert outbox_rows(a.state_dir) == []  # nothing went through the host's own outbox
        j.close()


def test_a_message_with_unsigned_buttons_is_delivered_by_its_own_host_only(
        tmp_path: Path, fleet_url: str) -> None:
    """Its buttons name offers in its host's journal, signed with that host's key: another host
    signing it would put another change's button on the message."""
    a, b = (_fleet_host(tmp_path, n, fleet_url) for n in ("a", "b"))
    _migrate(a)
    clock = FakeClock()
    ja, jb = _journal(a, clock), _journal(b, clock)
    box_a, box_b = fleet_outbox.box_for(ja), fleet_outbox.box_for(jb)
    try:
        plain = box_a.enqueue(ja, clock, "ops", level="info", title=None, message="plain", service=None,
                              event_id=None)
        buttons = box_a.enqueue(ja, clock, "ops", level="warn", title=None, message="approve?", service="web",
                                event_id=None, actions=[("Approve", "offer:1")])
        rows, _ = box_b.claim_channel(jb, clock, "ops")
        assert [r.id for r in rows] == [plain]  # b takes a's plain message, never its unsigned one
        assert box_b.channels_waiting_to_sign(jb) == [] and box_a.channels_waiting_to_sign(ja) == ["ops"]
        box_b.release(jb, [r.id for r in rows])
        rows, _ = box_a.claim_channel(ja, clock, "ops")
        assert [r.id for r in rows] == [plain, buttons]
        box_a.release(ja, [r.id for r in rows])
    finally:
        box_a.close()
        box_b.close()
