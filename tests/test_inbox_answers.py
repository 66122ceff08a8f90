"""The inbox's own parts, in the test process and fast: what each answer says and to whom, which
change still waits, what a tap applies, and how a run reads its channels. A real journal and
state dir, a real git repository, and the Telegram and ntfy stand-ins (standins/botapi.py)."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from opskit.base import accounts, config
from opskit.base.clock import FakeClock, iso
from opskit.base.config import Secret
from opskit.base.errors import GitError, UsageError
from opskit.chain import inbox
from opskit.git.repo import Git
from opskit.notify import decisions
from opskit.standins.receiver import Receiver
from opskit.storage import approvals as approvals_store
from opskit.storage import decisions as decisions_store
from opskit.storage import outbox
from opskit.storage.journal import Journal
from tests.support.accounts import throwaway_account
from tests.support.fleet import fleet_rows
from tests.support.gitsandbox import Sandbox, git, make_sandbox, rev
from tests.support.phone import ALICE, BOT, PHONE, READER
from tests.support.postgres import Postgres


@dataclass
class Box:
    settings: config.Settings
    j: Journal
    sb: Sandbox
    rcv: Receiver
    clock: FakeClock
    lines: list[str]

    def applier(self) -> inbox.CliApplier:
        return inbox.CliApplier(self.settings, self.j, self.clock, self.lines.append)

    def offer(self, action: str, target: str = "svc") -> decisions.Offer:
        (a,) = decisions.offer(self.settings, self.j, "svc", [(action, target)], clock=self.clock)
        found = decisions_store.get_offer(self.j, int(a.token[len(decisions.UNSIGNED):]))
        assert found is not None
        return found

    def token(self, action: str, target: str = "svc") -> str:
        (a,) = decisions.sign(self.settings, self.j, decisions.offer(self.settings, self.j, "svc", [(action, target)],
                                                                       clock=self.clock), self.clock) or ()
        return a.token

    def follow_ups(self) -> list[tuple[str, str | None, int | None, list[str], str, list[str]]]:
        return [(m.topic, m.title, m.priority, m.tags, m.message, [a["label"] for a in m.actions])
                for m in self.rcv.ntfy.topics.get("svc-alerts", [])]


def _write(tmp_path: Path, write_config: Callable[[str], Path], rcv: Receiver, sb: Sandbox, *,
           tg: bool = True, nt: bool = True, service: str = "") -> config.Settings:
    base = rcv.url("ntfy", "x").rsplit("/", 1)[0]
    names = ", ".join(f'"{n}"' for n, on in (("tg", tg), ("nt", nt)) if on)
    text = (f'[opskit]\nstate_dir = "{tmp_path / "state"}"\nnotify = [{names}]\n'
            f'[service.svc]\nrepo = "{sb.bare}"\nworktree = "{sb.worktree}"\n{service}')
    if tg:
        text += (f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "-100777"\n'
                 f'api_url = "{rcv.url("telegram")}"\nallowed_users = [{ALICE}]\nretry_for = 1\ntimeout = 5\n')
    if nt:
        text += (f'[notify.nt]\ntype = "ntfy"\nurl = "{base}"\ntopic = "svc-alerts"\ntoken = "{READER}"\n'
                 f'reply_url = "{base}/svc-replies/"\nreply_token = "{PHONE}"\nretry_for = 1\ntimeout = 5\n')
    rcv.ntfy.acl("svc-replies", read={READER}, write={PHONE})
    rcv.ntfy.acl("svc-alerts", read={READER}, write={READER})
    return config.load(write_config(text))


@pytest.fixture(name="box")
def box_fixture(tmp_path: Path, write_config: Callable[[str], Path]) -> Iterator[Box]:
    rcv = Receiver.start(hang_seconds=5.0)
    try:
        sb = make_sandbox(tmp_path / "sb")
        settings = _write(tmp_path, write_config, rcv, sb)
        # two days behind the wall: whatever takes the wall clock instead of the run's is seen (a token
        # valid on the run's clock has expired on the wall's)
        clock = FakeClock(dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(days=2))
        yield Box(settings, Journal(settings.state_dir, clock), sb, rcv, clock, [])
    finally:
        rcv.telegram.release()
        rcv.stop()


def _feature(box: Box, name: str = "feature/x", text: str = "x\n") -> str:
    """A branch pushed to the service's bare repository; its commit."""
    (box.sb.dev / "app.txt").write_text(text)
    git(box.sb.dev, "checkout", "-q", "-B", name)
    git(box.sb.dev, "commit", "-qam", f"{name}: {text.strip()}")
    git(box.sb.dev, "push", "-q", "origin", f"HEAD:refs/heads/{name}")
    return rev(box.sb.dev)


def _park(box: Box, sha: str, branch: str = "feature/x", service: str = "svc") -> approvals_store.Parked:
    return approvals_store.park(box.j, service=service, chain="c1", branch=branch, sha=sha, base=None,
                                cause="review asked for a human", clock=box.clock)


# --- what each answer says ----------------------------------------------------------------------

def test_an_answer_names_a_change_by_its_number_and_anything_else_by_its_target(box: Box) -> None:
    o = box.offer("freeze")
    assert [inbox._target(replace(o, action=a, target=t)) for a, t in
            [("approve", "7"), ("reject", "8"), ("unfreeze", "svc"), ("freeze", "api")]] == \
        ["change #7", "change #8", "svc", "api"]


def test_each_verdict_is_recorded_in_its_list_and_a_seen_one_not_at_all(box: Box) -> None:
    o = box.offer("freeze")
    report = inbox.InboxReport()
    inbox._record(report, decisions.Verdict("seen", "", o), "nt")
    inbox._record(report, decisions.Verdict("applied", "frozen", o, True), "nt")
    inbox._record(report, decisions.Verdict("refused", "not an opskit decision token", None, False), "tg")
    inbox._record(report, decisions.Verdict("refused", "svc is already frozen", replace(o, target="api",
                                                                                         service="api"), False), "resumed")
    assert report.applied == [{"channel": "nt", "status": "applied", "text": "frozen", "ok": True,
                               "action": "freeze", "target": "svc", "service": "svc"}]
    assert report.refused == [
        {"channel": "tg", "status": "refused", "text": "not an opskit decision token", "ok": False},
        {"channel": "resumed", "status": "refused", "text": "svc is already frozen", "ok": False,
         "action": "freeze", "target": "api", "service": "api"}]
    assert report.ok and report.to_dict() == {"ok": True, "applied": report.applied, "refused": report.refused,
                                              "problems": [], "busy": False}
    report.problems.append("down")
    assert not report.ok and report.to_dict()["ok"] is False


def test_a_freeze_applied_from_a_phone_offers_its_unfreeze_and_nothing_else_does(box: Box) -> None:
    o = box.offer("freeze")
    assert box.applier().apply(replace(o, channel="nt"), "ntfy:nt")[1]
    subject = decisions.freeze_subject(box.j.frozen("svc"))
    assert subject is not None
    (undo,) = inbox._undo(box.settings, box.j, decisions.Verdict("applied", "frozen", o, True), box.clock)
    assert undo.label == "Unfreeze" and undo.token.startswith(decisions.UNSIGNED)
    row = decisions_store.get_offer(box.j, int(undo.token[len(decisions.UNSIGNED):]))
    assert row is not None
    assert (row.action, row.target, row.service, row.subject, row.status, row.created) == \
        ("unfreeze", "svc", "svc", subject, "open", iso(box.clock.now()))
    made = decisions_store.get_offer(box.j, row.id + 1)
    assert made is None
    for v in [decisions.Verdict("applied", "frozen", o, False), decisions.Verdict("refused", "no", o, True),
              decisions.Verdict("seen", "frozen", o, True), decisions.Verdict("applied", "x", None, True),
              decisions.Verdict("applied", "unfrozen", replace(o, action="unfreeze"), True)]:
        assert inbox._undo(box.settings, box.j, v, box.clock) == [], v
    assert decisions_store.get_offer(box.j, row.id + 1) is None  # no offer made for any of them


