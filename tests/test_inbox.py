"""One tap on a phone decides a parked change: real pushes through installed hooks, the Telegram
and ntfy stand-ins, and `opskit inbox` as cron runs it."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.clock import FakeClock
from opskit.base.errors import UsageError
from opskit.chain import approvals, inbox
from opskit.git.repo import Git
from opskit.notify import decisions
from opskit.notify.base import Action
from opskit.storage import approvals as approvals_store
from opskit.storage import decisions as decisions_store
from opskit.storage.journal import Journal
from tests.support.chain import order
from tests.support.crontab import cron_account_fixture, cron_user_fixture  # noqa: F401 - fixtures
from tests.support.notify import dump_state
from tests.support.phone import ALICE, BOT, PHONE, READER, Phone, make_phone, phone_fixture  # noqa: F401


def _decisions(ph: Phone, kind: str) -> list[dict[str, object]]:
    return [e.data for e in ph.cs.st.journal().query(type_prefix=f"decision.{kind}")]


def test_approve_by_telegram_merges_deploys_and_edits_the_message(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park(app="v2\n")
    msg = phone.tg_last()
    assert [b["text"] for b in msg.buttons()] == [f"Approve #{row.id} {row.sha[:7]}", f"Reject #{row.id} {row.sha[:7]}"]
    for needed in ("svc", "feature/h", "Pushed by", "feature/h: the change to decide", "Diffstat:", "app",
                   "Review (review.needs-human)", "Test (test.pass)", f"opskit approve {row.id}"):
        assert needed in msg.text, (needed, msg.text)
    discord = cs.st.receiver.messages[0].body["content"] if cs.st.receiver else ""
    assert "Pushed by" in discord and "opskit approve" in discord  # same text, no buttons
    token = msg.buttons()[0]["callback_data"]

    phone.tg_tap("Approve")
    p = phone.inbox()
    assert p.returncode == 0, p.stdout + p.stderr
    tip = cs.tip()
    assert Git(cs.sb.bare).parents(tip) == [before, row.sha] and cs.st.worktree_head() == tip
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.status == "approved" and done.decided_by == "telegram:4242 @alice"
    types = [e.type for e in cs.events(chain=row.chain)]
    assert order(types, "review.needs-human", "review.pass", "merge.complete", "deploy.complete", "health.pass")
    (human,) = [e for e in cs.events("review.pass", chain=row.chain) if e.data.get("human")]
    assert human.data["decided_by"] == "telegram:4242 @alice"
    (got,) = _decisions(phone, "received")
    assert got["channel"] == "tg" and got["action"] == "approve" and got["by"] == "telegram:4242 @alice"
    edited = phone.rcv.telegram.messages[msg.message_id - 1]
    assert "approved by telegram:4242 @alice: deployed" in edited.text and not edited.buttons()
    assert phone.rcv.telegram.answers and "deployed" in phone.rcv.telegram.answers[0]["text"]

    # the same callback again (a replay): refused, journaled, nothing changes
    phone.tg_tap("Approve", message=edited, data=token)
    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    assert cs.tip() == tip and len(cs.events("merge.complete")) == 1
    (refused,) = _decisions(phone, "refused")
    assert "already decided" in str(refused["reason"]) and refused["by"] == "telegram:4242 @alice"
    assert BOT not in dump_state(Path(os.environ["OPSKIT_STATE_DIR"])) and BOT not in p.stdout + p.stderr


def test_approve_by_ntfy_tap_and_follow_up(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    sent = phone.ntfy_last()
    assert [a["label"] for a in sent.actions] == [f"Approve #{row.id} {row.sha[:7]}", f"Reject #{row.id} {row.sha[:7]}"]
    assert all(a["headers"] == {"Authorization": f"Bearer {PHONE}"} for a in sent.actions)
    phone.ntfy_tap("Approve")
    p = phone.inbox()
    assert p.returncode == 0, p.stdout + p.stderr
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.decided_by == "ntfy:nt"
    follow = phone.ntfy_follow_ups()
    assert any("approved by ntfy:nt: deployed" in m.message for m in follow), [m.message for m in follow]
    # the phone taps again: a new message with the same token → refused
    phone.ntfy_tap("Approve", message=sent)
    assert phone.inbox().returncode == 0
    assert len(cs.events("merge.complete")) == 1
    assert any("already decided" in str(d["reason"]) for d in _decisions(phone, "refused"))
    # each answer is a new message on the alert topic: what was decided, on what, and how it went
    assert [(m.topic, m.title, m.priority, m.tags, m.message) for m in phone.ntfy_follow_ups()] == [
        ("svc-alerts", f"approve change #{row.id}: applied", 3, ["information_source", "svc"],
         "approved by ntfy:nt: deployed"),
        ("svc-alerts", f"approve change #{row.id}: refused", 4, ["warning", "svc"],
         "refused: already decided by ntfy:nt; nothing changed")]


def test_reject_by_telegram_ends_the_chain(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    msg = phone.tg_last()
    approve_token = msg.buttons()[0]["callback_data"]
    phone.tg_tap("Reject")
    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.status == "rejected" and done.decided_by == "telegram:4242 @alice"
    ev = cs.last("review.fail")
    assert ev.data["human"] is True and ev.chain == row.chain
    assert cs.tip() == before and not cs.events("merge")
    assert "rejected by telegram:4242 @alice" in msg.text and not msg.buttons()
    # the Approve button of the same change is spent with it
    phone.tg_tap("Approve", message=msg, data=approve_token)
    assert phone.inbox().returncode == 0 and cs.tip() == before
    assert approvals.get(cs.st.journal(), row.id).status == "rejected"  # type: ignore[union-attr]
    assert "already decided" in str(_decisions(phone, "refused")[-1]["reason"])


def test_forged_expired_and_unknown_user_change_nothing(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    msg = phone.tg_last()
    good = msg.buttons()[0]["callback_data"]
    ver, oid, exp, mac = good.split(".")
    forged = [f"{ver}.{oid}.{exp}.{'A' * len(mac)}",  # a guessed signature
              f"{ver}.{oid}.{int(exp, 36) + 99999:x}.{mac}",  # a later expiry with the old signature
              f"{ver}.{int(oid) + 1}.{exp}.{mac}",  # the Reject offer with Approve's signature
              "approve 1"]
    for data in forged:
        phone.tg_tap("Approve", data=data)
    phone.tg_tap("Approve", user=999, username="mallory")  # the real button, the wrong person
    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    refused = _decisions(phone, "refused")
    reasons = [str(r["reason"]) for r in refused]
    assert len(refused) == 5, reasons
    assert sum("signature does not match" in r for r in reasons) == 3 and "not an opskit decision token" in reasons[3]
    assert "telegram user 999 is not in allowed_users" in reasons[4] and refused[4]["by"] == "telegram:999 @mallory"
    alerts = [a for a in phone.rcv.telegram.answers if a.get("show_alert")]
    assert len(alerts) == 5 and "allowed_users" in alerts[-1]["text"]
    assert cs.tip() == before and not _decisions(phone, "received")
    assert approvals.get(cs.st.journal(), row.id).status == "parked"  # type: ignore[union-attr]
    assert msg.buttons()  # nobody decided: the buttons stay

    # expired: the same genuine tap, read after approval_timeout (a clock two days on)
    phone.tg_tap("Approve")
    settings = cs.st.settings
    later = FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    lines: list[str] = []
    report = inbox.run(settings, Journal(settings.state_dir, later), clock=later, write=lines.append)
    assert report.ok and [r["status"] for r in report.refused] == ["refused"]
    assert "expired token" in _decisions(phone, "refused")[-1]["reason"]  # type: ignore[operator]
    assert cs.tip() == before and approvals.get(cs.st.journal(), row.id).status == "parked"  # type: ignore[union-attr]
    # and the genuine one, in time, still works
    phone.tg_tap("Approve")
    assert phone.inbox().returncode == 0 and Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]


def test_tap_on_a_superseded_change_is_refused(phone: Phone) -> None:
    cs = phone.cs
    old = phone.park(app="first\n")
    first = phone.tg_last()
    new = phone.park(app="second\n")  # a newer push of the same branch parks again
    assert approvals.get(cs.st.journal(), old.id).status == "superseded"  # type: ignore[union-attr]
    before = cs.tip()
    phone.tg_tap("Approve", message=first)
    assert phone.inbox().returncode == 0
    (refused,) = _decisions(phone, "refused")
    assert "no longer waits" in str(refused["reason"]) and "superseded" in str(refused["reason"])
    assert cs.tip() == before and approvals.get(cs.st.journal(), new.id).status == "parked"  # type: ignore[union-attr]


def test_two_inbox_runs_at_once_apply_it_once(phone: Phone) -> None:
    cs = phone.cs
    row = phone.park()
    phone.tg_tap("Approve")
    phone.ntfy_tap("Approve")  # the same change approved on both phones at once
    runs = [phone.inbox_async("--wait", "2") for _ in range(3)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert all(r.returncode == 0 for r in runs), outs
    assert len(cs.events("merge.complete")) == 1 and len(_decisions(phone, "applied")) == 1
    assert approvals.get(cs.st.journal(), row.id).status == "approved"  # type: ignore[union-attr]
    assert sum("another `opskit inbox` is running" in o for o, _ in outs) >= 1
    # the losing tap was told why
    assert any("already decided" in str(d["reason"]) for d in _decisions(phone, "refused"))


class _SlowApplier:
    """Applies slowly and counts: two threads racing for one offer."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def still_waits(self, found: decisions.Offer) -> str | None:
        return None

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        with self.lock:
            self.calls += 1
        time.sleep(0.2)
        return f"done by {by}", True

    def waits_again(self, found: decisions.Offer) -> bool:
        return False


