"""Phone taps in a fleet: one host at a time reads the bot (the Bot API answers a second
getUpdates with 409 Conflict), and a tap on a button another host made is handed to that host
through the fleet database and applied there once. Real PostgreSQL, the Telegram stand-in
(standins/botapi.py), `opskit inbox` as cron runs it, one config and state dir per host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base import config
from opskit.notify import decisions
from opskit.standins.receiver import Receiver
from opskit.storage import fleet
from opskit.storage.journal import Journal
from tests.support.fleet import Host, fleet_rows, make_host
from tests.support.gitsandbox import make_sandbox
from tests.support.phone import ALICE, BOT
from tests.support.postgres import Postgres

WAIT = 60.0


@pytest.fixture
def rcv() -> Iterator[Receiver]:
    r = Receiver.start()
    try:
        yield r
    finally:
        r.stop()


def channel(rcv: Receiver) -> str:
    return (f'notify = ["tg"]\n\n[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\n'
            f'allowed_users = [{ALICE}]\napi_url = "{rcv.url("telegram")}"\ntimeout = 5\n')


def hosts(tmp: Path, url: str, rcv: Receiver) -> tuple[Host, Host]:
    """Host a runs no service; host b runs `web` (hosts = ["b"]). Both read the same bot."""
    sb = make_sandbox(tmp / "sb", name="web", files={"app.txt": "v1\n"})
    a = make_host(tmp, "a", url, channel(rcv))
    b = make_host(tmp, "b", url, channel(rcv) + (
        f'\n[service.web]\nrepo = "{sb.bare}"\nworktree = "{sb.worktree}"\nbranch = "master"\n'
        'direct_push = true\nhosts = ["b"]\n'))
    settings = config.load_file(a.config)
    assert settings.fleet is not None
    fleet.migrate(fleet.Fleet(settings.fleet, a.state_dir))
    return a, b


def env(host: Host) -> dict[str, str]:
    e = {**os.environ, "OPSKIT_CONFIG": str(host.config)}
    e.pop("OPSKIT_STATE_DIR", None)
    return e


def inbox(host: Host, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", "inbox", *args], check=False, env=env(host),
                          capture_output=True, text=True, timeout=WAIT)


def events(host: Host, prefix: str) -> list[Any]:
    return list(host.journal().query(type_prefix=prefix))


def test_two_hosts_reading_at_once_only_one_reads_the_bot(tmp_path: Path, fleet_url: str, rcv: Receiver,
                                                          postgres_server: Postgres) -> None:
    a, b = hosts(tmp_path, fleet_url, rcv)
    bot = rcv.telegram
    reached = bot.hold("getUpdates")  # a's first getUpdates waits there: both runs overlap for sure
    pa = subprocess.Popen([sys.executable, "-m", "opskit", "inbox", "--wait", "3"], env=env(a),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reached.wait(WAIT), "host a never called getUpdates"
        pb = subprocess.Popen([sys.executable, "-m", "opskit", "inbox", "--wait", "3"], env=env(b),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + WAIT
        # b either leaves the bot to a (and ends), or calls getUpdates beside it (the rule broken)
        while pb.poll() is None and bot.calls.count("getUpdates") < 2 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        bot.release()
    out_b, err_b = pb.communicate(timeout=WAIT)
    out_a, err_a = pa.communicate(timeout=WAIT)
    assert pa.returncode == 0, err_a
    assert pb.returncode == 0, err_b
    assert "another host of the fleet reads this bot now" in out_b
    assert "409" not in err_a + err_b + out_a + out_b
    # no 409, and no failure at all, reached either journal or the fleet's
    rows = fleet_rows(postgres_server, fleet_url, "SELECT type, data FROM events")
    assert not [r for r in rows if "409" in r[1] or r[0].endswith(".failed")], rows


def test_a_tap_for_another_hosts_service_is_applied_there_once(tmp_path: Path, fleet_url: str, rcv: Receiver,
                                                               postgres_server: Postgres) -> None:
    from opskit import notify

    a, b = hosts(tmp_path, fleet_url, rcv)
    sb_ = config.load_file(b.config)
    jb = Journal(sb_.state_dir, fleet=sb_.fleet)
    buttons = decisions.offer(sb_, jb, "web", [("freeze", "web")])
    assert notify.send(sb_, jb, "web: something is off", title="web", service="web", actions=buttons).ok
    jb.close()
    (msg,) = [m for m in rcv.telegram.messages if m.buttons()]
    rcv.telegram.tap(msg.message_id, "Freeze", user_id=ALICE, username="alice")

    pa = inbox(a)
    assert pa.returncode == 0, pa.stderr
    assert "handed to b" in pa.stdout
    assert rcv.telegram.pending_updates() == 0  # a confirmed it: b's own read does not see it again
    assert events(a, "decision.") == []

    first = inbox(b, "--json")
    assert first.returncode == 0, first.stderr
    assert [(d["action"], d["target"], d["ok"]) for d in json.loads(first.stdout)["applied"]] == [
        ("freeze", "web", True)]
    taken = fleet_rows(postgres_server, fleet_url, "SELECT host, taken, taken_by FROM handoff ORDER BY id")
    assert [(h, by.split(" pid ")[0]) for h, _, by in taken] == [("b", "b")]

    second = inbox(b, "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["applied"] == []
    assert fleet_rows(postgres_server, fleet_url, "SELECT host, taken, taken_by FROM handoff ORDER BY id") == taken

    applied = events(b, "decision.applied")
    assert [(e.service, e.data["action"], e.data["by"]) for e in applied] == [("web", "freeze", "telegram:4242 @alice")]
    assert b.journal().kv_get("frozen", "web")["reason"] == "frozen by telegram:4242 @alice: tapped on tg"
    assert events(a, "decision.") == []  # never applied (nor refused) on a
    shared = fleet_rows(postgres_server, fleet_url,
                        "SELECT host, type FROM events WHERE type LIKE 'decision.%' OR type = 'service.frozen'")
    assert sorted(shared) == [("b", "decision.applied"), ("b", "decision.received"), ("b", "service.frozen")]
    assert "Frozen" in msg.text or "frozen by" in msg.text  # b marked the tapped message as decided


def test_a_tap_read_while_the_database_is_away_is_handed_over_when_it_is_back(
        tmp_path: Path, fleet_url: str, rcv: Receiver, postgres_server: Postgres) -> None:
    from opskit import notify

    a, b = hosts(tmp_path, fleet_url, rcv)
    sb_ = config.load_file(b.config)
    jb = Journal(sb_.state_dir, fleet=sb_.fleet)
    assert notify.send(sb_, jb, "web: look", title="web", service="web",
                       actions=decisions.offer(sb_, jb, "web", [("freeze", "web")])).ok
    jb.close()
    (msg,) = [m for m in rcv.telegram.messages if m.buttons()]
    rcv.telegram.tap(msg.message_id, "Freeze", user_id=ALICE, username="alice")
    postgres_server.stop()
    try:
        away = inbox(a)
    finally:
        postgres_server.start()
    assert away.returncode == 0, away.stderr
    assert "it is handed over when it is back" in away.stdout
    assert events(a, "decision.") == []  # neither applied nor refused where it was read
    env_a = env(a)
    assert subprocess.run([sys.executable, "-m", "opskit", "journal", "sync"], check=False, env=env_a,
                          capture_output=True, timeout=WAIT).returncode == 0
    back = inbox(a)
    assert back.returncode == 0, back.stderr
    assert "read while the fleet database was away, handed to b" in back.stdout
    assert inbox(b).returncode == 0
    assert [e.data["action"] for e in events(b, "decision.applied")] == ["freeze"]
    assert events(a, "decision.") == []
    assert a.journal().kv_all("fleet-handoff") == {}