def test_an_ntfy_answer_is_a_new_message_saying_what_how_and_offering_the_way_back(box: Box) -> None:
    o = box.offer("freeze")
    nt = box.settings.channels["nt"]
    box.applier().apply(replace(o, channel="nt"), "ntfy:nt")
    inbox._follow_up(box.settings, box.j, nt, decisions.Verdict("applied", "frozen by ntfy:nt", o, True), box.clock)
    # read again after a run that was killed before it told the tapper: told now, as applied
    inbox._follow_up(box.settings, box.j, nt, decisions.Verdict("seen", "frozen by ntfy:nt", o, True), box.clock)
    # an answer with no offer behind it: several lines, control characters shown, never obeyed
    inbox._follow_up(box.settings, box.j, nt, decisions.Verdict(
        "refused", "refused: not an opskit decision token\n\tread \x1b[2Jthis", None, False), box.clock)
    # a target from the journal (the push account writes it) is shown in the title too
    inbox._follow_up(box.settings, box.j, nt, decisions.Verdict(
        "refused", "svc\x1b[2J is not frozen", replace(o, action="unfreeze", target="svc\x1b[2J"), False), box.clock)
    assert box.follow_ups() == [
        ("svc-alerts", "freeze svc: applied", 3, ["information_source", "svc"], "frozen by ntfy:nt",
         ["Unfreeze svc"]),
        ("svc-alerts", "freeze svc: applied", 3, ["information_source", "svc"], "frozen by ntfy:nt", []),
        ("svc-alerts", "decision: refused", 4, ["warning"],
         "refused: not an opskit decision token\n\tread \\x1b[2Jthis", []),
        ("svc-alerts", "unfreeze svc\\x1b[2J: refused", 4, ["warning", "svc"], "svc\\x1b[2J is not frozen", [])]
    assert [m.kind for m in box.rcv.messages] == ["ntfy"] * 4  # only to the tapped channel, not Telegram
    rows = [outbox.get(box.j, i) for i in range(1, 5)]
    assert [(r.channel, r.created, r.status) for r in rows if r is not None] == \
        [("nt", iso(box.clock.now()), "delivered")] * 4  # queued on the run's clock
    assert box.rcv.telegram.messages == []


def test_an_answer_that_cannot_be_sent_leaves_the_decision_alone(box: Box) -> None:
    o = box.offer("freeze")
    gone = replace(box.settings.channels["nt"], name="gone")  # notify.send refuses a channel not configured
    inbox._follow_up(box.settings, box.j, gone, decisions.Verdict("applied", "frozen", o, True), box.clock)
    assert box.follow_ups() == []


# --- which change still waits ----------------------------------------------------------------

def test_a_change_waits_only_while_it_is_parked_on_the_commit_it_was_offered_for(box: Box) -> None:
    sha = _feature(box)
    row = _park(box, sha)
    a = box.applier()
    for action in ("approve", "reject"):
        o = box.offer(action, str(row.id))
        assert o.subject == sha
        assert a.still_waits(o) is None
        assert a.still_waits(replace(o, subject=None)) is None
        assert a.still_waits(replace(o, subject="0123456789abcdef" * 2)) == \
            f"change #{row.id} no longer waits: it is {sha[:10]} now, not the 0123456789 this button was offered for"
        assert a.still_waits(replace(o, target="99")) == "change #99 no longer exists"
    o = box.offer("approve", str(row.id))
    done = approvals_store.decide(box.j, row.id, "rejected", by="bob", reason="not now", clock=box.clock)
    assert a.still_waits(o) == f"change #{row.id} no longer waits: {done.describe()}"
    assert done.describe().startswith(f"#{row.id} svc feature/x {sha[:10]} (rejected by bob since ")


def test_a_change_whose_branch_moved_or_went_no_longer_waits(box: Box) -> None:
    sha = _feature(box)
    row = _park(box, sha)
    a = box.applier()
    o = box.offer("approve", str(row.id))
    assert a._branch_moved(row) is None
    # a change of a service no longer configured, and of one that pulls: the merge step checks those
    assert a._branch_moved(replace(row, service="gone")) is None
    other = _park(box, sha, service="gone")
    assert a.still_waits(box.offer("approve", str(other.id))) is None
    moved = _feature(box, text="y\n")
    assert a.still_waits(o) == f"change #{row.id} no longer waits: feature/x moved on to {moved[:10]}"
    git(box.sb.dev, "push", "-q", "origin", ":feature/x")
    assert a.still_waits(o) == f"change #{row.id} no longer waits: feature/x was deleted"


def test_a_pulling_service_or_an_unreadable_repository_is_left_to_the_merge_step(
        tmp_path: Path, write_config: Callable[[str], Path], box: Box) -> None:
    sha = _feature(box)
    row = _park(box, sha)
    git(box.sb.dev, "push", "-q", "origin", ":feature/x")  # deleted: only the merge step would know now
    pulled = _write(tmp_path, write_config, box.rcv, box.sb).services["svc"]
    pulled = replace(pulled, repo=f"file://{box.sb.bare}")
    assert pulled.pull_mode
    settings = replace(box.settings, services={"svc": pulled})
    assert inbox.CliApplier(settings, box.j, box.clock)._branch_moved(row) is None
    gone = replace(pulled, repo=f"{box.sb.bare}\0")  # git cannot be started on it: GitError
    assert not gone.pull_mode
    with pytest.raises(GitError):
        Git(gone.repo).branch_tip("feature/x")
    assert inbox.CliApplier(replace(box.settings, services={"svc": gone}), box.j, box.clock)._branch_moved(row) is None
    here = replace(box.settings, services={"svc": replace(pulled, repo=str(box.sb.bare))})
    assert inbox.CliApplier(here, box.j, box.clock)._branch_moved(row) == \
        f"change #{row.id} no longer waits: feature/x was deleted"


def test_a_freeze_or_unfreeze_waits_only_for_the_state_it_was_offered_for(box: Box) -> None:
    a = box.applier()
    unfreeze, freeze = box.offer("unfreeze"), box.offer("freeze")
    assert unfreeze.subject is None
    assert a.still_waits(unfreeze) == "svc is not frozen"
    assert a.still_waits(freeze) is None
    a.apply(replace(freeze, channel="tg"), "telegram:1")
    first = box.offer("unfreeze")
    assert first.subject == decisions.freeze_subject(box.j.frozen("svc"))
    assert a.still_waits(freeze) == "svc is already frozen"
    assert a.still_waits(first) is None and a.still_waits(unfreeze) is None  # unbound: any freeze
    a.apply(first, "telegram:1")
    a.apply(replace(box.offer("freeze"), channel="tg"), "telegram:1")  # frozen again since
    assert a.still_waits(first) == ("svc no longer waits for this Unfreeze: it was offered for the freeze of event "
                                    f"#{first.subject}, which ended; the service was frozen again since")