def test_racing_taps_claim_an_offer_once_without_the_lock(tmp_path: Path, write_config) -> None:
    cfg = write_config(f'[opskit]\nstate_dir = "{tmp_path / "state"}"\nnotify = ["tg"]\n[notify.tg]\n'
                       f'type = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\nallowed_users = [{ALICE}]\n')
    settings = config.load(cfg)
    j = Journal(settings.state_dir)
    (tok,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("unfreeze", "svc")])) or ()
    applier = _SlowApplier()
    verdicts: list[decisions.Verdict] = []

    def tap(msg_id: str) -> None:
        verdicts.append(decisions.receive(settings, Journal(settings.state_dir), applier, channel="tg",
                                          msg_id=msg_id, token=tok.token, by=f"telegram:{msg_id}"))

    threads = [threading.Thread(target=tap, args=(str(i % 4),)) for i in range(8)]  # 4 taps, each read twice
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert applier.calls == 1
    assert sorted(v.status for v in verdicts).count("applied") == 1
    assert sorted(v.status for v in verdicts).count("refused") == 3  # the three other taps
    key = settings.state_dir / decisions.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32


def test_killed_after_applying_before_storing_the_offset(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    msg = phone.tg_last()
    phone.tg_tap("Approve")
    reached = phone.rcv.telegram.hold("answerCallbackQuery")  # the run stops right after the apply
    run = phone.inbox_async()
    assert reached.wait(60), run.communicate(timeout=5)
    os.kill(run.pid, signal.SIGKILL)
    run.wait(10)
    phone.rcv.telegram.release()
    j = cs.st.journal()
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]  # applied …
    assert j.kv_get("inbox", "tg") is None and phone.rcv.telegram.pending_updates() == 1  # … offset not stored
    assert msg.buttons()  # and nobody told the tapper yet

    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    assert len(cs.events("merge.complete")) == 1 and len(_decisions(phone, "applied")) == 1
    assert not _decisions(phone, "refused")  # our own re-read is not a replay
    assert "approved by telegram:4242 @alice: deployed" in msg.text and not msg.buttons()  # told now
    assert phone.inbox().returncode == 0 and phone.rcv.telegram.pending_updates() == 0


