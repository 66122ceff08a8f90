"""Durable notifications against a real HTTP receiver and real CLI runs (issue 2 item 6)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit import notify
from opskit.base import config
from opskit.base.config import Settings
from opskit.base.errors import ConfigError, UsageError
from opskit.standins.receiver import Receiver
from opskit.storage import outbox
from opskit.storage.journal import Journal
from tests.support.notify import (
    RecordingClock,
    channel_toml,
    config_toml,
    dump_state,
    outbox_rows,
    receiver_fixture,  # noqa: F401 - the `receiver` fixture
)

DISCORD_TOKEN = "tok-ops-Zq8xK2mVn4Lp7RtY"  # the token part of receiver.url("discord")


def load(write_config: Callable[[str], Path], text: str) -> tuple[Settings, Path]:
    p = write_config(text)
    return config.load(p), p


def discord_settings(write_config: Callable[[str], Path], r: Receiver, **extra: object) -> tuple[Settings, Path]:
    extra.setdefault("retry_for", 1)
    return load(write_config, config_toml(["ops"], channel_toml("ops", "discord", r.url("discord"), **extra)))


# --- the done-when ---------------------------------------------------------------------------

def test_down_receiver_queues_then_flush_delivers_exactly_once(opskit, write_config, receiver, state_dir) -> None:
    _, path = discord_settings(write_config, receiver)
    receiver.stop()
    r = opskit("--config", str(path), "notify", "--level", "error", "--title", "deploy failed", "web is down")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Connection refused" in err[0] and "--flush" in err[0]
    rows = outbox_rows(state_dir)
    assert [(x["status"], x["message"]) for x in rows] == [("queued", "web is down")]
    assert rows[0]["attempts"] >= 1  # retries inside retry_for: see the backoff tests (FakeClock)

    receiver.restart()
    r = opskit("--config", str(path), "notify", "--flush")
    assert r.returncode == 0, r.stderr
    assert "1 delivered" in r.stdout
    for _ in range(2):
        r = opskit("--config", str(path), "notify", "--flush", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["delivered"] == 0
    msgs = receiver.messages
    assert len(msgs) == 1 and "web is down" in msgs[0].body["content"]
    row = outbox_rows(state_dir)[0]
    assert row["status"] == "delivered" and row["remote_id"] == msgs[0].remote_id

    events = [json.loads(ln) for ln in opskit("--config", str(path), "events", "--json").stdout.splitlines()]
    assert [e["type"] for e in events] == ["notify.failed", "notify.sent"]
    assert events[0]["data"]["error"] == "Connection refused"
    assert events[1]["data"]["remote_id"] == msgs[0].remote_id


def test_delivered_message_exits_0_and_stores_discord_message_id(opskit, write_config, receiver, state_dir) -> None:
    _, path = discord_settings(write_config, receiver)
    r = opskit("--config", str(path), "notify", "--json", "all good")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["delivered"] == ["ops"] and out["queued"] == [] and r.stderr == ""
    row = outbox_rows(state_dir)[0]
    assert row["status"] == "delivered" and row["remote_id"] == receiver.messages[0].remote_id
    assert row["delivered"] is not None and row["claimed_by"] is None


def test_message_from_stdin(opskit, write_config, receiver) -> None:
    _, path = discord_settings(write_config, receiver)
    r = opskit("--config", str(path), "notify", "-", input="line one\nline two\n")
    assert r.returncode == 0, r.stderr
    assert "line one\nline two" in receiver.messages[0].body["content"]


@pytest.mark.parametrize("args, needle", [
    (["notify", ""], "empty message"),
    (["notify", "   \n"], "empty message"),
    (["notify", "-"], "empty message"),
    (["notify", "--level", "loud", "hi"], "unknown level"),
    (["notify", "--channel", "nope", "hi"], "unknown notify channel 'nope'"),
    (["notify"], "no message"),
    (["notify", "--flush", "hi"], "--flush takes no MESSAGE"),
])
def test_bad_input_exits_2_and_writes_nothing(opskit, write_config, receiver, state_dir, args, needle) -> None:
    _, path = discord_settings(write_config, receiver)
    r = opskit("--config", str(path), *args, input="")
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (state_dir / "journal.db").exists() or outbox_rows(state_dir) == []
    assert receiver.messages == []


def test_no_channel_configured_anywhere_exits_2(opskit, write_config) -> None:
    r = opskit("--config", str(write_config("[opskit]\n")), "notify", "hello")
    assert r.returncode == 2 and "no notify channel configured" in r.stderr


def test_core_send_without_channels_is_journal_only(state_dir) -> None:
    s = Settings(path=None, state_dir=state_dir)
    report = notify.send(s, Journal(state_dir), "nothing configured")
    assert report.ok and report.outbox_ids == [] and report.delivered == []
    with pytest.raises(UsageError):
        notify.send(s, Journal(state_dir), "  ")
    with pytest.raises(ConfigError):
        notify.send(s, Journal(state_dir), "x", channels=["ghost"])


# --- transient failures: backoff, 429, order --------------------------------------------------

def test_429_retry_after_from_discord_json_is_honoured(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver, retry_for=10)
    receiver.fail_next(1, 429, retry_after=2.5)
    clock = RecordingClock()
    report = notify.send(s, Journal(state_dir), "rate limited once", clock=clock)
    assert report.ok and report.delivered == ["ops"]
    assert clock.sleeps == [2.5]  # the server's wait, not our 0.5 s backoff
    assert outbox_rows(state_dir)[0]["attempts"] == 2


def test_retry_after_header_is_honoured_for_slack(write_config, receiver, state_dir) -> None:
    s, _ = load(write_config, config_toml(["s"], channel_toml("s", "slack", receiver.url("slack"), retry_for=10)))
    receiver.fail_next(1, 429, retry_after=3)  # Slack sends only the header
    clock = RecordingClock()
    assert notify.send(s, Journal(state_dir), "hi", clock=clock).ok
    assert clock.sleeps == [3.0]


def test_retry_after_beyond_the_budget_leaves_it_queued_at_once(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver, retry_for=5)
    receiver.fail_next(1, 429, retry_after=60)
    clock = RecordingClock()
    report = notify.send(s, Journal(state_dir), "later", clock=clock)
    assert report.queued == ["ops"] and not report.ok and "429" in report.errors["ops"]
    assert clock.sleeps == []
    row = outbox_rows(state_dir)[0]
    assert row["status"] == "queued" and row["attempts"] == 1
    assert row["next_try"] == "2026-04-26T03:54:00Z"  # FakeClock start + 60 s


def test_5xx_is_retried_with_growing_backoff(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver, retry_for=10)
    receiver.fail_next(3, 503)
    clock = RecordingClock()
    assert notify.send(s, Journal(state_dir), "flaky", clock=clock).ok
    assert clock.sleeps == [0.5, 1.0, 2.0]
    assert outbox_rows(state_dir)[0]["attempts"] == 4


def test_hanging_endpoint_is_bounded_by_timeout(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver, retry_for=0.5, timeout=1)
    receiver.hang()
    report = notify.send(s, Journal(state_dir), "into the void")  # returns: the timeout bounds it
    assert report.queued == ["ops"] and report.errors["ops"] == "timed out after 1.0s"


def test_flush_keeps_channel_order_and_stops_at_first_transient_failure(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    for i in range(3):
        notify.send(s, j, f"m{i}", retry_for=0)
    receiver.restart()
    receiver.fail_next(1, 503)
    report = notify.flush(s, j, retry_for=0)
    assert (report.delivered, report.still_queued) == (0, 3) and not report.ok
    assert receiver.messages == [] and len(receiver.requests) == 1  # m1, m2 never overtook m0
    report = notify.flush(s, j, retry_for=0)
    assert report.ok and report.delivered == 3
    assert [m.body["content"][-2:] for m in receiver.messages] == ["m0", "m1", "m2"]


def test_send_delivers_the_channels_backlog_first(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    notify.send(s, j, "older", retry_for=0)
    receiver.restart()
    report = notify.send(s, j, "newer", retry_for=0)
    assert report.ok
    assert [m.body["content"][-5:] for m in receiver.messages] == ["older", "newer"]


def test_flush_journals_a_repeated_failure_once(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    notify.send(s, j, "x", retry_for=0)
    for _ in range(3):
        notify.flush(s, j, retry_for=0)
    assert [e.type for e in j.query(type_prefix="notify")] == ["notify.failed"]


def test_every_new_message_gets_its_own_failed_event(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    first = notify.send(s, j, "one", retry_for=0)
    second = notify.send(s, j, "two", retry_for=0)
    assert second.queued == ["ops"] and "Connection refused" in second.errors["ops"]
    events = j.query(type_prefix="notify")
    assert [e.data["outbox_id"] for e in events] == first.outbox_ids + second.outbox_ids
    assert events[1].data["error"] == "waiting behind an older message: Connection refused"


def test_soak_random_faults_deliver_everything_once_in_order(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver, retry_for=2, timeout=0.2)
    j = Journal(state_dir)
    receiver.hang_seconds = 0.3
    receiver.set_failure_rate(0.3, seed=11)
    clock = RecordingClock()  # backoff waits cost no real time; hangs cost their 0.2 s timeout
    for i in range(40):
        notify.send(s, j, f"soak {i:02d}", clock=clock)
    for _ in range(20):
        if notify.flush(s, j, clock=clock).ok:
            break
    texts = [m.body["content"].split(" ", 1)[1] for m in receiver.messages]
    assert texts == [f"soak {i:02d}" for i in range(40)]
    statuses = {code for _, code in receiver.requests}
    assert {429, 500} <= statuses  # the faults really happened
    assert {r["status"] for r in outbox_rows(state_dir)} == {"delivered"}


# --- concurrency -----------------------------------------------------------------------------

def test_two_concurrent_flushes_deliver_each_message_exactly_once(write_config, receiver, state_dir) -> None:
    s, path = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    for i in range(12):
        notify.send(s, j, f"msg {i:02d}", retry_for=0)
    receiver.restart()
    receiver.slow(0.05)  # so the two flushes really overlap
    cmd = [sys.executable, "-m", "opskit", "--config", str(path), "notify", "--flush", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    reports = [json.loads(o) for o, _ in outs]
    assert sum(r["delivered"] for r in reports) == 12
    texts = [m.body["content"].split(" ", 1)[1] for m in receiver.messages]
    assert texts == [f"msg {i:02d}" for i in range(12)]  # once each, in order
    assert {r["status"] for r in outbox_rows(state_dir)} == {"delivered"}


def test_claim_of_a_dead_process_is_taken_over(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    notify.send(s, j, "orphan", retry_for=0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    with j.tx() as c:  # as if a sender was killed between claim and answer
        c.execute("UPDATE outbox SET status = 'sending', claimed_by = ?, claimed_at = ?",
                  (int(dead.stdout), j.now()))
    receiver.restart()
    report = notify.flush(s, j)
    assert report.ok and report.delivered == 1 and len(receiver.messages) == 1


def test_live_fresh_claim_is_left_alone(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    receiver.stop()
    notify.send(s, j, "held", retry_for=0)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with j.tx() as c:
            c.execute("UPDATE outbox SET status = 'sending', claimed_by = ?, claimed_at = ?", (holder.pid, j.now()))
        receiver.restart()
        report = notify.flush(s, j)
        assert report.busy == 1 and report.delivered == 0 and receiver.messages == []
    finally:
        holder.kill()
        holder.wait()
    assert not outbox.pid_alive(holder.pid)
    assert notify.flush(s, j).delivered == 1


class TakeoverClock(RecordingClock):
    """Real time, except that the first retry wait plays out "more than CLAIM_STALE went by":
    any claim held on channel b is aged past CLAIM_STALE and cron's `notify --flush` runs meanwhile."""

    def __init__(self, journal: Journal, during_wait: Callable[[], subprocess.CompletedProcess[str]]) -> None:
        super().__init__()
        self.set(dt.datetime.now(dt.timezone.utc))  # the flush subprocess judges staleness by the real clock
        self.journal, self.during_wait = journal, during_wait
        self.flushes: list[subprocess.CompletedProcess[str]] = []
        self.b_claimed: list[int] = []  # b's rows held by us while the wait began

    def sleep(self, seconds: float) -> None:
        if not self.flushes:
            old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=outbox.CLAIM_STALE + 1))
            with self.journal.tx() as c:
                self.b_claimed = [r[0] for r in c.execute(
                    "SELECT id FROM outbox WHERE channel = 'b' AND status = 'sending'")]
                c.execute("UPDATE outbox SET claimed_at = ? WHERE status = 'sending' AND channel = 'b'",
                          (old.strftime("%Y-%m-%dT%H:%M:%SZ"),))
            self.flushes.append(self.during_wait())
        super().sleep(seconds)