def test_only_an_approval_whose_change_is_still_parked_waits_again(box: Box) -> None:
    row = _park(box, _feature(box))
    a = box.applier()
    approve, reject = box.offer("approve", str(row.id)), box.offer("reject", str(row.id))
    assert a.waits_again(approve) is True
    assert a.waits_again(reject) is False and a.waits_again(box.offer("freeze")) is False
    assert a.waits_again(replace(approve, target="99")) is False
    approvals_store.decide(box.j, row.id, "rejected", by="bob", reason="no", clock=box.clock)
    assert a.waits_again(approve) is False


# --- what a tap applies ----------------------------------------------------------------------

def test_each_decision_applies_what_its_command_does_and_says_so(box: Box) -> None:
    a = box.applier()
    freeze = replace(box.offer("freeze"), channel="nt")
    assert a.apply(freeze, "ntfy:nt") == ("frozen by ntfy:nt: deploys refused until `opskit unfreeze svc`", True)
    frozen = box.j.frozen("svc")
    assert frozen is not None and (frozen["reason"], frozen["since"]) == ("frozen by ntfy:nt: tapped on nt",
                                                                         iso(box.clock.now()))
    assert box.lines == ["✘ svc is FROZEN: frozen by ntfy:nt: tapped on nt. Deploys are refused until "
                         "`opskit unfreeze svc`"]
    assert a.apply(freeze, "ntfy:nt") == ("svc was frozen already", False)
    unfreeze = replace(box.offer("unfreeze"), channel="tg")
    assert a.apply(unfreeze, "telegram:4242") == ("unfrozen by telegram:4242: deploys allowed again", True)
    assert box.j.frozen("svc") is None and box.j.query(type_prefix="service.unfrozen")[-1].data["who"] == "telegram:4242"
    assert a.apply(unfreeze, "telegram:4242") == ("svc was not frozen", False)

    row = _park(box, _feature(box))
    reject = replace(box.offer("reject", str(row.id)), channel="tg")
    assert a.apply(reject, "telegram:4242 @alice") == ("rejected by telegram:4242 @alice: nothing merged", True)
    done = approvals_store.get(box.j, row.id)
    assert done is not None and (done.status, done.decided_by, done.reason, done.decided_at) == \
        ("rejected", "telegram:4242 @alice", "rejected from tg by telegram:4242 @alice", iso(box.clock.now()))


def test_an_approval_merges_and_says_how_it_went_or_why_not(box: Box) -> None:
    before = rev(box.sb.bare, "refs/heads/master")
    row = _park(box, _feature(box))
    a = box.applier()
    approve = replace(box.offer("approve", str(row.id)), channel="tg")
    box.j.kv_set("frozen", "svc", {"reason": "held", "event_id": None, "since": box.j.now()})
    text, ok = a.apply(approve, "telegram:4242")
    assert not ok and text.startswith("approved by telegram:4242: ") and text.endswith(")") and "frozen" in text, text
    assert rev(box.sb.bare, "refs/heads/master") == before and a.waits_again(approve)
    box.j.kv_delete("frozen", "svc")
    box.lines.clear()
    assert a.apply(approve, "telegram:4242") == ("approved by telegram:4242: deployed", True)
    assert box.lines[0] == f"svc: change #{row.id} (feature/x {row.sha[:12]}) approved by telegram:4242; merging"
    assert Git(box.sb.bare).parents(rev(box.sb.bare, "refs/heads/master")) == [before, row.sha]
    done = approvals_store.get(box.j, row.id)
    assert done is not None and (done.status, done.decided_by, done.decided_at) == \
        ("approved", "telegram:4242", iso(box.clock.now()))


# --- an ntfy reply topic -----------------------------------------------------------------------

def _reply(box: Box, text: str) -> str:
    """The phone's tap: the button's body published on the reply topic with the phone's token."""
    return box.rcv.ntfy.publish("svc-replies", text, auth=f"Bearer {PHONE}").id


def _oid(tok: str) -> int:
    return int(tok.split(".")[1])


FROZE = "frozen by ntfy:nt: deploys refused until `opskit unfreeze svc`"
NOT_A_TOKEN = "refused: not an opskit decision token; nothing changed"
NOT_FROZEN = "refused: svc is not frozen; nothing changed"


def test_ntfy_taps_are_read_once_applied_answered_and_the_topic_kept_where_it_stands(box: Box) -> None:
    nt = box.settings.channels["nt"]
    unfreeze, freeze = box.token("unfreeze"), box.token("freeze")
    _reply(box, "hello")
    _reply(box, unfreeze)  # before the freeze: nothing to lift
    good = _reply(box, freeze)
    report = inbox.InboxReport()
    inbox._ntfy(box.settings, box.j, box.applier(), nt, report, box.clock, box.lines.append)
    assert report.applied == [{"channel": "nt", "status": "applied", "text": FROZE, "ok": True,
                               "action": "freeze", "target": "svc", "service": "svc"}]
    assert report.refused == [
        {"channel": "nt", "status": "refused", "text": NOT_A_TOKEN, "ok": False},
        {"channel": "nt", "status": "refused", "text": NOT_FROZEN, "ok": False,
         "action": "unfreeze", "target": "svc", "service": "svc"}]
    assert box.lines == [f"nt: ntfy:nt: {NOT_A_TOKEN}", f"nt: ntfy:nt: {NOT_FROZEN}",
                         "✘ svc is FROZEN: frozen by ntfy:nt: tapped on nt. Deploys are refused until "
                         "`opskit unfreeze svc`", f"nt: ntfy:nt: {FROZE}"]
    assert box.follow_ups() == [
        ("svc-alerts", "decision: refused", 4, ["warning"], NOT_A_TOKEN, []),
        ("svc-alerts", "unfreeze svc: refused", 4, ["warning", "svc"], NOT_FROZEN, []),
        ("svc-alerts", "freeze svc: applied", 3, ["information_source", "svc"], FROZE, ["Unfreeze svc"])]
    assert box.j.kv_all("inbox") == {"nt": {"since": good}}
    row = decisions_store.get_offer(box.j, _oid(freeze))
    assert row is not None and (row.status, row.channel, row.decided_by, row.tap, row.answered) == \
        ("applied", "nt", "ntfy:nt", good, iso(box.clock.now()))
    refused = decisions_store.get_offer(box.j, _oid(unfreeze))
    assert refused is not None and refused.answered is None  # a refusal is told, not answered
    (received,) = [e.data for e in box.j.query(type_prefix="decision.received")]
    assert (received["channel"], received["by"], received["action"]) == ("nt", "ntfy:nt", "freeze")

    # the next read starts after the last message: nothing again
    again = inbox.InboxReport()
    inbox._ntfy(box.settings, box.j, box.applier(), nt, again, box.clock, box.lines.append)
    assert again == inbox.InboxReport() and len(box.lines) == 4 and len(box.follow_ups()) == 3

    # a run killed after the apply, before it stored where the topic stands and told the tapper:
    # the next reads the taps again; only the one that decided is answered, once, as applied
    with box.j.tx() as c:
        c.execute("UPDATE decision_offers SET answered = NULL WHERE id = ?", (_oid(freeze),))
    box.j.kv_delete("inbox", "nt")
    box.clock.advance(60)
    again = inbox.InboxReport()
    inbox._ntfy(box.settings, box.j, box.applier(), nt, again, box.clock, box.lines.append)
    assert again == inbox.InboxReport()  # seen: in neither list
    assert box.lines[4:] == [f"nt: ntfy:nt: {FROZE}"]
    assert box.follow_ups()[3:] == [("svc-alerts", "freeze svc: applied", 3, ["information_source", "svc"], FROZE, [])]
    row = decisions_store.get_offer(box.j, _oid(freeze))
    assert row is not None and row.answered == iso(box.clock.now())
    assert box.j.kv_all("inbox") == {"nt": {"since": good}}