def test_killed_between_claim_and_apply_is_resumed(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    token = phone.tg_last().buttons()[0]["callback_data"]
    settings = cs.st.settings
    j = Journal(settings.state_dir)

    class Dies(_SlowApplier):
        def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
            raise KeyboardInterrupt  # the run dies here, after its claim

    try:
        decisions.receive(settings, j, Dies(), channel="tg", msg_id="1", token=token, by="telegram:4242 @alice")
    except KeyboardInterrupt:
        pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    with j.tx() as c:  # the claim belongs to a process that is gone
        c.execute("UPDATE decision_offers SET claimed_by = ? WHERE status = 'applying'", (dead.pid,))
    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]
    done = approvals.get(cs.st.journal(), row.id)
    assert done is not None and done.decided_by == "telegram:4242 @alice"
    assert phone.inbox().returncode == 0 and len(cs.events("merge.complete")) == 1


def test_bot_api_and_reply_topic_down_exit_1_then_the_next_run_applies(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    phone.tg_tap("Approve")
    phone.rcv.stop()
    p = phone.inbox()
    assert p.returncode == 1
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "telegram channel 'tg'" in err[0] and "ntfy channel 'nt'" in err[0], err
    assert "Connection refused" in err[0] and BOT not in p.stderr and READER not in p.stderr
    assert cs.tip() == before and approvals.get(cs.st.journal(), row.id).status == "parked"  # type: ignore[union-attr]
    phone.rcv.restart()
    p = phone.inbox()
    assert p.returncode == 0, p.stderr
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]