@pytest.mark.parametrize("slow", ["earlier channel", "same channel"])
def test_rows_taken_over_while_send_waits_are_posted_exactly_once(opskit, write_config, receiver, state_dir,
                                                                  slow) -> None:
    # "earlier channel": send() to a then b; a sits behind a 429 for longer than CLAIM_STALE, so
    # b's rows must not be claimed (and so go stale) before send() gets to b. "same channel": b's
    # own 429 wait outlasts its claim; the flush takes the row over and send() must not POST it again.
    s, path = load(write_config, config_toml(["a", "b"],
                                             channel_toml("a", "webhook", receiver.url("webhook", "a"), retry_for=600),
                                             channel_toml("b", "webhook", receiver.url("webhook", "b"), retry_for=600)))
    j = Journal(state_dir)
    clock = TakeoverClock(j, lambda: opskit("--config", str(path), "notify", "--flush", "--json"))
    channels = ["a", "b"] if slow == "earlier channel" else ["b"]
    receiver.fail_next(1, 429, retry_after=30)  # the first POST: a's, or b's
    report = notify.send(s, j, "exactly once", channels=channels, clock=clock)
    [flush] = clock.flushes
    # b is claimed only when send() gets to it, not while a's wait runs.
    assert len(clock.b_claimed) == (0 if slow == "earlier channel" else 1)
    assert flush.returncode == 0, flush.stderr
    assert json.loads(flush.stdout)["delivered"] == 1  # the flush really delivered b's message
    posted = [m.path for m in receiver.messages]
    assert posted.count("/webhook/b") == 1, receiver.requests
    assert sorted(posted) == [f"/webhook/{c}" for c in channels]
    assert report.ok and report.delivered == channels, report
    assert {r["status"] for r in outbox_rows(state_dir)} == {"delivered"}
    assert [e.type for e in j.query(type_prefix="notify")] == ["notify.sent"] * len(channels)