def test_an_ntfy_topic_that_cannot_be_read_is_down_and_keeps_its_taps(box: Box) -> None:
    nt = box.settings.channels["nt"]
    _reply(box, box.token("freeze"))
    no_token = replace(nt, token=None)  # the reply topic is readable with opskit's token only
    with pytest.raises(inbox._Down, match=r"^ntfy channel 'nt': the reply topic could not be read \(.*403.*\); "
                                          r"the taps wait there \(12 h\) for the next `opskit inbox`$"):
        inbox._ntfy(box.settings, box.j, box.applier(), no_token, inbox.InboxReport(), box.clock, box.lines.append)
    box.rcv.stop()
    with pytest.raises(inbox._Down, match=r"^ntfy channel 'nt': the reply topic could not be read \(.*refused.*\); "):
        inbox._ntfy(box.settings, box.j, box.applier(), nt, inbox.InboxReport(), box.clock, box.lines.append)
    assert box.lines == [] and box.j.frozen("svc") is None and box.j.kv_all("inbox") == {}


class _Topic(BaseHTTPRequestHandler):
    """An ntfy poll answer with the lines a stream can carry besides messages; what was asked."""

    body = b""
    asked: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.asked.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_ntfy_read_skips_every_line_that_is_not_a_message(box: Box) -> None:
    tok = box.token("freeze")
    lines = ["not json", "[1]", json.dumps({"event": "open", "id": "o1"}), json.dumps({"event": "keepalive",
                                                                                          "id": "k1"}),
             json.dumps({"event": "message", "id": 5, "message": tok}), json.dumps({"id": "m1", "message": tok})]
    _Topic.body = ("\n".join(lines) + "\n").encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Topic)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        nt = replace(box.settings.channels["nt"], reply_url=Secret(f"http://127.0.0.1:{server.server_port}/r/"))
        report = inbox.InboxReport()
        inbox._ntfy(box.settings, box.j, box.applier(), nt, report, box.clock, box.lines.append)
        inbox._ntfy(box.settings, box.j, box.applier(), nt, inbox.InboxReport(), box.clock, box.lines.append)
    finally:
        server.shutdown()
        server.server_close()
    assert [(e["status"], e["text"]) for e in report.applied] == [("applied", FROZE)] and report.refused == []
    assert box.j.kv_all("inbox") == {"nt": {"since": "m1"}}
    # ntfy's poll of the topic, read with opskit's token: everything first, then after the last message
    assert _Topic.asked == [("/r/json?poll=1&since=all", f"Bearer {READER}"), ("/r/json?poll=1&since=m1",
                                                                              f"Bearer {READER}")]


# --- a run ---------------------------------------------------------------------------------------

def test_a_run_needs_a_channel_that_carries_taps_back(tmp_path: Path, write_config: Callable[[str], Path],
                                                     box: Box) -> None:
    settings = _write(tmp_path, write_config, box.rcv, box.sb, tg=False, nt=False)
    with pytest.raises(UsageError) as e:
        inbox.run(settings, box.j, clock=box.clock, write=box.lines.append)
    assert str(e.value) == ('no channel can carry a decision back: add a [notify.NAME] with type = "telegram", '
                            "or reply_url on an ntfy channel (README: approve from your phone)")
    assert inbox.actionable(box.settings) == [box.settings.channels["tg"], box.settings.channels["nt"]]


def test_only_root_runs_the_inbox_in_a_shared_state_dir(box: Box) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the run is made as another, real account")
    with throwaway_account("opsinbx") as pw, tempfile.TemporaryDirectory(prefix="opskit-inbox-") as top:
        shared = Path(top) / "state"  # where the account can reach it (the test's tmp_path is root's alone)
        shared.mkdir()
        os.chmod(top, 0o755)
        os.chown(shared, 0, pw.pw_gid)
        shared.chmod(0o2770)  # setgid: a state dir shared with the push account's group
        settings = replace(box.settings, state_dir=shared)

        def attempt() -> str:
            inbox.run(settings, box.j, clock=box.clock, write=lambda _: None)
            return "ran"

        with pytest.raises(UsageError) as e:
            accounts.as_account(pw, attempt)
        assert not (shared / "inbox.lock").exists()
        # root's run, in the same state dir, takes the taps
        (freeze,) = decisions.sign(settings, box.j, decisions.offer(settings, box.j, "svc", [("freeze", "svc")],
                                                                    clock=box.clock), box.clock) or ()
        _reply(box, freeze.token)  # signed with the shared dir's key, root's
        report = inbox.run(settings, box.j, clock=box.clock, write=lambda _: None)
        assert [r["text"] for r in report.applied] == [FROZE] and (shared / "inbox.lock").exists()
    assert str(e.value) == ("inbox: in a shared state dir only root holds the decision key and applies taps; "
                            "root's cron runs it (sudo opskit cron install --system)")


def test_a_second_run_leaves_the_taps_to_the_one_running(box: Box) -> None:
    _reply(box, box.token("freeze"))
    fd = os.open(box.settings.state_dir / "inbox.lock", os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    finally:
        os.close(fd)
    assert report.busy and report.ok and report.applied == [] and box.j.frozen("svc") is None
    assert box.lines == ["another `opskit inbox` is running; it takes the decisions"]
    report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    assert not report.busy and [e["text"] for e in report.applied] == [FROZE]
    assert box.lines[1:] == ["✘ svc is FROZEN: frozen by ntfy:nt: tapped on nt. Deploys are refused until "
                             "`opskit unfreeze svc`", f"nt: ntfy:nt: {FROZE}"]  # the run's write, the applier's too
    report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)  # the lock was let go
    assert not report.busy


def test_a_message_waiting_for_its_buttons_is_signed_and_sent_by_the_run(box: Box) -> None:
    """The push account's pipeline queues a message whose buttons it may not sign; the run signs
    and sends it, that channel's queue alone, once a poll, and never waits on a channel that fails."""
    o = box.offer("freeze")
    waiting = outbox.enqueue(box.j, box.clock, "tg", level="warning", title="svc", message="svc was reverted",
                             service="svc", event_id=None, actions=[("Freeze", f"{decisions.UNSIGNED}{o.id}")])
    other = outbox.enqueue(box.j, box.clock, "nt", level="info", title="svc", message="an older message",
                           service="svc", event_id=None)
    gone = outbox.enqueue(box.j, box.clock, "gone", level="warning", title="svc", message="a channel since removed",
                          service="svc", event_id=None, actions=[("Freeze", f"{decisions.UNSIGNED}{o.id}")])
    assert outbox.channels_waiting_to_sign(box.j) == ["gone", "tg"]
    box.rcv.fail_next(1, 503)  # the first send fails: it waits for the next poll, not for a retry
    box.clock.advance(5)
    report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    assert report.ok and box.rcv.telegram.messages == [] and box.clock.monotonic() == 1000.0 + 5
    first = outbox.get(box.j, waiting)
    assert first is not None and (first.status, first.attempts) == ("queued", 1)
    box.clock.advance(120)
    inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    (msg,) = box.rcv.telegram.messages
    assert [b["text"] for b in msg.buttons()] == ["Freeze svc"] and "svc was reverted" in msg.text
    assert decisions.check(box.settings, box.j, msg.buttons()[0]["callback_data"], box.clock) == \
        (decisions_store.get_offer(box.j, o.id), None)
    sent = outbox.get(box.j, waiting)
    assert sent is not None and (sent.status, sent.delivered) == ("delivered", iso(box.clock.now()))
    left = outbox.get(box.j, other)
    assert left is not None and left.status == "queued"  # not this run's to send
    kept = outbox.get(box.j, gone)
    assert kept is not None and kept.status in ("queued", "failed")