def test_freeze_after_an_auto_revert_then_unfreeze(phone: Phone) -> None:
    cs = phone.cs
    cs.feature("feature/bad", {"service.mode": "crash\n", "app.txt": "v3\n"}, message="crash it")
    cs.push("feature/bad")
    assert cs.last("rollback.complete")
    msg = phone.tg_last()
    assert [b["text"] for b in msg.buttons()] == ["Freeze svc"] and "opskit incident last --service svc" in msg.text
    phone.tg_tap("Freeze")
    assert phone.inbox().returncode == 0
    j = cs.st.journal()
    frozen = j.kv_get("frozen", "svc")
    assert frozen and frozen["reason"] == "frozen by telegram:4242 @alice: tapped on tg"
    assert [b["text"] for b in msg.buttons()] == ["Unfreeze svc"]  # the edited message offers the way back
    p = cs.cli("deploy", "svc", "--sha", cs.tip())
    assert p.returncode != 0 and "frozen" in (p.stdout + p.stderr).lower()
    phone.tg_tap("Unfreeze", message=msg)
    assert phone.inbox().returncode == 0
    assert j.kv_get("frozen", "svc") is None and cs.last("service.unfrozen").data["who"] == "telegram:4242 @alice"
    # the same from a shell, for channels without buttons (the message names the command)
    assert "opskit freeze svc" in msg.text
    p = cs.cli("freeze", "svc", "--reason", "looking into it", env={"SUDO_USER": "bob"})
    assert p.returncode == 0 and "FROZEN" in p.stdout, p.stderr
    assert j.kv_get("frozen", "svc")["reason"] == "frozen by bob: looking into it"
    again = cs.cli("freeze", "svc")
    assert again.returncode == 0 and "frozen already" in again.stdout
    assert cs.cli("freeze", "nosuch").returncode == 2


def test_cron_install_adds_the_inbox_only_with_an_actionable_channel(opskit, cron_user, tmp_path: Path) -> None:
    from tests.test_cron import conf

    plain = conf(tmp_path, cron_user.name, '[notify.d]\ntype = "webhook"\nurl = "http://127.0.0.1:9/x"\n', "plain")
    assert opskit("--config", str(plain), "cron", "install").returncode == 0
    names = [e["name"] for e in json.loads(opskit("--config", str(plain), "cron", "show", "--json").stdout)["entries"]]
    assert "inbox" not in names
    cfg = conf(tmp_path, cron_user.name, f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "5"\n'
                                        f'allowed_users = [{ALICE}]\n')
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    text = cron_user.read() or ""
    (line,) = [ln for ln in text.splitlines() if " inbox " in ln]
    assert line.startswith("* * * * * ") and line.rstrip().split(">>")[0].rstrip().endswith("inbox --wait 50")
    assert BOT not in text