# --- permanent failures ----------------------------------------------------------------------

def test_404_marks_channel_broken_and_uses_fallback(write_config, receiver, state_dir) -> None:
    text = config_toml(["ops"],
                       channel_toml("ops", "discord", receiver.url("discord"), fallback="backup", retry_for=1),
                       channel_toml("backup", "webhook", receiver.url("webhook"), retry_for=1))
    s, _ = load(write_config, text)
    j = Journal(state_dir)
    receiver.fail_next(1, 404)
    report = notify.send(s, j, "deploy failed", level="error", service="web")
    assert report.broken == ["ops"] and report.delivered == ["backup"] and not report.ok
    assert "HTTP 404: Unknown Webhook" in report.errors["ops"]
    assert len(report.outbox_ids) == 2
    [got] = receiver.messages
    assert got.kind == "webhook" and got.body["message"].startswith("deploy failed")
    assert "'ops' is broken" in got.body["message"]
    state = j.kv_get("channel", "ops")
    assert state["broken"] is True and state["status"] == 404 and state["since"]
    rows = outbox_rows(state_dir)
    assert [(r["channel"], r["status"]) for r in rows] == [("ops", "broken"), ("backup", "delivered")]
    failed = j.query(type_prefix="notify.failed")[0]
    assert failed.data["status"] == "broken" and failed.data["fallback"] == "backup"

    # broken rows are not retried by flush; a later success clears the mark
    assert notify.flush(s, j).delivered == 0
    assert notify.send(s, j, "fixed now").ok
    assert j.kv_get("channel", "ops") is None