def test_a_send_of_the_waiting_messages_that_fails_never_stops_the_taps(box: Box,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from opskit import notify

    o = box.offer("freeze")
    outbox.enqueue(box.j, box.clock, "tg", level="warning", title="svc", message="svc was reverted", service="svc",
                   event_id=None, actions=[("Freeze", f"{decisions.UNSIGNED}{o.id}")])

    def fails(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")  # the outbox's journal failing mid-send

    monkeypatch.setattr(notify, "flush", fails)
    _reply(box, box.token("freeze"))
    report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    assert [e["text"] for e in report.applied] == [FROZE] and report.ok


class _TapWhileWaiting(FakeClock):
    """The run's clock: a tap arrives during the first wait; every wait is recorded."""

    def __init__(self, start: dt.datetime, tap: Callable[[], object]) -> None:
        super().__init__(start)
        self.sleeps: list[float] = []
        self.tap = tap

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) == 1:
            self.tap()
        super().sleep(seconds)


def test_a_run_with_a_wait_polls_ntfy_every_few_seconds_until_it_is_over(
        tmp_path: Path, write_config: Callable[[str], Path], box: Box) -> None:
    settings = _write(tmp_path, write_config, box.rcv, box.sb, tg=False)
    tok = box.token("freeze")
    clock = _TapWhileWaiting(box.clock.now(), lambda: _reply(box, tok))
    start = clock.monotonic()
    report = inbox.run(settings, Journal(settings.state_dir, clock), wait=7, clock=clock, write=box.lines.append)
    assert clock.sleeps == [3.0, 3.0, 1.0] and clock.monotonic() == start + 7  # a last second still polls
    assert [e["text"] for e in report.applied] == [FROZE] and report.ok
    clock.sleeps.clear()
    report = inbox.run(settings, Journal(settings.state_dir, clock), wait=-5, clock=clock, write=box.lines.append)
    assert clock.sleeps == [] and report.applied == []  # one pass, no wait


def test_channels_that_are_down_are_told_once_and_not_waited_for(box: Box) -> None:
    box.rcv.stop()
    start = box.clock.monotonic()
    report = inbox.run(box.settings, box.j, wait=30, clock=box.clock, write=box.lines.append)
    assert box.clock.monotonic() == start and not report.ok and len(report.problems) == 2
    tg, nt = report.problems
    assert re.fullmatch(r"telegram channel 'tg': getUpdates failed \(.*\); the taps wait there for the next "
                        r"`opskit inbox`", tg) and "refused" in tg and BOT not in tg, tg
    assert nt.startswith("ntfy channel 'nt': the reply topic could not be read (") and READER not in nt


def test_a_claim_of_a_killed_run_is_applied_first_and_recorded_as_resumed(box: Box) -> None:
    tok = box.token("freeze")

    class Dies(inbox.CliApplier):
        def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
            raise KeyboardInterrupt  # the run dies here, after its claim

    with pytest.raises(KeyboardInterrupt):
        decisions.receive(box.settings, box.j, Dies(box.settings, box.j, box.clock), channel="nt", msg_id="m0",
                          token=tok, by="ntfy:nt", clock=box.clock)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with box.j.tx() as c:
        c.execute("UPDATE decision_offers SET claimed_by = ? WHERE status = 'applying'", (dead.pid,))
    box.clock.advance(90)
    report = inbox.run(box.settings, box.j, clock=box.clock, write=box.lines.append)
    assert report.applied == [{"channel": "resumed", "status": "applied", "text": FROZE, "ok": True,
                               "action": "freeze", "target": "svc", "service": "svc"}]
    assert box.j.frozen("svc") is not None
    row = decisions_store.get_offer(box.j, _oid(tok))
    assert row is not None and (row.status, row.claimed_at) == ("applied", iso(box.clock.now()))  # claimed again now


# --- Telegram ------------------------------------------------------------------------------------

def _send(box: Box, text: str, *tokens: str) -> int:
    """A message with these buttons, as the bot sent it; its message_id."""
    got = httpx.post(f"{box.rcv.url('telegram')}/bot{BOT}/sendMessage", timeout=10, json={
        "chat_id": "-100777", "text": text,
        "reply_markup": {"inline_keyboard": [[{"text": f"b{i}", "callback_data": t} for i, t in enumerate(tokens)]]}})
    assert got.json()["ok"] is True, got.text
    return int(got.json()["result"]["message_id"])


ALICE_FROZE = "frozen by telegram:4242 @alice: deploys refused until `opskit unfreeze svc`"
MALLORY = "refused: telegram user 999 is not in allowed_users of channel tg; nothing changed"


def test_a_telegram_tap_is_applied_answered_and_its_message_edited_with_the_way_back(box: Box) -> None:
    tg = box.settings.channels["tg"]
    early, freeze = box.token("unfreeze"), box.token("freeze")
    mid = _send(box, "svc was reverted", freeze, early)
    taps = [box.rcv.telegram.tap(mid, "b0", user_id=999, username="mallory"),
            box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice", data="nope"),
            box.rcv.telegram.tap(mid, "b1", user_id=ALICE, username="alice"),  # not frozen yet: refused
            box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")]
    report = inbox.InboxReport()
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, report, box.clock, box.lines.append)
    assert report.applied == [{"channel": "tg", "status": "applied", "text": ALICE_FROZE, "ok": True,
                               "action": "freeze", "target": "svc", "service": "svc"}]
    assert report.refused == [{"channel": "tg", "status": "refused", "text": MALLORY, "ok": False},
                              {"channel": "tg", "status": "refused", "text": NOT_A_TOKEN, "ok": False},
                              {"channel": "tg", "status": "refused", "text": NOT_FROZEN, "ok": False,
                               "action": "unfreeze", "target": "svc", "service": "svc"}]
    assert box.lines == [f"tg: telegram:999 @mallory: {MALLORY}", f"tg: telegram:4242 @alice: {NOT_A_TOKEN}",
                         f"tg: telegram:4242 @alice: {NOT_FROZEN}",
                         "✘ svc is FROZEN: frozen by telegram:4242 @alice: tapped on tg. Deploys are refused until "
                         "`opskit unfreeze svc`", f"tg: telegram:4242 @alice: {ALICE_FROZE}"]
    assert box.rcv.telegram.answers == [
        {"callback_query_id": taps[0]["callback_query"]["id"], "text": MALLORY, "show_alert": True},
        {"callback_query_id": taps[1]["callback_query"]["id"], "text": NOT_A_TOKEN, "show_alert": True},
        {"callback_query_id": taps[2]["callback_query"]["id"], "text": NOT_FROZEN, "show_alert": True},
        {"callback_query_id": taps[3]["callback_query"]["id"], "text": ALICE_FROZE, "show_alert": False}]
    assert box.rcv.telegram.polls == [{"timeout": 0, "allowed_updates": ["callback_query"]}]  # taps only
    # a refusal is only answered; the one applied tap marks the message
    assert box.rcv.telegram.calls == ["sendMessage", "getUpdates"] + ["answerCallbackQuery"] * 4 + ["editMessageText"]
    taps = [taps[0], taps[1], taps[3]]
    (msg,) = box.rcv.telegram.messages
    assert msg.text == f"svc was reverted\n\n✅ {ALICE_FROZE}" and [b["text"] for b in msg.buttons()] == ["Unfreeze svc"]
    assert box.j.kv_all("inbox") == {"tg": {"offset": taps[2]["update_id"] + 1}}
    row = decisions_store.get_offer(box.j, _oid(freeze))
    assert row is not None and (row.status, row.channel, row.decided_by, row.tap, row.answered) == \
        ("applied", "tg", "telegram:4242 @alice", str(taps[2]["update_id"]), iso(box.clock.now()))
    assert row.reply is not None and json.loads(row.reply) == {"chat_id": -100777, "message_id": mid}  # to mark it later
    assert box.rcv.telegram.pending_updates() == 4  # confirmed by the next read's offset (no fleet)
    # read again (a run killed before it stored the offset): every tap was seen, nothing is said again
    box.j.kv_delete("inbox", "tg")
    again = inbox.InboxReport()
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, again, box.clock, box.lines.append)
    assert again == inbox.InboxReport() and len(box.lines) == 5
    assert box.rcv.telegram.calls[-1] == "getUpdates" and len(box.rcv.telegram.answers) == 4

    # the way back, tapped by someone without a username
    box.clock.advance(30)
    up = box.rcv.telegram.tap(mid, "Unfreeze", user_id=ALICE, username=None)
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, report, box.clock, box.lines.append)
    assert box.lines[-1] == "tg: telegram:4242: unfrozen by telegram:4242: deploys allowed again"
    assert msg.text == f"svc was reverted\n\n✅ {ALICE_FROZE}\n\n✅ unfrozen by telegram:4242: deploys allowed again"
    assert msg.buttons() == [] and box.j.frozen("svc") is None
    assert box.j.kv_all("inbox") == {"tg": {"offset": up["update_id"] + 1}}
    # nothing new: nothing asked of the bot but the read
    calls = len(box.rcv.telegram.calls)
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, report, box.clock, box.lines.append)
    assert box.rcv.telegram.calls[calls:] == ["getUpdates"] and len(report.applied) == 2
    assert box.rcv.telegram.polls[-1] == {"timeout": 0, "allowed_updates": ["callback_query"],
                                          "offset": up["update_id"] + 1}
    assert box.rcv.telegram.pending_updates() == 0