def test_the_reminder_carries_fresh_buttons(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    first = phone.tg_last()
    settings = cs.st.settings
    later = FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=25))  # past approval_timeout
    assert approvals.remind_overdue(settings, Journal(settings.state_dir, later), later) == 1
    reminder = phone.tg_last()
    assert reminder.message_id != first.message_id and "has waited 25h" in reminder.text
    assert [b["text"] for b in reminder.buttons()] == [f"Approve #{row.id} {row.sha[:7]}", f"Reject #{row.id} {row.sha[:7]}"]
    assert reminder.buttons()[0]["callback_data"] != first.buttons()[0]["callback_data"]
    phone.tg_tap("Approve", message=reminder)
    assert phone.inbox().returncode == 0
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]


def test_an_approval_that_cannot_merge_yet_keeps_its_buttons(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    msg = phone.tg_last()
    j = cs.st.journal()
    j.kv_set("frozen", "svc", {"reason": "held by the on-call", "event_id": None, "since": j.now()})
    phone.tg_tap("Approve")
    assert phone.inbox().returncode == 0
    assert cs.tip() == before and approvals.get(j, row.id).status == "parked"  # type: ignore[union-attr]
    assert [b["text"] for b in msg.buttons()] == [f"Approve #{row.id} {row.sha[:7]}", f"Reject #{row.id} {row.sha[:7]}"] \
        and "frozen" in msg.text
    assert cs.cli("unfreeze", "svc").returncode == 0
    phone.tg_tap("Approve", message=msg)
    assert phone.inbox().returncode == 0
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha] and not msg.buttons()


def test_incident_names_who_approved_a_change_that_was_then_reverted(phone: Phone) -> None:
    cs = phone.cs
    phone.park(**{"service.mode": "crash\n"})
    phone.tg_tap("Approve")
    p = phone.inbox()
    assert p.returncode == 0, p.stderr  # the decision was applied; the deploy it led to was reverted
    assert cs.last("rollback.complete")
    (applied,) = _decisions(phone, "applied")
    assert applied["ok"] is False and "reverted" in str(applied["outcome"])
    inc = json.loads(cs.cli("incident", "last", "--json").stdout)
    assert inc["status"] == "reverted"
    assert inc["human_involvement"] and "telegram:4242 @alice approved change #1" in inc["human_involvement"][0]
    assert [s["kind"] for s in inc["steps"]].index("review.needs-human") < \
        [s["kind"] for s in inc["steps"]].index("review.pass")


def test_tap_after_the_branch_was_deleted_is_refused(phone: Phone) -> None:
    from tests.support.gitsandbox import git

    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    git(cs.sb.dev, "push", "-q", "origin", ":feature/h")
    phone.tg_tap("Approve")
    assert phone.inbox().returncode == 0
    (refused,) = _decisions(phone, "refused")
    assert refused["reason"] == f"change #{row.id} no longer waits: feature/h was deleted"
    assert not _decisions(phone, "received") and cs.tip() == before and not cs.events("merge")
    assert "feature/h was deleted" in phone.rcv.telegram.answers[-1]["text"]