@pytest.mark.parametrize("status", [400, 403, 410])
def test_every_permanent_status_goes_to_the_fallback(write_config, receiver, state_dir, status: int) -> None:
    text = config_toml(["ops"],
                       channel_toml("ops", "discord", receiver.url("discord"), fallback="backup", retry_for=1),
                       channel_toml("backup", "webhook", receiver.url("webhook"), retry_for=1))
    s, _ = load(write_config, text)
    j = Journal(state_dir)
    receiver.fail_next(1, status)
    report = notify.send(s, j, "deploy failed", level="error", service="web")
    assert (report.broken, report.delivered, report.queued) == (["ops"], ["backup"], [])
    assert report.errors["ops"].startswith(f"HTTP {status}")
    assert len(receiver.requests) == 2  # a permanent failure is not retried
    [got] = receiver.messages
    assert got.kind == "webhook" and got.body["message"].startswith("deploy failed")
    assert j.kv_get("channel", "ops")["status"] == status
    assert [(r["channel"], r["status"]) for r in outbox_rows(state_dir)] == [("ops", "broken"), ("backup", "delivered")]


def test_a_fallback_that_fails_too_leaves_both_visible(opskit, write_config, receiver, state_dir) -> None:
    text = config_toml(["ops"],
                       channel_toml("ops", "discord", receiver.url("discord"), fallback="backup", retry_for=1),
                       channel_toml("backup", "webhook", receiver.url("webhook"), retry_for=1))
    _, path = load(write_config, text)
    receiver.fail_next(2, 410)
    r = opskit("--config", str(path), "notify", "--level", "error", "web is down")
    assert r.returncode == 1, r.stdout + r.stderr
    assert receiver.messages == []
    assert [(x["channel"], x["status"]) for x in outbox_rows(state_dir)] == [("ops", "broken"), ("backup", "broken")]
    assert notify.outbox_summary(Journal(state_dir)) == {"ops": {"broken": 1}, "backup": {"broken": 1}}
    assert "ops is broken (HTTP 410" in r.stderr and "backup is broken (HTTP 410" in r.stderr, r.stderr
    failed = Journal(state_dir).query(type_prefix="notify.failed")
    assert [(e.data["channel"], e.data["status"]) for e in failed] == [("ops", "broken"), ("backup", "broken")]