class _Bot(BaseHTTPRequestHandler):
    """A Bot API answering getUpdates with what the test sets (the stand-in follows the API)."""

    result: object = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"ok": True, "result": self.result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_getupdates_without_a_list_is_down_and_an_update_without_an_id_is_passed_over(box: Box) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bot)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tg = replace(box.settings.channels["tg"], api_url=f"http://127.0.0.1:{server.server_port}")
        _Bot.result = {"update_id": 1}
        with pytest.raises(inbox._Down) as e:
            inbox._telegram(box.settings, box.j, box.applier(), tg, 0, inbox.InboxReport(), box.clock, box.lines.append)
        assert str(e.value) == ("telegram channel 'tg': getUpdates failed (no result); the taps wait there for "
                                "the next `opskit inbox`")
        _Bot.result = [{"update_id": "7"}, {"update_id": 8}]
        inbox._telegram(box.settings, box.j, box.applier(), tg, 0, inbox.InboxReport(), box.clock, box.lines.append)
    finally:
        server.shutdown()
        server.server_close()
    assert box.j.kv_all("inbox") == {"tg": {"offset": 9}}


def test_a_tap_applied_by_a_run_that_was_killed_is_answered_by_the_next(box: Box) -> None:
    tg = box.settings.channels["tg"]
    freeze = box.token("freeze")
    mid = _send(box, "svc was reverted", freeze)
    tap = box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    # the run that read it applied it and was killed before it answered or stored the offset
    done = decisions.receive(box.settings, box.j, box.applier(), channel="tg", msg_id=str(tap["update_id"]),
                             token=freeze, by="telegram:4242 @alice", clock=box.clock)
    assert done.status == "applied"
    box.lines.clear()
    report = inbox.InboxReport()
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, report, box.clock, box.lines.append)
    assert report == inbox.InboxReport()  # seen: applied once, by the first
    assert box.lines == [f"tg: telegram:4242 @alice: {ALICE_FROZE}"]
    assert box.rcv.telegram.answers == [{"callback_query_id": tap["callback_query"]["id"], "text": ALICE_FROZE,
                                         "show_alert": False}]
    (msg,) = box.rcv.telegram.messages
    assert msg.text == f"svc was reverted\n\n✅ {ALICE_FROZE}" and msg.buttons() == []  # no second Unfreeze
    row = decisions_store.get_offer(box.j, _oid(freeze))
    assert row is not None and row.answered == iso(box.clock.now())


def test_a_long_answer_is_clipped_and_a_long_message_cut_as_telegram_takes_them(box: Box) -> None:
    tg = box.settings.channels["tg"]
    branch = "feature/" + "x" * 200
    row = _park(box, _feature(box, branch), branch=branch)
    git(box.sb.dev, "push", "-q", "origin", f":{branch}")
    approve = box.token("approve", str(row.id))
    long = "y" * 4090  # with the answer below it, more than Telegram's 4096
    mid = _send(box, long, approve, box.token("freeze"))
    box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    box.rcv.telegram.tap(mid, "b1", user_id=ALICE, username="alice")
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, inbox.InboxReport(), box.clock, box.lines.append)
    refused = f"refused: change #{row.id} no longer waits: {branch} was deleted; nothing changed"
    assert len(refused) > 190
    clipped, froze = (a["text"] for a in box.rcv.telegram.answers)
    assert clipped == refused[:189] + "…" and froze == ALICE_FROZE  # answerCallbackQuery takes 200 at most
    (msg,) = box.rcv.telegram.messages
    assert msg.text == long + "\n…" and [b["text"] for b in msg.buttons()] == ["Unfreeze svc"]


def test_a_tapped_message_without_text_is_marked_with_the_answer_alone(box: Box) -> None:
    tg = box.settings.channels["tg"]
    mid = _send(box, "svc was reverted", box.token("freeze"))
    tap = box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    query = dict(tap["callback_query"])
    query["message"] = {k: v for k, v in query["message"].items() if k != "text"}  # Telegram leaves it out at times
    inbox._tap(box.settings, box.j, box.applier(), tg, tap["update_id"], query, inbox.InboxReport(), box.clock,
               box.lines.append)
    (msg,) = box.rcv.telegram.messages
    assert msg.text == f"\n\n✅ {ALICE_FROZE}"