def test_a_tap_read_too_late_to_answer_is_still_applied(phone: Phone) -> None:
    cs = phone.cs
    before = cs.tip()
    row = phone.park()
    msg = phone.tg_last()
    phone.tg_tap("Approve", age=90)  # read the next cron minute: Telegram no longer takes an answer
    p = phone.inbox("--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["ok"] and [(a["action"], a["status"], a["ok"]) for a in report["applied"]] == \
        [("approve", "applied", True)]
    assert Git(cs.sb.bare).parents(cs.tip()) == [before, row.sha]
    assert phone.rcv.telegram.answers == [] and "answerCallbackQuery" in phone.rcv.telegram.calls
    assert "approved by telegram:4242 @alice: deployed" in msg.text  # the edit still tells everyone


def test_the_decision_key_is_its_owners_and_in_a_shared_state_dir_roots_alone(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    key = decisions.secret(own)
    path = own / decisions.KEY_FILE
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)  # a personal dir: refused, with the fix
    with pytest.raises(UsageError, match=r"can be read by group \d+; `chmod 600"):
        decisions.secret(own)
    if os.geteuid() != 0:
        return
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, -1, 65534)  # a group of its own, as install.sh --system makes `opskit`
    shared.chmod(0o2770)
    key = decisions.secret(shared)
    path = shared / decisions.KEY_FILE
    st = path.stat()
    # docs/ARCHITECTURE.md, who may do what: the push account writes the buttons' messages, never the key; root signs them
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    assert decisions.secret(shared) == key
    # A key the group could read (the old 0640 contract), or one a member planted, is replaced.
    path.chmod(0o640)
    assert decisions.secret(shared) != key
    planted = shared / "planted"
    planted.write_bytes(b"k" * 32)
    os.chown(planted, 65534, 65534)
    planted.chmod(0o600)
    path.unlink()
    planted.rename(path)
    assert decisions.secret(shared) != b"k" * 32 and path.stat().st_uid == 0


# --- the journal is the push account's to write too: root applies only what it checked ---------

class _Recorder:
    """Applies nothing: records what it was asked to apply."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str]] = []

    def still_waits(self, found: decisions.Offer) -> str | None:
        return None

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        self.applied.append((found.action, found.target))
        return f"{found.action} {found.target} by {by}", True

    def waits_again(self, found: decisions.Offer) -> bool:
        return False


def _tg(tmp_path: Path, write_config: Callable[[str], Path]) -> config.Settings:
    return config.load(write_config(
        f'[opskit]\nstate_dir = "{tmp_path / "state"}"\nnotify = ["tg"]\n[notify.tg]\n'
        f'type = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\nallowed_users = [{ALICE}]\n'))


def _forge(j: Journal, sql: str, *args: object) -> None:
    """The push account's UPDATE, through a connection of its own."""
    c = sqlite3.connect(j.path)
    try:
        with c:
            c.execute(sql, args)
    finally:
        c.close()