def test_broken_without_fallback_stays_visible_and_exits_1(opskit, write_config, receiver, state_dir) -> None:
    _, path = discord_settings(write_config, receiver)
    receiver.fail_next(1, 401)
    r = opskit("--config", str(path), "notify", "hi")
    assert r.returncode == 1 and "ops is broken (HTTP 401" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert notify.outbox_summary(Journal(state_dir)) == {"ops": {"broken": 1}}


def test_show_json_gives_the_whole_stored_message(opskit, write_config, receiver, state_dir) -> None:
    _, path = discord_settings(write_config, receiver)
    long_text = "first line\n" + "y" * 3000  # longer than Discord takes: the channel got a cut
    r = opskit("--config", str(path), "notify", "--level", "warning", "--title", "big", long_text)
    assert r.returncode == 0, r.stderr
    [row] = outbox_rows(state_dir)
    r = opskit("--config", str(path), "notify", "--show", str(row["id"]), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    assert (doc["id"], doc["channel"], doc["status"], doc["title"], doc["level"]) == (
        row["id"], "ops", "delivered", "big", "warning")
    assert doc["message"] == long_text and doc["attempts"] == 1
    assert len(receiver.messages[0].body["content"]) <= 2000
    missing = opskit("--config", str(path), "notify", "--show", "999", "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip() == "opskit: no outbox message #999; see `opskit events --type notify`"


# --- channel formats -------------------------------------------------------------------------

def test_discord_cuts_long_content_cleanly_and_keeps_full_text(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    long_text = "\n".join(f"line {i}: " + "x" * 60 for i in range(120))  # ~8,000 chars
    report = notify.send(s, j, long_text, title="Big log", level="critical", event_id=42)
    assert report.ok, report.errors  # the real limits are enforced by the receiver
    body = receiver.messages[0].body
    content = body["content"]
    assert len(content) <= 2000
    assert content.endswith(f"… [truncated, full text in opskit journal event 42 / outbox {report.outbox_ids[0]}]")
    kept = content.split("\n…")[0]
    assert kept.splitlines()[-1].endswith("x" * 60)  # cut at a line end, not mid-line
    assert body["embeds"][0]["color"] == 0x8B0000 and body["embeds"][0]["title"].startswith("🚨")
    assert outbox_rows(state_dir)[0]["message"] == long_text
    assert notify.show(j, report.outbox_ids[0])["message"] == long_text


@pytest.mark.parametrize("text", [
    "x" * 5000,                                              # one line, no space: a hard cut
    "see the log:\n```\n" + "\n".join(f"E{i:04d} " + "y" * 70 for i in range(80)) + "\n```\nend",
], ids=["one-long-line", "open-code-fence"])
def test_discord_cut_keeps_room_for_the_marker(write_config, receiver, state_dir, text: str) -> None:
    # The receiver answers 400 to content over 2,000 characters, as Discord does: a cut that
    # forgets the marker's length would turn every long message into a broken channel.
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    report = notify.send(s, j, text, title="Long", level="error", event_id=7)
    assert report.ok, report.errors
    assert notify.outbox_summary(j) == {"ops": {"delivered": 1}}
    content = receiver.messages[0].body["content"]
    marker = f"… [truncated, full text in opskit journal event 7 / outbox {report.outbox_ids[0]}]"
    assert len(content) <= 2000 and content.endswith("\n" + marker)
    kept = content[: -len(marker) - 1]
    assert kept.count("```") % 2 == 0  # a fence the cut opened is closed before the marker
    if "```" in text:
        assert kept.endswith("\n```") and kept.splitlines()[-2].startswith("E0")
    else:
        assert kept.endswith("x" * 100) and len(content) >= 1900  # a hard cut still uses the room


def test_discord_levels_have_colours_and_emoji(write_config, receiver, state_dir) -> None:
    s, _ = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    for level in ("info", "warning", "error", "critical"):
        assert notify.send(s, j, f"a {level}", level=level).ok
    got = [(m.body["content"].split(" ")[0], m.body["embeds"][0]["color"]) for m in receiver.messages]
    assert got == [("ℹ️", 0x3498DB), ("⚠️", 0xFFB000), ("🔴", 0xE74C3C), ("🚨", 0x8B0000)]


def test_slack_text_with_emoji_escaped_and_cut(write_config, receiver, state_dir) -> None:
    s, _ = load(write_config, config_toml(["s"], channel_toml("s", "slack", receiver.url("slack"))))
    j = Journal(state_dir)
    assert notify.send(s, j, "a <b> & c", title="T", level="warning").ok
    assert notify.send(s, j, "y " * 5000).ok
    first, second = (m.body["text"] for m in receiver.messages)
    assert first == "⚠️ *T*\na &lt;b&gt; &amp; c"
    assert len(second) <= 3000 and "truncated, full text in opskit outbox" in second


def test_webhook_json_shape(write_config, receiver, state_dir) -> None:
    s, _ = load(write_config, config_toml(["w"], channel_toml("w", "webhook", receiver.url("webhook"))))
    report = notify.send(s, Journal(state_dir), "body", title="T", level="error", service="web", event_id=7)
    assert report.ok
    m = receiver.messages[0]
    assert set(m.body) == {"title", "message", "level", "service", "event_id", "ts"}
    assert (m.body["title"], m.body["message"], m.body["level"], m.body["service"], m.body["event_id"]) == \
        ("T", "body", "error", "web", 7)
    assert m.headers["Idempotency-Key"] == f"opskit-outbox-{report.outbox_ids[0]}"


def test_ntfy_headers_priority_and_token(write_config, receiver, state_dir) -> None:
    base = receiver.url("ntfy", "x").rsplit("/", 1)[0]
    s, _ = load(write_config, config_toml(["n"], channel_toml("n", "ntfy", base, topic="alerts", token="tk_secretsecret")))
    j = Journal(state_dir)
    assert notify.send(s, j, "disk full", title="Größe", level="critical", service="db").ok
    m = receiver.messages[0]
    assert m.path == "/ntfy/alerts" and m.body == "disk full"
    assert m.headers["Priority"] == "5" and m.headers["Tags"] == "rotating_light,db"
    assert m.headers["Authorization"] == "Bearer tk_secretsecret"
    assert m.headers["Title"].startswith("=?UTF-8?B?")  # non-ASCII title, RFC 2047
    assert outbox_rows(state_dir)[0]["remote_id"] == m.remote_id


def test_command_channel_gets_stdin_and_env(write_config, tmp_path, state_dir) -> None:
    out = tmp_path / "out.txt"
    cmd = f'cat > {out}; printf "\\n%s|%s|%s" "$OPSKIT_TITLE" "$OPSKIT_LEVEL" "$OPSKIT_SERVICE" >> {out}'
    s, _ = load(write_config, config_toml(["c"], channel_toml("c", "command", command=cmd)))
    report = notify.send(s, Journal(state_dir), "hello\nworld", title="T1", level="warning", service="web")
    assert report.ok, report.errors
    assert out.read_text() == "hello\nworld\nT1|warning|web"


def test_command_channel_failures(write_config, state_dir) -> None:
    s, _ = load(write_config, config_toml(["c"], channel_toml("c", "command", command="echo nope >&2; exit 3",
                                                              retry_for=0.1)))
    report = notify.send(s, Journal(state_dir), "x")
    assert report.queued == ["c"] and report.errors["c"] == "command exited 3: nope"
    s, _ = load(write_config, config_toml(["c"], channel_toml("c", "command", command="no-such-notifier-xyz")))
    report = notify.send(s, Journal(state_dir), "x")
    assert report.broken == ["c"] and "exited 127" in report.errors["c"]


def test_apprise_without_the_extra_is_a_clear_permanent_error(write_config, state_dir) -> None:
    try:
        import apprise  # noqa: F401
        pytest.skip("apprise is installed here")
    except ImportError:
        pass
    s, _ = load(write_config, config_toml(["a"], channel_toml("a", "apprise", "json://127.0.0.1:1/")))
    report = notify.send(s, Journal(state_dir), "x")
    assert report.broken == ["a"] and "opskit[apprise]" in report.errors["a"]


# --- secrets ---------------------------------------------------------------------------------

def test_secrets_never_leak_into_output_events_or_outbox(opskit, write_config, receiver, state_dir) -> None:
    _, path = discord_settings(write_config, receiver, retry_for=0.2, timeout=1)
    outputs = []
    receiver.fail_next(1, 404)
    outputs.append(opskit("--config", str(path), "notify", "--json", "gone"))
    receiver.fail_next(1, 500)
    outputs.append(opskit("--config", str(path), "notify", "--retry-for", "0", "five hundred"))
    receiver.hang_next(1)
    outputs.append(opskit("--config", str(path), "notify", "--retry-for", "0", "hang"))
    receiver.stop()
    outputs.append(opskit("--config", str(path), "notify", "refused"))
    outputs.append(opskit("--config", str(path), "notify", "--flush", "--json"))
    outputs.append(opskit("--config", str(path), "events", "--json"))
    outputs.append(opskit("--config", str(path), "notify", "--show", "1", "--json"))
    assert [o.returncode for o in outputs[:5]] == [1, 1, 1, 1, 1]
    for o in outputs:
        assert DISCORD_TOKEN not in o.stdout + o.stderr
        assert "127.0.0.1:" not in o.stdout + o.stderr  # not even the rest of the URL
    stored = dump_state(state_dir)
    for needle in ("Connection refused", "HTTP 500", "timed out after", "HTTP 404"):
        assert needle in stored
    assert DISCORD_TOKEN not in stored and "/discord/" not in stored
    crash_logs = [p for p in os.listdir(state_dir) if p.startswith("crash-")]
    assert crash_logs == []


def test_a_direct_send_goes_to_the_fallback_of_a_channel_that_refuses(write_config, receiver, state_dir,
                                                                      monkeypatch) -> None:
    # The outbox cannot hold the message (disk full, corrupt journal), so it goes straight out;
    # a channel that refuses it for good must still hand it to its fallback, as the courier does.
    import sqlite3

    from opskit.storage import fallback

    text = config_toml(["ops"],
                       channel_toml("ops", "discord", receiver.url("discord"), fallback="backup", retry_for=1),
                       channel_toml("backup", "webhook", receiver.url("webhook"), retry_for=1))
    s, _ = load(write_config, text)
    j = Journal(state_dir)

    def full(self: Journal):  # type: ignore[no-untyped-def]
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Journal, "tx", full)
    receiver.fail_next(1, 403)
    report = notify.send(s, j, "web reverted to 4d62098a", level="error", service="web")
    assert (report.broken, report.delivered, report.queued) == (["ops"], ["backup"], [])
    [got] = receiver.messages
    assert got.kind == "webhook" and got.body["message"].startswith("web reverted to 4d62098a")
    assert "sent directly: opskit's outbox could not hold it" in got.body["message"]
    assert "sent via fallback: channel 'ops' is broken: HTTP 403" in got.body["message"]
    monkeypatch.undo()
    j2 = Journal(state_dir)  # the journal can be written again: what was kept aside is journaled
    sent = [e.data for e in j2.query(type_prefix="notify.")]
    assert [(d["channel"], d["status"], d.get("fallback")) for d in sent] == [
        ("ops", "queued", "backup"), ("backup", "delivered", None)]
    assert fallback.pending(state_dir) == 0 and notify.outbox_summary(j2) == {}


def test_show_escapes_what_the_message_quotes(opskit, write_config, receiver, state_dir) -> None:
    """`notify --show` prints a stored message through shown(): a row queued raw (by `opskit
    notify` itself, or before announce escaped every message) cannot drive the terminal."""
    _, path = discord_settings(write_config, receiver)
    j = Journal(state_dir)
    oid = outbox.enqueue(j, j.clock, "ops", level="error", title="svc: \x1b]0;pwned\x07 \u202e",
                         message="• abc S \x1b]0;pwned\x07 C1 \x9b31m RLO \u202e end\n\ttail \x1b[2J\n",
                         service="svc\u2066", event_id=None)
    j.close()
    r = opskit("--config", str(path), "notify", "--show", str(oid))
    assert r.returncode == 0, r.stderr
    head, body = r.stdout.split("\n\n", 1)
    assert head.splitlines()[1:] == ["service: svc\\u2066", "title: svc: \\x1b]0;pwned\\x07 \\u202e"]
    assert body == "• abc S \\x1b]0;pwned\\x07 C1 \\x9b31m RLO \\u202e end\n\ttail \\x1b[2J\n"
    assert not any(ord(c) < 0x20 and c not in "\n\t" or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2066"
                   for c in r.stdout)
    # --json gives the data back exactly, with JSON's own escapes on the terminal.
    j = opskit("--config", str(path), "notify", "--show", str(oid), "--json")
    assert json.loads(j.stdout)["message"].startswith("• abc S \x1b]0;pwned\x07 C1 \x9b31m RLO \u202e")
    assert "\\u009b31m RLO \\u202e end" in j.stdout and "\x9b" not in j.stdout