def test_an_approval_that_must_wait_is_marked_so_and_keeps_its_buttons(box: Box) -> None:
    tg = box.settings.channels["tg"]
    row = _park(box, _feature(box))
    signed = decisions.sign(box.settings, box.j, decisions.offer(
        box.settings, box.j, "svc", [("approve", str(row.id)), ("reject", str(row.id))], clock=box.clock), box.clock)
    assert signed is not None
    mid = _send(box, "change #1 waits", *(a.token for a in signed))
    before = box.rcv.telegram.messages[0].buttons()
    box.j.kv_set("frozen", "svc", {"reason": "held by the on-call", "event_id": None, "since": box.j.now()})
    box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    report = inbox.InboxReport()
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, report, box.clock, box.lines.append)
    (applied,) = report.applied
    assert applied["ok"] is False and applied["text"].startswith("approved by telegram:4242 @alice: ")
    (msg,) = box.rcv.telegram.messages
    assert msg.text == f"change #1 waits\n\n⚠️ {applied['text']}" and msg.buttons() == before
    offer = decisions_store.get_offer(box.j, _oid(signed[0].token))
    assert offer is not None and offer.status == "open" and offer.answered == iso(box.clock.now())


def test_a_decided_message_that_is_gone_is_answered_and_one_the_bot_cannot_edit_is_not(box: Box) -> None:
    tg = box.settings.channels["tg"]
    gone, kept = box.token("freeze"), box.token("unfreeze")
    mid = _send(box, "svc was reverted", gone)
    box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    box.rcv.telegram.messages.clear()  # deleted in the chat: the edit answers 400
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, inbox.InboxReport(), box.clock, box.lines.append)
    row = decisions_store.get_offer(box.j, _oid(gone))
    assert row is not None and row.answered == iso(box.clock.now())
    assert not any("could not mark" in line for line in box.lines)

    mid = _send(box, "svc is frozen", kept)
    box.rcv.telegram.tap(mid, "b0", user_id=ALICE, username="alice")
    reached = box.rcv.telegram.hold("answerCallbackQuery")

    def fail_the_edit() -> None:
        reached.wait(30)
        box.rcv.fail_next(5, 503)  # the edit that follows the answer, and its retries
        box.rcv.telegram.release()

    t = threading.Thread(target=fail_the_edit)
    t.start()
    inbox._telegram(box.settings, box.j, box.applier(), tg, 0, inbox.InboxReport(), box.clock, box.lines.append)
    t.join()
    assert box.lines[-1].startswith("tg: could not mark the message as decided (") and "503" in box.lines[-1]
    row = decisions_store.get_offer(box.j, _oid(kept))
    assert row is not None and row.status == "applied" and row.answered is None


# --- a fleet: one reader per bot, taps handed to the host they are for ---------------------------

@dataclass
class Fleet2:
    """Host a runs no service; host b runs `web` (hosts = ["b"]); both read the same bot."""

    a: config.Settings
    b: config.Settings
    dead_a: config.Settings  # host a's config with the fleet database's address dead
    rcv: Receiver
    clock: FakeClock
    url: str
    pg: Postgres

    def journal(self, s: config.Settings) -> Journal:
        return Journal(s.state_dir, self.clock, fleet=s.fleet)

    def run(self, s: config.Settings) -> tuple[inbox.InboxReport, list[str]]:
        lines: list[str] = []
        j = self.journal(s)
        try:
            return inbox.run(s, j, clock=self.clock, write=lines.append), lines
        finally:
            j.close()

    def handoff(self) -> list[tuple[str, dict[str, object], bool]]:
        return [(h, json.loads(p), t is not None)
                for h, p, t in fleet_rows(self.pg, self.url, "SELECT host, payload, taken FROM handoff ORDER BY id")]


@pytest.fixture(name="two")
def two_hosts_fixture(tmp_path: Path, fleet_url: str, postgres_server: Postgres) -> Iterator[Fleet2]:
    from tests.test_fleet_inbox import hosts

    rcv = Receiver.start(hang_seconds=5.0)
    try:
        a, b = hosts(tmp_path, fleet_url, rcv)
        dead = tmp_path / "dead-a.toml"
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        closed = port.getsockname()[1]
        port.close()  # nothing listens there now
        dead.write_text(a.config.read_text().replace(f":{urlsplit(fleet_url).port}/", f":{closed}/"))
        (tmp_path / ".env").write_text((a.config.parent / ".env").read_text())
        os.chmod(tmp_path / ".env", 0o600)
        clock = FakeClock(dt.datetime.now(dt.timezone.utc).replace(microsecond=0))
        yield Fleet2(config.load_file(a.config), config.load_file(b.config), config.load_file(dead), rcv, clock,
                     fleet_url, postgres_server)
    finally:
        rcv.stop()


def _web_button(two: Fleet2) -> tuple[int, str]:
    """b's message with its Freeze button, sent as b's pipeline sends it; its id and token."""
    from opskit import notify

    jb = two.journal(two.b)
    try:
        assert notify.send(two.b, jb, "web: something is off", title="web", service="web", clock=two.clock,
                           actions=decisions.offer(two.b, jb, "web", [("freeze", "web")], clock=two.clock)).ok
    finally:
        jb.close()
    (msg,) = [m for m in two.rcv.telegram.messages if m.buttons()]
    return msg.message_id, msg.buttons()[0]["callback_data"]


WEB_FROZE = "frozen by telegram:4242 @alice: deploys refused until `opskit unfreeze web`"


def test_a_tap_on_another_hosts_button_is_handed_to_it_and_applied_there_once(two: Fleet2) -> None:
    mid, _ = _web_button(two)
    junk = two.rcv.telegram.tap(mid, "Freeze", user_id=ALICE, username="alice", data="nope")
    tap = two.rcv.telegram.tap(mid, "Freeze", user_id=ALICE, username="alice")
    # a's config names a second host for the service: the tap goes to both
    report, lines = two.run(replace(two.a, services={"web": replace(two.b.services["web"], hosts=("b", "c"))}))
    # a refuses what is no button at all itself, and hands over what b signed
    assert report.applied == [] and report.refused == [{"channel": "tg", "status": "refused",
                                                        "text": NOT_A_TOKEN, "ok": False}]
    assert lines == [f"tg: telegram:4242 @alice: {NOT_A_TOKEN}", "tg: a tap on another host's button, handed to b, c"]
    payload = {"channel": "tg", "update_id": tap["update_id"], "query": tap["callback_query"], "from_host": "a"}
    assert two.handoff() == [("b", payload, False), ("c", payload, False)]
    assert two.rcv.telegram.pending_updates() == 0  # a confirmed what it read: b never reads it again
    assert two.rcv.telegram.polls == [{"timeout": 0, "allowed_updates": ["callback_query"]},
                                      {"offset": tap["update_id"] + 1, "timeout": 0, "limit": 1,
                                       "allowed_updates": ["callback_query"]}]
    assert two.journal(two.a).kv_all("inbox") == {"tg": {"offset": tap["update_id"] + 1}}
    assert junk["update_id"] + 1 == tap["update_id"]

    report, lines = two.run(two.b)
    assert report.applied == [{"channel": "tg", "status": "applied", "text": WEB_FROZE, "ok": True,
                               "action": "freeze", "target": "web", "service": "web"}] and report.refused == []
    assert lines[-1] == f"tg: telegram:4242 @alice: {WEB_FROZE}"
    assert [t for _, _, t in two.handoff()] == [True, False]  # c's is c's to take
    assert two.journal(two.b).frozen("web") is not None
    report, _ = two.run(two.b)
    assert report.applied == [] and report.refused == []