def test_a_row_rewritten_between_the_claim_and_the_apply_applies_nothing(tmp_path: Path, write_config: Callable[[str], Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _tg(tmp_path, write_config)
    j = Journal(settings.state_dir)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    claim = decisions_store.claim_by_tap

    def claim_then_forge(journal: Journal, *args: object, **kwargs: object) -> tuple[bool, bool]:
        got = claim(journal, *args, **kwargs)  # type: ignore[arg-type]
        _forge(journal, "UPDATE decision_offers SET action = 'approve', target = '7' WHERE status = 'applying'")
        return got

    monkeypatch.setattr(decisions_store, "claim_by_tap", claim_then_forge)
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=freeze.token, by="telegram:4242 @alice")
    # refused, not the freeze either: the row it would have to finish is no longer what was signed
    assert rec.applied == [] and v.status == "refused" and not v.ok
    assert "changed in the journal after its token was checked (action, target)" in v.text
    (refused,) = _decisions_of(j, "refused")
    assert refused["action"] == "freeze" and refused["target"] == "svc" and refused["by"] == "telegram:4242 @alice"
    assert not _decisions_of(j, "applied")


def test_a_row_rewritten_between_the_check_and_the_claim_is_not_claimed(tmp_path: Path, write_config: Callable[[str], Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _tg(tmp_path, write_config)
    j = Journal(settings.state_dir)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    check = decisions.check

    def check_then_forge(*args: object, **kwargs: object) -> tuple[decisions.Offer | None, str | None]:
        got = check(*args, **kwargs)  # type: ignore[arg-type]
        _forge(j, "UPDATE decision_offers SET action = 'approve', target = '7'")
        return got

    monkeypatch.setattr(decisions, "check", check_then_forge)
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=freeze.token, by="telegram:4242 @alice")
    assert rec.applied == [] and v.status == "refused"
    offer = decisions_store.get_offer(j, int(freeze.token.split(".")[1]))
    assert offer is not None and offer.status == "open"  # never claimed
    assert not _decisions_of(j, "applied")


def test_a_spent_claim_set_back_to_applying_is_not_resumed(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _tg(tmp_path, write_config)
    j = Journal(settings.state_dir)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=freeze.token, by="telegram:4242 @alice")
    assert v.status == "applied" and rec.applied == [("freeze", "svc")]
    assert v.offer is not None and v.offer.proof is None  # spent with its claim
    dead = subprocess.Popen(["true"])
    dead.wait()
    _forge(j, "UPDATE decision_offers SET status = 'applying', claimed_by = ?", dead.pid)
    (again,) = decisions.resume(settings, j, rec)
    assert again.status == "refused" and "no valid proof" in again.text
    assert rec.applied == [("freeze", "svc")]  # once, by the tap


def test_root_signs_no_offer_opskit_did_not_make(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _tg(tmp_path, write_config)
    j = Journal(settings.state_dir)
    now = dt.datetime.now(dt.timezone.utc)
    created = now.isoformat(timespec="seconds")
    forever, spent, old = decisions_store.insert_offers(
        j, "svc", [("approve", "13", "abc1234" * 5), ("freeze", "svc", None), ("unfreeze", "svc", None)],
        created, 253402300799)  # the year 9999
    _forge(j, "UPDATE decision_offers SET status = 'applied' WHERE id = ?", spent)
    _forge(j, "UPDATE decision_offers SET expires = ?, created = ? WHERE id = ?", int(now.timestamp()) - 60,
           (now - dt.timedelta(hours=1)).isoformat(timespec="seconds"), old)
    queued = [Action("Tap to confirm the rollback of #12", f"{decisions.UNSIGNED}{i}") for i in (forever, spent, old)]
    assert decisions.sign(settings, j, queued) == ()
    reasons = {d["offer"]: str(d["reason"]) for d in _decisions_of(j, "refused")}
    assert "more than svc's approval_timeout" in reasons[forever] and reasons[forever].startswith("button not signed")
    assert "is applied, not open" in reasons[spent] and "expired at" in reasons[old]


def test_a_button_names_what_it_acts_on_whatever_the_message_says(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _tg(tmp_path, write_config)
    j = Journal(settings.state_dir)
    parked = approvals_store.park(j, service="svc", chain="c1", branch="feature/x", sha="abc1234def" * 4, base=None,
                                  cause="review asked for a human")
    queued = decisions.offer(settings, j, "svc", [("approve", str(parked.id)), ("reject", str(parked.id)),
                                                  ("unfreeze", "svc")])
    labels = [a.label for a in decisions.sign(settings, j, [Action("Rollback #12", a.token) for a in queued]) or ()]
    assert labels == [f"Approve #{parked.id} abc1234", f"Reject #{parked.id} abc1234", "Unfreeze svc"]
    (forged,) = decisions_store.insert_offers(j, "svc", [("freeze", "svc; http, Rollback, x", None)],
                                              dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                                              int(time.time()) + 60)
    (button,) = decisions.sign(settings, j, [Action("x", f"{decisions.UNSIGNED}{forged}")]) or ()
    assert "," not in button.label and ";" not in button.label and len(button.label) <= decisions.LABEL_MAX


def _decisions_of(j: Journal, kind: str) -> list[dict[str, object]]:
    return [e.data for e in j.query(type_prefix=f"decision.{kind}")]


def test_an_unfreeze_is_bound_to_its_freeze_even_before_the_freeze_is_journaled() -> None:
    """A freeze's first write already names it (freeze_id): an Unfreeze offered before its
    service.frozen event is journaled, or when the journal could not take it, lifts that freeze
    alone, never a later one."""
    from opskit.notify import decisions as d

    assert d.freeze_subject(None) is None
    assert d.freeze_subject({"reason": "r", "freeze_id": "a1b2"}) == "freeze:a1b2"
    assert d.freeze_subject({"reason": "r", "freeze_id": "a1b2", "frozen_event": 12}) == "12"
    assert d.freeze_subject({"reason": "r", "freeze_id": "a1b2"}) != d.freeze_subject({"reason": "r",
                                                                                      "freeze_id": "c3d4"})