def test_a_tap_on_this_hosts_own_button_is_applied_here_and_never_handed_over(two: Fleet2) -> None:
    mid, _ = _web_button(two)
    two.rcv.telegram.tap(mid, "Freeze", user_id=ALICE, username="alice")
    report, lines = two.run(two.b)
    assert [e["text"] for e in report.applied] == [WEB_FROZE] and lines[-1] == f"tg: telegram:4242 @alice: {WEB_FROZE}"
    assert not any("handed" in line for line in lines) and two.handoff() == []


def test_a_tap_on_a_button_of_no_host_it_could_go_to_is_refused_where_it_was_read(two: Fleet2) -> None:
    mid, _ = _web_button(two)
    two.rcv.telegram.tap(mid, "Freeze", user_id=ALICE, username="alice")
    with psycopg.connect(two.url) as conn:
        conn.execute("DELETE FROM hosts")  # no other host known, none named in a's config
    report, lines = two.run(two.a)
    (refused,) = report.refused
    assert refused["text"] == "refused: bad token (no such offer); nothing changed" and report.applied == []
    assert two.handoff() == [] and two.rcv.telegram.answers[-1]["show_alert"] is True


def test_a_handed_tap_that_is_not_for_this_host_or_not_a_tap_is_left_alone(two: Fleet2) -> None:
    from opskit.storage import handoff

    _, token = _web_button(two)
    ver, oid, exp, mac = token.split(".")
    third = f"{ver}.{oid}.{exp}.{'A' * len(mac)}"  # a button another key signed: a third host's
    query = {"id": "1", "from": {"id": ALICE, "username": "alice"}, "data": token, "message": {}}
    fl = two.journal(two.a).fleet
    assert fl is not None
    bad: list[dict[str, object]] = [
        {"channel": "nosuch", "update_id": 1, "query": query},
        {"channel": "tg", "update_id": "1", "query": query},
        {"channel": "tg", "update_id": 1, "query": "a tap"},
        {"channel": "tg", "update_id": 1, "query": {**query, "data": third}}]
    for payload in bad:
        handoff.hand(fl, ["b"], payload, two.clock.now().isoformat())
    report, lines = two.run(two.b)
    assert report.applied == [] and report.refused == [] and lines == []
    assert [t for _, _, t in two.handoff()] == [True] * 4  # each taken, once
    assert two.journal(two.b).frozen("web") is None and "answerCallbackQuery" not in two.rcv.telegram.calls
    # a username that is no string (the row is the fleet database's): the tapper is named by id alone
    odd = {**query, "from": {"id": ALICE, "username": 12345}}
    handoff.hand(fl, ["b"], {"channel": "tg", "update_id": 9, "query": odd}, two.clock.now().isoformat())
    report, _ = two.run(two.b)
    assert [e["text"] for e in report.applied] == ["frozen by telegram:4242: deploys refused until `opskit unfreeze web`"]
    row = decisions_store.get_offer(two.journal(two.b), int(oid))
    assert row is not None and (row.channel, row.tap, row.decided_by) == ("tg", "9", "telegram:4242")


def test_a_bot_another_host_reads_is_left_to_it_unless_the_database_is_away(
        tmp_path: Path, write_config: Callable[[str], Path], two: Fleet2) -> None:
    from opskit.storage import fleet_locks

    _, token = _web_button(two)

    fl = two.journal(two.a).fleet
    assert fl is not None
    with fleet_locks.try_lock(fl, fleet_locks.bot_key(BOT)) as mine:  # host a reads the bot now
        assert mine
        report, lines = two.run(two.b)
        assert report.ok and lines == ["tg: another host of the fleet reads this bot now; its taps for this host "
                                       "are handed over"]
        assert two.rcv.telegram.calls == ["sendMessage"]
        # b found the database away a moment ago (another of its processes did): it reads the bot alone
        jb = two.journal(two.b)
        jb.kv_set("fleet", "unreachable", {"since": jb.now(), "error": "x", "last_try": jb.now()})
        jb.close()
        report, lines = two.run(two.b)
        assert report.ok and lines == [] and two.rcv.telegram.calls == ["sendMessage", "getUpdates"]
        # an ntfy reply topic is no bot: every host reads it, whatever lock another host holds
        base = two.rcv.url("ntfy", "x").rsplit("/", 1)[0]
        nt = config.load(write_config(
            f'[opskit]\nstate_dir = "{tmp_path / "nt"}"\n[notify.nt]\ntype = "ntfy"\nurl = "{base}"\n'
            f'topic = "web-alerts"\ntoken = "{READER}"\nreply_url = "{base}/web-replies"\ntimeout = 5\n')).channels["nt"]
        two.rcv.ntfy.publish("web-replies", token, auth=None)
        two.clock.advance(31)  # b tries the database again
        with fleet_locks.try_lock(fl, fleet_locks.bot_key(READER)) as also:
            assert also
            report, lines = two.run(replace(two.b, channels={"nt": nt}))
        assert [e["text"] for e in report.applied] == ["frozen by ntfy:nt: deploys refused until `opskit unfreeze web`"]
        assert two.rcv.telegram.calls == ["sendMessage", "getUpdates"]
    report, lines = two.run(two.dead_a)  # the database cannot be reached at all: read here
    assert len(lines) == 1 and re.fullmatch(r"tg: the fleet database is unreachable \(.+\); reading the bot from "
                                            r"this host", lines[0]), lines
    assert two.rcv.telegram.calls == ["sendMessage"] + ["getUpdates"] * 2


def test_a_tap_read_while_the_database_is_away_is_handed_over_when_it_is_back(two: Fleet2) -> None:
    mid, _ = _web_button(two)
    tap = two.rcv.telegram.tap(mid, "Freeze", user_id=ALICE, username="alice")
    report, lines = two.run(two.dead_a)
    assert report.ok and report.applied == [] and report.refused == []
    assert re.fullmatch(r"tg: a tap on another host's button; the fleet database is unreachable \(.+\), it is "
                        r"handed over when it is back", lines[-1]), lines
    payload = {"channel": "tg", "update_id": tap["update_id"], "query": tap["callback_query"], "from_host": "a"}
    assert two.journal(two.a).kv_all(inbox.PENDING) == {f"tg:{tap['update_id']}": payload}
    assert two.handoff() == []
    two.clock.advance(31)  # past the wait before the database is tried again
    # a's config names a second host for the service now: the tap goes to both
    named = replace(two.a, services={"web": replace(two.b.services["web"], hosts=("b", "c"))})
    report, lines = two.run(named)
    assert lines == ["tg: a tap read while the fleet database was away, handed to b, c"]
    assert two.journal(two.a).kv_all(inbox.PENDING) == {} and two.handoff() == [("b", payload, False),
                                                                               ("c", payload, False)]
    report, _ = two.run(two.b)
    assert [e["text"] for e in report.applied] == [WEB_FROZE]

    # a tap kept while the database was away, and no other host known by the time it is back
    later = two.rcv.telegram.tap(mid, "Unfreeze", user_id=ALICE, username="alice")  # b put it there
    two.run(two.dead_a)
    two.clock.advance(31)
    with psycopg.connect(two.url) as conn:
        conn.execute("DELETE FROM hosts WHERE host <> 'a'")
    report, lines = two.run(two.a)
    assert lines == ["tg: a tap read while the fleet database was away, handed to no other host"]
    assert two.journal(two.a).kv_all(inbox.PENDING) == {} and len(two.handoff()) == 2
    assert later["update_id"] == tap["update_id"] + 1
