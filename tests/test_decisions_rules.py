"""The decision rules that guard a tap (docs/ARCHITECTURE.md, who may do what), each pinned by a
test that fails when the rule is broken: the token's signature is checked in full, a Telegram
channel without allowed_users lets nobody decide, and an offer is claimed once by the claim's
own compare-and-swap, not by the check that came before it. Races are forced by hooks, never
left to timing."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opskit.base import config
from opskit.base.clock import FakeClock, iso
from opskit.chain import inbox
from opskit.notify import decisions
from opskit.notify.base import Action
from opskit.standins.receiver import Receiver
from opskit.storage import approvals as approvals_store
from opskit.storage import decisions as decisions_store
from opskit.storage.journal import Journal
from tests.support.notify import receiver_fixture  # noqa: F401 - the `receiver` fixture
from tests.support.phone import ALICE, BOT

ALICE_BY = "telegram:4242 @alice"
BAD = "bad token (signature does not match)"


class _Recorder:
    """Applies nothing: records what it was asked to apply, and every still_waits asked."""

    def __init__(self) -> None:
        self.applied: list[tuple[str, str, str]] = []
        self.asked: list[int] = []
        self.lock = threading.Lock()

    def still_waits(self, found: decisions.Offer) -> str | None:
        with self.lock:
            self.asked.append(found.id)
        return None

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        with self.lock:
            self.applied.append((found.action, found.target, by))
        return f"{found.action} {found.target} by {by}", True

    def waits_again(self, found: decisions.Offer) -> bool:
        return False


def _settings(tmp_path: Path, write_config: Callable[[str], Path], users: str = f"allowed_users = [{ALICE}]\n",
              api_url: str | None = None) -> config.Settings:
    api = f'api_url = "{api_url}"\n' if api_url else ""
    return config.load(write_config(
        f'[opskit]\nstate_dir = "{tmp_path / "state"}"\nnotify = ["tg"]\n[notify.tg]\n'
        f'type = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\n{users}{api}'))


def _events(j: Journal, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in j.query(type_prefix=f"decision.{kind}")]


def _status(j: Journal, offer_id: int) -> str:
    row = decisions_store.get_offer(j, offer_id)
    assert row is not None
    return row.status


def _oid(tok: str) -> int:
    return int(tok.split(".")[1])


# --- the token's signature ---------------------------------------------------------------------

def _approve_and_reject(settings: config.Settings, j: Journal) -> tuple[str, str, int]:
    parked = approvals_store.park(j, service="svc", chain="c1", branch="feature/x", sha="abc1234def" * 4,
                                  base=None, cause="review asked for a human")
    signed = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("approve", str(parked.id)),
                                                                              ("reject", str(parked.id))]))
    assert signed is not None
    approve, reject = (a.token for a in signed)
    return approve, reject, parked.id


def _forged_tokens(settings: config.Settings, j: Journal, approve: str, reject: str) -> dict[str, str]:
    ver, oid, exp, mac = approve.split(".")
    other_mac = reject.split(".")[3]
    row = decisions_store.get_offer(j, int(oid))
    assert row is not None
    key = decisions.secret(settings.state_dir)
    # signed by the key itself, over another action for this offer: the row says approve
    reject_mac = decisions._mac(key, row.id, "reject", row.target, row.expires, row.subject)
    assert len(mac) == 22 and other_mac != mac and reject_mac != mac
    return {
        "one character short": f"{ver}.{oid}.{exp}.{mac[:-1]}",
        "half a signature": f"{ver}.{oid}.{exp}.{mac[:11]}",
        "one character": f"{ver}.{oid}.{exp}.{mac[:1]}",
        "empty signature": f"{ver}.{oid}.{exp}.",
        "the Reject offer's signature": f"{ver}.{oid}.{exp}.{other_mac}",
        "a later expiry": f"{ver}.{oid}.{int(exp, 36) + 3600:x}.{mac}",
        "an earlier expiry": f"{ver}.{oid}.{int(exp, 36) - 1:x}.{mac}",
        "a signature over another action": f"{ver}.{oid}.{exp}.{reject_mac}",
    }


def test_a_token_is_refused_unless_its_whole_signature_matches(tmp_path: Path,
                                                               write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, reject, change = _approve_and_reject(settings, j)
    forged = _forged_tokens(settings, j, approve, reject)
    rec = _Recorder()
    for n, (what, tok) in enumerate(forged.items(), 1):
        v = decisions.receive(settings, j, rec, channel="tg", msg_id=str(n), token=tok, by=ALICE_BY)
        assert (v.status, v.ok, v.text) == ("refused", False, f"refused: {BAD}; nothing changed"), what
    refused = _events(j, "refused")
    assert [r["reason"] for r in refused] == [BAD] * len(forged)
    assert all(r["by"] == ALICE_BY and r["channel"] == "tg" for r in refused)
    assert rec.applied == [] and rec.asked == []  # refused before anything looked at the change
    assert _events(j, "received") == [] and _events(j, "applied") == []
    assert (_status(j, _oid(approve)), _status(j, _oid(reject))) == ("open", "open")
    # and the genuine token, after all that, still decides
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="genuine", token=approve, by=ALICE_BY)
    assert v.status == "applied" and rec.applied == [("approve", str(change), ALICE_BY)]


@pytest.mark.parametrize("column, value", [("action", "'reject'"), ("expires", "expires + 3600"),
                                           ("target", "'99'"), ("subject", "'0000000000'")],
                         ids=["action", "expires", "target", "subject"])
def test_a_row_rewritten_after_signing_refuses_its_genuine_token(tmp_path: Path, write_config: Callable[[str], Path],
                                                                 column: str, value: str) -> None:
    """The push account writes the journal: it can rewrite an offer's row, never its token. A
    genuine token of a row whose action, target, subject or expiry changed is a bad token."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, _ = _approve_and_reject(settings, j)
    with j.tx() as c:
        c.execute(f"UPDATE decision_offers SET {column} = {value} WHERE id = ?", (_oid(approve),))
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    assert (v.status, v.text) == ("refused", f"refused: {BAD}; nothing changed")
    assert [r["reason"] for r in _events(j, "refused")] == [BAD]
    assert rec.applied == [] and _events(j, "received") == [] and _events(j, "applied") == []
    assert _status(j, _oid(approve)) == "open"


# --- a Telegram channel without allowed_users ---------------------------------------------------

def _api(r: Receiver, method: str, **body: object) -> dict[str, Any]:
    got = httpx.post(f"{r.url('telegram')}/bot{BOT}/{method}", json=body, timeout=10).json()
    assert got["ok"] is True, got
    return got["result"]


@pytest.mark.parametrize("users", ["allowed_users = []\n", ""], ids=["empty", "unset"])
def test_a_channel_without_allowed_users_refuses_every_tap(tmp_path: Path, write_config: Callable[[str], Path],
                                                          receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                                          users: str) -> None:
    settings = _settings(tmp_path, write_config, users, api_url=receiver.url("telegram"))
    assert settings.channels["tg"].allowed_users == ()
    j = Journal(settings.state_dir)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    sent = _api(receiver, "sendMessage", chat_id=1, text="svc was reverted",
                reply_markup={"inline_keyboard": [[{"text": freeze.label, "callback_data": freeze.token}]]})
    tappers = [(ALICE, "alice"), (1, None), (999, "mallory")]
    updates = [receiver.telegram.tap(sent["message_id"], "Freeze", user_id=uid, username=name)["update_id"]
               for uid, name in tappers]
    rec = _Recorder()
    monkeypatch.setattr(inbox, "CliApplier", lambda *a, **k: rec)  # nothing real to freeze: record instead
    report = inbox.run(settings, j, wait=0, write=lambda _: None)
    assert report.ok and report.applied == [] and len(report.refused) == 3
    why = "channel tg has no allowed_users: nobody may decide there"
    refused = _events(j, "refused")
    assert [(r["by"], r["reason"]) for r in refused] == [
        (ALICE_BY, why), ("telegram:1", why), ("telegram:999 @mallory", why)]
    assert rec.applied == [] and rec.asked == []
    assert _events(j, "received") == [] and _events(j, "applied") == []
    assert _status(j, _oid(freeze.token)) == "open" and j.frozen("svc") is None
    assert [a["show_alert"] for a in receiver.telegram.answers] == [True, True, True]
    assert all(why in a["text"] for a in receiver.telegram.answers)
    assert j.kv_get("inbox", "tg") == {"offset": updates[-1] + 1}  # read, refused, not read again


# --- an offer is claimed once, by the claim itself ----------------------------------------------

def _one_offer(tmp_path: Path, write_config: Callable[[str], Path]) -> tuple[config.Settings, str]:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    return settings, freeze.token


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Every check() verdict, to prove both taps passed it before either claimed."""
    seen: list[str | None] = []
    check = decisions.check

    def counted(*args: Any, **kwargs: Any) -> tuple[decisions.Offer | None, str | None]:
        got = check(*args, **kwargs)
        seen.append(got[1])
        return got

    monkeypatch.setattr(decisions, "check", counted)
    return seen


def test_two_taps_past_the_check_claim_back_to_back_and_one_applies(tmp_path: Path,
                                                                   write_config: Callable[[str], Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Tap 1 passes check and still_waits; before it claims, tap 2 passes them too (the offer is
    still open); then the two claims run back to back, tap 1's first. Only the claim's
    `status = 'open'` compare-and-swap can refuse tap 2."""
    settings, tok = _one_offer(tmp_path, write_config)
    j = Journal(settings.state_dir)
    rec = _Recorder()
    checks = _count_checks(monkeypatch)
    claim = decisions_store.claim_by_tap
    held: list[tuple[Journal, decisions.Offer, dict[str, Any]]] = []
    claims: dict[str, tuple[bool, bool]] = {}
    second: list[decisions.Verdict] = []

    def hooked(journal: Journal, found: decisions.Offer, **kw: Any) -> tuple[bool, bool]:
        if kw["msg_id"] == "1":  # tap 1 checked, not claimed yet: tap 2 runs up to its own claim
            held.append((journal, found, kw))
            second.append(decisions.receive(settings, Journal(settings.state_dir), rec, channel="tg",
                                            msg_id="2", token=tok, by="telegram:7 @bob"))
            return claims["1"]
        # tap 2 checked too, while tap 1 waits: tap 1's claim first, tap 2's right after it
        assert checks == [None, None] and found.status == "open"
        one_journal, one, one_kw = held[0]
        claims["1"] = claim(one_journal, one, **one_kw)
        claims["2"] = claim(journal, found, **kw)
        return claims["2"]

    monkeypatch.setattr(decisions_store, "claim_by_tap", hooked)
    v1 = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=tok, by=ALICE_BY)
    (v2,) = second
    assert checks == [None, None] and rec.asked == [_oid(tok), _oid(tok)]  # both passed the earlier check
    assert (v1.status, v1.ok) == ("applied", True)
    assert (v2.status, v2.ok, v2.text) == ("refused", False, f"already decided by {ALICE_BY}")
    assert rec.applied == [("freeze", "svc", ALICE_BY)]
    assert [r["by"] for r in _events(j, "received")] == [ALICE_BY]
    assert [(a["by"], a["ok"]) for a in _events(j, "applied")] == [(ALICE_BY, True)]
    assert [(r["by"], r["reason"]) for r in _events(j, "refused")] == [
        ("telegram:7 @bob", f"token already used by {ALICE_BY}")]
    row = decisions_store.get_offer(j, _oid(tok))
    assert row is not None and (row.status, row.decided_by, row.tap) == ("applied", ALICE_BY, "1")
    assert claims == {"1": (False, True), "2": (False, False)}  # the second claim found it taken


def test_a_tap_checked_before_the_first_claim_cannot_claim_after_the_apply(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tap 2 (its own thread, its own journal connection) passes check and still_waits, then
    stops before its claim; tap 1 claims and applies the offer to the end; only then does tap 2
    claim. Events order the two taps, no sleeps: the claim of an offer already applied must fail."""
    settings, tok = _one_offer(tmp_path, write_config)
    j = Journal(settings.state_dir)
    rec = _Recorder()
    checks = _count_checks(monkeypatch)
    claim = decisions_store.claim_by_tap
    two_checked, one_done = threading.Event(), threading.Event()
    claims: dict[str, tuple[bool, bool]] = {}

    def hooked(journal: Journal, found: decisions.Offer, **kw: Any) -> tuple[bool, bool]:
        if kw["msg_id"] == "2":
            two_checked.set()
            assert one_done.wait(60), "tap 1 never finished"
        else:
            assert two_checked.wait(60), "tap 2 never reached its claim"
            assert found.status == "open"
        claims[kw["msg_id"]] = got = claim(journal, found, **kw)
        return got

    monkeypatch.setattr(decisions_store, "claim_by_tap", hooked)
    second: list[decisions.Verdict] = []
    failed: list[BaseException] = []

    def tap_two() -> None:
        try:
            second.append(decisions.receive(settings, Journal(settings.state_dir), rec, channel="tg", msg_id="2",
                                            token=tok, by="telegram:7 @bob"))
        except BaseException as e:  # seen by the main thread's asserts
            failed.append(e)
            two_checked.set()

    t = threading.Thread(target=tap_two)
    t.start()
    try:
        v1 = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=tok, by=ALICE_BY)
    finally:
        one_done.set()
        t.join(60)
    assert not t.is_alive() and failed == []
    (v2,) = second
    assert checks == [None, None] and rec.asked == [_oid(tok), _oid(tok)]
    assert (v1.status, v1.ok) == ("applied", True)
    assert (v2.status, v2.ok, v2.text) == ("refused", False, f"already decided by {ALICE_BY}")
    assert rec.applied == [("freeze", "svc", ALICE_BY)]
    assert len(_events(j, "received")) == 1 and len(_events(j, "applied")) == 1
    assert [(r["by"], r["reason"]) for r in _events(j, "refused")] == [
        ("telegram:7 @bob", f"token already used by {ALICE_BY}")]
    assert _status(j, _oid(tok)) == "applied"
    assert claims == {"1": (False, True), "2": (False, False)}  # the second claim found it taken


# --- the apply itself: exactly what was checked, recorded exactly ----------------------------

class _Raising(_Recorder):
    """The change was decided at the same moment by `opskit approve`: the apply raises."""

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        from opskit.base.errors import OpsError

        raise OpsError("change #1 is no longer waiting")


class _WaitsAgain(_Recorder):
    def waits_again(self, found: decisions.Offer) -> bool:
        return True  # the merge never happened (lock busy): the button is live again


def test_an_applied_tap_is_journaled_and_answered_exactly_and_a_second_read_is_seen(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, reject, change = _approve_and_reject(settings, j)
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="7", token=approve, by=ALICE_BY)
    text = f"approve {change} by {ALICE_BY}"
    assert (v.status, v.text, v.ok) == ("applied", text, True)
    assert v.offer is not None and (v.offer.id, v.offer.status, v.offer.outcome) == (_oid(approve), "applied", text)
    assert _events(j, "applied") == [{"channel": "tg", "by": ALICE_BY, "action": "approve", "target": str(change),
                                      "offer": _oid(approve), "outcome": text, "ok": True}]
    assert [e.service for e in j.query(type_prefix="decision.applied")] == ["svc"]
    assert _status(j, _oid(reject)) == "applied"  # the change's other button is spent with it
    # read again before the tapper was told (a run killed after the apply): seen, with the outcome
    again = decisions.receive(settings, j, rec, channel="tg", msg_id="7", token=approve, by=ALICE_BY)
    assert (again.status, again.text, again.ok) == ("seen", text, True)
    assert again.offer is not None and again.offer.id == _oid(approve)
    # the same message id on another channel is another tap (refused: already decided)
    other = decisions.receive(settings, j, rec, channel="ntfy", msg_id="7", token=approve, by=ALICE_BY)
    assert (other.status, other.text) == ("refused", f"refused: already decided by {ALICE_BY}; nothing changed")
    assert _events(j, "refused")[-1] == {"channel": "ntfy", "by": ALICE_BY, "reason": f"already decided by {ALICE_BY}",
                                         "action": "approve", "target": str(change), "offer": _oid(approve)}
    # once told, a re-read is seen with nothing left to tell
    decisions.answered(j, _oid(approve))
    told = decisions.receive(settings, j, rec, channel="tg", msg_id="7", token=approve, by=ALICE_BY)
    assert (told.status, told.text, told.offer) == ("seen", "", None)
    assert rec.applied == [("approve", str(change), ALICE_BY)]


def test_an_apply_that_raises_is_not_applied_and_says_so(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, change = _approve_and_reject(settings, j)
    v = decisions.receive(settings, j, _Raising(), channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    text = "not applied: change #1 is no longer waiting"
    assert (v.status, v.text, v.ok) == ("applied", text, False)
    assert _events(j, "applied")[0]["outcome"] == text and _events(j, "applied")[0]["ok"] is False


def test_an_approval_that_never_merged_opens_its_button_again(tmp_path: Path,
                                                              write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, reject, _ = _approve_and_reject(settings, j)
    v = decisions.receive(settings, j, _WaitsAgain(), channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    assert v.status == "applied" and v.offer is not None and v.offer.status == "open"
    assert (_status(j, _oid(approve)), _status(j, _oid(reject))) == ("open", "open")


@pytest.mark.parametrize("how", ["subject", "claim", "deleted"])
def test_a_row_changed_between_the_claim_and_the_apply_is_refused_exactly(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The push account rewrites the row after root's claim took it: nothing is applied, and
    the refusal names what changed (or that the claim is no longer ours)."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, change = _approve_and_reject(settings, j)
    oid = _oid(approve)
    claim = decisions_store.claim_by_tap

    def claim_then_rewrite(*a: Any, **k: Any) -> tuple[bool, bool]:
        got = claim(*a, **k)
        sql = {"subject": "UPDATE decision_offers SET subject = 'ffff' WHERE id = ?",
               "claim": "UPDATE decision_offers SET claimed_by = 1 WHERE id = ?",
               "deleted": "DELETE FROM decision_offers WHERE id = ?"}[how]
        with j.tx() as c:
            c.execute(sql, (oid,))
        return got

    monkeypatch.setattr(decisions_store, "claim_by_tap", claim_then_rewrite)
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    why = ("the offer was changed in the journal after its token was checked ("
           + {"subject": "subject", "claim": "no longer our claim", "deleted": "action, target, subject, expires"}[how]
           + "): not applied")
    assert (v.status, v.text, v.ok) == ("refused", f"refused: {why}; nothing changed", False)
    assert v.offer is not None and v.offer.id == oid
    assert rec.applied == []
    refused = j.query(type_prefix="decision.refused")
    assert [(e.service, e.data) for e in refused] == [("svc", {
        "channel": None if how == "deleted" else "tg", "by": ALICE_BY, "action": "approve", "target": str(change),
        "offer": oid, "reason": why})]
    row = decisions_store.get_offer(j, oid)
    if how == "deleted":
        assert row is None
        return
    assert row is not None and (row.status, row.outcome) == ("applied", f"refused: {why}")


# --- resume: a killed run's claim is finished only with the key holder's proof ----------------

class _Killed(Exception):
    pass


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _claimed_then_killed(settings: config.Settings, j: Journal, monkeypatch: pytest.MonkeyPatch, tok: str, *,
                         channel: str = "tg", msg_id: str = "1", by: str = ALICE_BY, pid: int | None = None) -> int:
    """A tap claimed by an inbox run that was killed before its apply: the row stays applying
    under the run's pid (dead, or `pid`)."""
    def killed(*_a: Any, **_k: Any) -> decisions.Verdict:
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(decisions, "_apply", killed)
        with pytest.raises(_Killed):
            decisions.receive(settings, j, _Recorder(), channel=channel, msg_id=msg_id, token=tok, by=by)
    with j.tx() as c:
        c.execute("UPDATE decision_offers SET claimed_by = ? WHERE id = ?",
                  (pid if pid is not None else _dead_pid(), _oid(tok)))
    assert _status(j, _oid(tok)) == "applying"
    return _oid(tok)


@pytest.mark.parametrize("channel, msg_id, by", [("tg", "1", ALICE_BY), ("", "", "")],
                         ids=["a-tap", "a-tap-with-empty-names"])
def test_a_genuine_claim_of_a_killed_run_is_applied_by_the_next(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch,
        channel: str, msg_id: str, by: str) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, change = _approve_and_reject(settings, j)
    oid = _claimed_then_killed(settings, j, monkeypatch, approve, channel=channel, msg_id=msg_id, by=by)
    rec = _Recorder()
    out = decisions.resume(settings, j, rec)
    text = f"approve {change} by {by or '?'}"
    assert [(v.status, v.text, v.ok, v.offer.id if v.offer else None) for v in out] == [("applied", text, True, oid)]
    assert rec.applied == [("approve", str(change), by or "?")] and rec.asked == [oid]
    assert _status(j, oid) == "applied" and decisions.resume(settings, j, rec) == []


def test_a_claim_still_held_by_a_live_run_is_left_alone_and_the_next_one_resumed(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    first, _, _ = _approve_and_reject(settings, j)
    second, _, change2 = _approve_and_reject(settings, j)
    live = _claimed_then_killed(settings, j, monkeypatch, first, msg_id="1", pid=os.getpid())
    gone = _claimed_then_killed(settings, j, monkeypatch, second, msg_id="2")
    assert live < gone  # resume takes them in this order
    rec = _Recorder()
    out = decisions.resume(settings, j, rec)
    assert [(v.status, v.offer.id if v.offer else None) for v in out] == [("applied", gone)]
    assert rec.applied == [("approve", str(change2), ALICE_BY)]
    assert (_status(j, live), _status(j, gone)) == ("applying", "applied")


@pytest.mark.parametrize("proof", ["none", "made-up", "another-taps"])
def test_a_claim_no_tap_made_is_refused_and_opened_again_and_the_next_one_resumed(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, proof: str) -> None:
    """The push account writes the journal: an `applying` row under a dead pid, written by hand
    (with no proof, a made-up one, or the proof of another tap), never makes root decide."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    forged_tok, _, change = _approve_and_reject(settings, j)
    genuine_tok, _, change2 = _approve_and_reject(settings, j)
    forged = _oid(forged_tok)
    genuine = _claimed_then_killed(settings, j, monkeypatch, genuine_tok, msg_id="2")
    row = decisions_store.get_offer(j, genuine)
    assert row is not None and row.proof
    value = {"none": None, "made-up": "A" * 43, "another-taps": row.proof}[proof]
    with j.tx() as c:
        c.execute("UPDATE decision_offers SET status = 'applying', claimed_by = ?, channel = 'tg', tap = '9', "
                  "decided_by = 'mallory', proof = ? WHERE id = ?", (_dead_pid(), value, forged))
    rec = _Recorder()
    out = decisions.resume(settings, j, rec)
    why = "a claim no tap made (no valid proof in the journal): not applied"
    assert [(v.status, v.text, v.ok, v.offer.id if v.offer else None) for v in out] == [
        ("refused", f"refused: {why}; nothing changed", False, forged), ("applied", f"approve {change2} by {ALICE_BY}",
                                                                        True, genuine)]
    assert rec.applied == [("approve", str(change2), ALICE_BY)]
    refused = j.query(type_prefix="decision.refused")
    assert [(e.service, e.data) for e in refused] == [("svc", {
        "channel": "tg", "by": "mallory", "action": "approve", "target": str(change), "offer": forged,
        "reason": why})]
    back = decisions_store.get_offer(j, forged)
    assert back is not None and (back.status, back.outcome, back.decided_by) == ("open", f"refused: {why}", None)


def test_a_claim_whose_change_no_longer_waits_is_recorded_not_applied(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, _ = _approve_and_reject(settings, j)
    oid = _claimed_then_killed(settings, j, monkeypatch, approve)

    class Merged(_Recorder):
        def still_waits(self, found: decisions.Offer) -> str | None:
            super().still_waits(found)
            return "merged already"

    rec = Merged()
    out = decisions.resume(settings, j, rec)
    text = "applied before an interruption (merged already)"
    assert [(v.status, v.text, v.offer.outcome if v.offer else None) for v in out] == [("applied", text, text)]
    assert rec.applied == [] and rec.asked == [oid] and _status(j, oid) == "applied"


def test_a_freeze_without_an_id_or_event_binds_no_unfreeze() -> None:
    assert decisions.freeze_subject({"reason": "an old freeze record"}) is None
    assert decisions.freeze_subject({"reason": "r", "freeze_id": "", "frozen_event": None}) is None


# --- doctor: the set-ups where a tap could not count, or could be made by the wrong one --------

def test_setup_problems_names_each_channel_and_an_exposed_key_exactly(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    state = tmp_path / "state"
    good = config.load(write_config(
        f'[opskit]\nstate_dir = "{state}"\nnotify = ["tg", "nt"]\n'
        f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\nallowed_users = [{ALICE}]\n'
        '[notify.nt]\ntype = "ntfy"\nurl = "http://127.0.0.1:9/ntfy"\ntoken = "tk_read"\n'
        'reply_url = "http://127.0.0.1:9/ntfy/replies"\nreply_token = "tk_write"\n'))
    assert decisions.setup_problems(good) == []  # no key yet: nothing exposed either
    key = state / decisions.KEY_FILE
    Journal(good.state_dir)  # the state dir, as every command makes it
    decisions.secret(good.state_dir)
    assert decisions.setup_problems(good) == []  # the key as secret() made it: 0600, ours
    bad = config.load(write_config(
        f'[opskit]\nstate_dir = "{state}"\nnotify = ["tg", "nt", "plain"]\n'
        f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\n'
        '[notify.nt]\ntype = "ntfy"\nurl = "http://127.0.0.1:9/ntfy"\n'
        'reply_url = "http://127.0.0.1:9/ntfy/replies"\n'
        '[notify.plain]\ntype = "ntfy"\nurl = "http://127.0.0.1:9/ntfy"\n'))
    key.chmod(0o640)
    assert decisions.setup_problems(bad) == [
        ("notify.tg", "allowed_users is empty: every tap is refused",
         "add allowed_users = [USER_ID] (the from.id of each person who may decide)"),
        ("notify.nt", "reply_url without reply_token: the buttons publish anonymously, "
         "so the reply topic must be writable by anyone",
         "give the phone a write-only token for the reply topic (README: approve from your phone)"),
        ("notify.nt", "no token: opskit reads the reply topic anonymously",
         "set token to a credential that can read the reply topic"),
        ("decision.key", f"{key} can be read by group {key.stat().st_gid}: whoever reads it can approve any change",
         f"`chmod 600 {key}` (or delete it to make a new one)"),
    ]
    key.chmod(0o604)
    assert decisions.setup_problems(bad)[-1][1] == f"{key} can be read by others: whoever reads it can approve any change"
    key.unlink()
    key.symlink_to(tmp_path / "elsewhere")
    assert decisions.setup_problems(bad)[-1][1] == (f"{key} is not a plain file of its own (a link or a special file): "
                                                    "whoever reads it can approve any change")


# --- offering and signing: what a button is bound to, and which rows root refuses to sign -----

T0 = dt.datetime(2026, 4, 26, 3, 53, 0, tzinfo=dt.timezone.utc)


def _services(tmp_path: Path, write_config: Callable[[str], Path]) -> config.Settings:
    """Buttons come back only through tg, which only svc notifies (the default channel is a
    plain ntfy topic without a reply topic); svc's approval_timeout is ten minutes."""
    return config.load(write_config(
        f'[opskit]\nstate_dir = "{tmp_path / "state"}"\nnotify = ["plain"]\n'
        '[notify.plain]\ntype = "ntfy"\nurl = "http://127.0.0.1:9/ntfy"\n'
        f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\nallowed_users = [{ALICE}]\n'
        f'[service.svc]\nrepo = "{tmp_path / "bare.git"}"\nworktree = "{tmp_path / "wt"}"\n'
        'approval_timeout = 600\nnotify = ["tg"]\n'
        f'[service.quiet]\nrepo = "{tmp_path / "q.git"}"\nworktree = "{tmp_path / "q"}"\n'))


def _row(j: Journal, oid: int) -> tuple[Any, ...]:
    r = decisions_store.get_offer(j, oid)
    assert r is not None
    return (r.action, r.target, r.subject, r.service, r.created, r.expires, r.status)


def test_an_offer_is_bound_to_its_subject_and_lives_its_services_approval_timeout(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _services(tmp_path, write_config)
    j = Journal(settings.state_dir)
    clock = FakeClock(T0)
    sha = "abc1234def" * 4
    parked = approvals_store.park(j, service="svc", chain="c1", branch="feature/x", sha=sha, base=None,
                                  cause="review asked for a human")
    j.kv_set("frozen", "svc", {"reason": "r", "event_id": None, "freeze_id": "f00d", "frozen_event": 77})
    change = str(parked.id)
    got = decisions.offer(settings, j, "svc", [("approve", change), ("reject", change), ("freeze", "svc"),
                                               ("unfreeze", "svc"), ("approve", "999")], clock=clock)
    assert [a.label for a in got] == ["Approve", "Reject", "Freeze", "Unfreeze", "Approve"]
    ids = [int(a.token.removeprefix(decisions.UNSIGNED)) for a in got]
    assert [a.token for a in got] == [f"{decisions.UNSIGNED}{i}" for i in ids]
    expires = int(T0.timestamp()) + 600  # svc's approval_timeout, not the default day
    assert [_row(j, i) for i in ids] == [
        ("approve", change, sha, "svc", iso(T0), expires, "open"),
        ("reject", change, sha, "svc", iso(T0), expires, "open"),
        ("freeze", "svc", None, "svc", iso(T0), expires, "open"),  # a freeze is bound to no earlier one
        ("unfreeze", "svc", "77", "svc", iso(T0), expires, "open"),  # the freeze it lifts
        ("approve", "999", None, "svc", iso(T0), expires, "open")]  # no such change: bound to nothing
    assert decisions.subject_of(j, "approve", "999") is None
    assert decisions.subject_of(j, "freeze", "svc") is None
    assert decisions.subject_of(j, "unfreeze", "svc") == "77"
    (short,) = decisions.offer(settings, j, "svc", [("freeze", "svc")], ttl=60, clock=clock)
    assert _row(j, int(short.token.removeprefix(decisions.UNSIGNED)))[5] == int(T0.timestamp()) + 60
    # quiet notifies only the plain topic, which carries no tap back: no buttons, no rows
    assert decisions.offer(settings, j, "quiet", [("freeze", "quiet")], clock=clock) == []
    assert decisions.offer(settings, j, "ghost", [("freeze", "ghost")], clock=clock) == []
    with j.tx() as c:
        assert c.execute("SELECT COUNT(*) FROM decision_offers").fetchone()[0] == 6
    # a service the config does not name lives the default day
    other = _settings(tmp_path / "other", write_config)
    oj = Journal(other.state_dir)
    (ghost,) = decisions.offer(other, oj, "ghost", [("freeze", "ghost")], clock=clock)
    assert _row(oj, int(ghost.token.removeprefix(decisions.UNSIGNED)))[5] == int(T0.timestamp()) + 24 * 3600


def test_root_signs_only_rows_opskit_could_have_made_and_says_why_exactly(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    """Every reason unsignable() gives, at its boundary: the expiry itself, the service's
    approval_timeout plus the slack, a service the config does not name (the default day)."""
    settings = _services(tmp_path, write_config)
    j = Journal(settings.state_dir)
    t0 = int(T0.timestamp())
    slack = decisions.LIFE_SLACK

    def add(action: str, target: str, service: str, expires: int, created: str = iso(T0)) -> int:
        (oid,) = decisions_store.insert_offers(j, service, [(action, target, None)], created, expires)
        return oid

    longest = add("freeze", "svc", "svc", t0 + 600 + slack)
    too_long = add("freeze", "svc", "svc", t0 + 600 + slack + 1)
    day = add("freeze", "ghost", "ghost", t0 + 24 * 3600 + slack)
    day_too_long = add("freeze", "ghost", "ghost", t0 + 24 * 3600 + slack + 1)
    ends_now = add("unfreeze", "svc", "svc", t0 + 300)
    unknown = add("deploy", "svc", "svc", t0 + 300)
    spent = add("freeze", "svc", "svc", t0 + 300)
    undated = add("freeze", "svc", "svc", t0 + 400, created="yesterday")
    no_change = add("approve", "999", "svc", t0 + 400)
    odd = add("freeze", "svc; http, Rollback, x", "svc", t0 + 400)
    cut = add("freeze", "a" * 32 + " bbbbbb", "svc", t0 + 400)
    with j.tx() as c:
        c.execute("UPDATE decision_offers SET status = 'applied' WHERE id = ?", (spent,))
    clock = FakeClock(T0 + dt.timedelta(seconds=300))
    logs = Action("Logs", "https://example.invalid/logs")
    queued = [logs] + [Action("Tap me", f"{decisions.UNSIGNED}{i}")
                       for i in (longest, too_long, day, day_too_long, ends_now, unknown, spent, undated)] + [
        Action("x", f"{decisions.UNSIGNED}abc"), Action("x", f"{decisions.UNSIGNED}99999"),
        Action("x", f"{decisions.UNSIGNED}{no_change}"), logs, Action("x", f"{decisions.UNSIGNED}{odd}"),
        Action("x", f"{decisions.UNSIGNED}{cut}")]
    signed = decisions.sign(settings, j, queued, clock=clock)
    key = decisions.secret(settings.state_dir)

    def tok(oid: int) -> str:
        found = decisions_store.get_offer(j, oid)
        assert found is not None
        return decisions.token(key, found)

    assert signed == (logs, Action("Freeze svc", tok(longest)), Action("Freeze ghost", tok(day)),
                      Action("Approve #999", tok(no_change)), logs,
                      Action("Freeze svc http Rollback x", tok(odd)),
                      Action("Freeze " + "a" * 32, tok(cut)))  # cut at 40 on a space, the space dropped
    refused = j.query(type_prefix="decision.refused")
    at = iso(T0 + dt.timedelta(seconds=300))
    assert [(e.service, e.data) for e in refused] == [(svc, {
        "action": action, "target": target, "offer": oid, "reason": f"button not signed: {why}"})
        for svc, action, target, oid, why in [
            ("svc", "freeze", "svc", too_long, f"offer {too_long} expires {600 + slack + 1}s after it was made, "
             "more than svc's approval_timeout (600s): not an offer opskit made"),
            ("ghost", "freeze", "ghost", day_too_long, f"offer {day_too_long} expires {24 * 3600 + slack + 1}s "
             "after it was made, more than ghost's approval_timeout (86400s): not an offer opskit made"),
            ("svc", "unfreeze", "svc", ends_now, f"offer {ends_now} expired at {at}"),
            ("svc", "deploy", "svc", unknown, "unknown action 'deploy'"),
            ("svc", "freeze", "svc", spent, f"offer {spent} is applied, not open"),
            ("svc", "freeze", "svc", undated, f"offer {undated} has no readable creation time ('yesterday')")]]
    # one second before its expiry the same row is signed
    (early,) = decisions.sign(settings, j, [Action("x", f"{decisions.UNSIGNED}{ends_now}")],
                              clock=FakeClock(T0 + dt.timedelta(seconds=299))) or ()
    assert early == Action("Unfreeze svc", tok(ends_now))


def test_a_key_that_cannot_be_used_costs_the_buttons_not_the_others(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    queued = decisions.offer(settings, j, "svc", [("freeze", "svc")])
    (settings.state_dir / decisions.KEY_FILE).chmod(0o644)  # exposed: refused in a personal dir
    logs = Action("Logs", "https://example.invalid/logs")
    assert decisions.sign(settings, j, [queued[0], logs, logs]) == (logs, logs)
    assert _events(j, "refused") == []


# --- a refused tap, a race on its record, an outcome that says nothing -------------------------

def _tap_row(j: Journal, channel: str, msg_id: str) -> tuple[Any, ...] | None:
    with j.tx() as c:
        r = c.execute("SELECT offer_id FROM decision_taps WHERE channel = ? AND msg_id = ?", (channel, msg_id)).fetchone()
    return tuple(r) if r is not None else None


def test_a_refused_tap_is_recorded_with_its_offer(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, reject, _ = _approve_and_reject(settings, j)
    forged = _forged_tokens(settings, j, approve, reject)["one character short"]
    assert decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="1", token=forged, by=ALICE_BY).status \
        == "refused"
    assert decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="2", token=approve, by=ALICE_BY,
                             refuse="not allowed").status == "refused"
    assert decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="3", token=approve, by=ALICE_BY,
                             clock=FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))).status \
        == "refused"
    # a bad signature names no offer; an expired genuine token does
    assert (_tap_row(j, "tg", "1"), _tap_row(j, "tg", "2"), _tap_row(j, "tg", "3")) == ((None,), (None,),
                                                                                        (_oid(approve),))


def test_a_tap_another_run_decided_between_the_seen_check_and_the_refusal_is_seen_with_its_outcome(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run 1 finds the tap unseen; before it checks the token, run 2 reads the same tap and
    applies it. Run 1 then finds the offer decided, and its refusal finds the tap recorded: it
    answers as a re-read would, with run 2's outcome (the tapper was not told yet)."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, change = _approve_and_reject(settings, j)
    rec = _Recorder()
    tap_seen = decisions_store.tap_seen
    other: list[decisions.Verdict] = []
    started: list[str] = []

    def hooked(journal: Journal, channel: str, msg_id: str) -> bool:
        got = tap_seen(journal, channel, msg_id)
        if not started:
            started.append(msg_id)
            other.append(decisions.receive(settings, Journal(settings.state_dir), rec, channel=channel,
                                           msg_id=msg_id, token=approve, by=ALICE_BY))
        return got

    monkeypatch.setattr(decisions_store, "tap_seen", hooked)
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="5", token=approve, by=ALICE_BY)
    text = f"approve {change} by {ALICE_BY}"
    assert [(o.status, o.text) for o in other] == [("applied", text)]
    assert (v.status, v.text, v.ok) == ("seen", text, True)
    assert v.offer is not None and v.offer.id == _oid(approve)
    assert rec.applied == [("approve", str(change), ALICE_BY)]
    assert _events(j, "refused") == []  # the tap was not refused: it was decided


class _SaysNothing(_Recorder):
    """An apply whose outcome is empty, and that records which offer waits_again was asked about."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[tuple[int, str]] = []

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        super().apply(found, by)
        return "", True

    def waits_again(self, found: decisions.Offer) -> bool:
        self.waited.append((found.id, found.action))
        return False


def test_an_empty_outcome_is_told_empty_and_waits_again_is_asked_of_the_applied_offer(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, _ = _approve_and_reject(settings, j)
    rec = _SaysNothing()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    assert (v.status, v.text, v.ok) == ("applied", "", True) and rec.waited == [(_oid(approve), "approve")]
    again = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=approve, by=ALICE_BY)
    assert (again.status, again.text) == ("seen", "")
    assert again.offer is not None and again.offer.id == _oid(approve)


# --- resume: several dead claims, the reclaim's time, a reclaim another run won ----------------

def test_every_dead_claim_is_resumed_in_turn_and_each_reclaim_is_timed(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    toks = [_approve_and_reject(settings, j) for _ in range(3)]
    ids = [_claimed_then_killed(settings, j, monkeypatch, t[0], msg_id=str(n)) for n, t in enumerate(toks)]
    later = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(minutes=5)
    rec = _Recorder()
    out = decisions.resume(settings, j, rec, clock=FakeClock(later))
    assert [(v.status, v.offer.id if v.offer else None) for v in out] == [("applied", i) for i in ids]
    assert rec.applied == [("approve", str(t[2]), ALICE_BY) for t in toks]
    claimed_at = [decisions_store.get_offer(j, i) for i in ids]
    assert [r.claimed_at if r else None for r in claimed_at] == [iso(later)] * 3


def test_a_reclaim_another_run_won_is_left_to_it_and_the_next_claim_resumed(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    first, _, _ = _approve_and_reject(settings, j)
    second, _, change2 = _approve_and_reject(settings, j)
    won = _claimed_then_killed(settings, j, monkeypatch, first, msg_id="1")
    ours = _claimed_then_killed(settings, j, monkeypatch, second, msg_id="2")
    reclaim = decisions_store.reclaim

    def another_run_first(journal: Journal, found: decisions.Offer, now: str) -> bool:
        if found.id == won:  # another inbox run (this live pid) reclaimed it a moment before us
            with j.tx() as c:
                c.execute("UPDATE decision_offers SET claimed_by = ? WHERE id = ?", (os.getppid(), won))
        return reclaim(journal, found, now)

    monkeypatch.setattr(decisions_store, "reclaim", another_run_first)
    rec = _Recorder()
    out = decisions.resume(settings, j, rec)
    assert [(v.status, v.offer.id if v.offer else None) for v in out] == [("applied", ours)]
    assert rec.applied == [("approve", str(change2), ALICE_BY)] and rec.asked == [ours]
    row = decisions_store.get_offer(j, won)
    assert row is not None and (row.status, row.claimed_by) == ("applying", os.getppid())


# --- the key file vanishing under secret() -------------------------------------------------------

def test_a_key_deleted_by_someone_else_before_its_replacement_is_made_anew(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """In a shared state dir root replaces a key that is not a plain file of its own; if the
    group member who planted or moved it deletes it between root's open and its unlink, the
    replacement is still made."""
    settings = _settings(tmp_path, write_config)
    Journal(settings.state_dir)
    os.chmod(settings.state_dir, 0o2770)  # shared: setgid
    key = settings.state_dir / decisions.KEY_FILE
    old = decisions.secret(settings.state_dir)
    open_private = decisions.statefs.open_private
    opened: list[int] = []

    def open_then_vanish(path: Path, state_dir: Path) -> int:
        got = open_private(path, state_dir)
        if not opened:
            os.unlink(path)  # the other process, after our open: the fd's file has no name left
        opened.append(got)
        return got

    monkeypatch.setattr(decisions.statefs, "open_private", open_then_vanish)
    made = decisions.secret(settings.state_dir)
    assert len(made) == 32 and made != old and key.read_bytes() == made and len(opened) == 2
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == 0


# --- receive: each refusal and each event exactly ----------------------------------------------

def test_a_refused_tap_names_its_offer_in_the_event_and_the_verdict(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, change = _approve_and_reject(settings, j)
    late = FakeClock(dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    v = decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="1", token=approve, by=ALICE_BY, clock=late)
    found = decisions_store.get_offer(j, _oid(approve))
    assert found is not None and v.offer == found and (v.status, v.ok) == ("refused", False)
    why = f"expired token (at {iso(dt.datetime.fromtimestamp(found.expires, dt.timezone.utc))})"
    assert v.text == f"refused: {why}; nothing changed"
    # a reason the channel found, and an empty one (nothing to say is still a refusal)
    nobody = decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="2", token=approve, by=ALICE_BY,
                               refuse="")
    assert (nobody.status, nobody.text, nobody.offer) == ("refused", "refused: refused; nothing changed", None)
    refused = j.query(type_prefix="decision.refused")
    assert [(e.service, e.data) for e in refused] == [
        ("svc", {"channel": "tg", "by": ALICE_BY, "reason": why, "action": "approve", "target": str(change),
                 "offer": _oid(approve)}),
        (None, {"channel": "tg", "by": ALICE_BY, "reason": "refused"})]


def test_the_other_button_of_a_decided_change_is_refused_as_decided_by_nobody_named(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, reject, _ = _approve_and_reject(settings, j)
    reply = {"chat_id": 1, "message_id": 5}
    assert decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="1", token=approve, by=ALICE_BY,
                             reply=reply).status == "applied"
    row = decisions_store.get_offer(j, _oid(approve))
    assert row is not None and row.reply == json.dumps(reply)  # where the tapper is answered
    v = decisions.receive(settings, j, _Recorder(), channel="tg", msg_id="2", token=reject, by=ALICE_BY)
    assert (v.status, v.text) == ("refused", "refused: already decided; nothing changed")  # superseded, by no tap


@pytest.mark.parametrize("how", ["rewritten", "deleted"])
def test_a_row_changed_between_the_check_and_the_claim_is_refused_as_used(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """The claim takes the row only while it says what was checked: rewritten (or deleted)
    after the check, it is not claimed, and nobody is named as having used it."""
    settings, tok = _one_offer(tmp_path, write_config)
    j = Journal(settings.state_dir)
    check = decisions.check

    def check_then_rewrite(*a: Any, **k: Any) -> tuple[decisions.Offer | None, str | None]:
        got = check(*a, **k)
        sql = {"rewritten": "UPDATE decision_offers SET target = 'other' WHERE id = ?",
               "deleted": "DELETE FROM decision_offers WHERE id = ?"}[how]
        with j.tx() as c:
            c.execute(sql, (_oid(tok),))
        return got

    monkeypatch.setattr(decisions, "check", check_then_rewrite)
    rec = _Recorder()
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="1", token=tok, by=ALICE_BY)
    assert (v.status, v.text, v.ok) == ("refused", "already decided", False)
    assert v.offer is not None and (v.offer.id, v.offer.target) == (_oid(tok), "svc")
    assert rec.applied == []
    refused = j.query(type_prefix="decision.refused")
    assert [(e.service, e.data) for e in refused] == [("svc", {
        "channel": "tg", "by": ALICE_BY, "action": "freeze", "target": "svc", "reason": "token already used"})]


def test_a_tap_another_run_claimed_between_the_check_and_the_claim_is_seen_with_its_outcome(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, tok = _one_offer(tmp_path, write_config)
    j = Journal(settings.state_dir)
    rec = _Recorder()
    claim = decisions_store.claim_by_tap
    other: list[decisions.Verdict] = []

    def another_run_first(journal: Journal, found: decisions.Offer, **kw: Any) -> tuple[bool, bool]:
        if not other:
            other.append(decisions.Verdict("?", "?"))
            other[0] = decisions.receive(settings, Journal(settings.state_dir), rec, channel=kw["channel"],
                                         msg_id=kw["msg_id"], token=tok, by=kw["by"])
        return claim(journal, found, **kw)

    monkeypatch.setattr(decisions_store, "claim_by_tap", another_run_first)
    v = decisions.receive(settings, j, rec, channel="tg", msg_id="3", token=tok, by=ALICE_BY)
    text = f"freeze svc by {ALICE_BY}"
    assert [(o.status, o.text) for o in other] == [("applied", text)]
    assert (v.status, v.text) == ("seen", text) and v.offer is not None and v.offer.id == _oid(tok)
    assert rec.applied == [("freeze", "svc", ALICE_BY)]
    received = j.query(type_prefix="decision.received")
    assert [(e.service, e.data) for e in received] == [("svc", {
        "channel": "tg", "by": ALICE_BY, "action": "freeze", "target": "svc", "offer": _oid(tok)})]


# --- check: every way a string is not a genuine token ------------------------------------------

def test_check_says_exactly_why_a_string_is_no_token(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings, tok = _one_offer(tmp_path, write_config)
    j = Journal(settings.state_dir)
    ver, oid, exp, mac = tok.split(".")
    found = decisions_store.get_offer(j, int(oid))
    assert found is not None
    no = "not an opskit decision token"
    for text, want in [(f"2.{oid}.{exp}.{mac}", no), (f"1.{oid}.{exp}", no), (f"{tok}.x", no),
                       (f"1.x{oid}.{exp}.{mac}", no), (f"1.{oid}.!.{mac}", no),
                       (f"1.99999.{exp}.{mac}", "bad token (no such offer)")]:
        assert decisions.check(settings, j, text) == (None, want), text
    at = dt.datetime.fromtimestamp(found.expires, dt.timezone.utc)
    assert decisions.check(settings, j, tok, FakeClock(at)) == (found, f"expired token (at {iso(at)})")
    assert decisions.check(settings, j, f"  {tok}\n", FakeClock(at - dt.timedelta(seconds=1))) == (found, None)


def test_a_token_is_the_documented_hmac_of_its_offer(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    """`1.<offer>.<expiry base 36>.<HMAC-SHA256 over offer|action|target|expiry[|subject], 16 bytes,
    unpadded url-safe base64>`: tokens already on phones keep checking only if this never drifts;
    an offer without a subject (a freeze, or one made before subjects) signs no subject part."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, _ = _approve_and_reject(settings, j)
    (freeze,) = decisions.sign(settings, j, decisions.offer(settings, j, "svc", [("freeze", "svc")])) or ()
    key = decisions.secret(settings.state_dir)
    for tok in (approve, freeze.token):
        row = decisions_store.get_offer(j, _oid(tok))
        assert row is not None
        msg = f"{row.id}|{row.action}|{row.target}|{row.expires}" + (f"|{row.subject}" if row.subject else "")
        mac = base64.urlsafe_b64encode(hmac.new(key, msg.encode(), hashlib.sha256).digest()[:16]).decode()
        ver, oid, exp, sig = tok.split(".")
        assert (ver, oid, int(exp, 36), sig) == ("1", str(row.id), row.expires, mac.rstrip("="))


# --- the key: its refusals, and a key that keeps changing --------------------------------------

def test_an_exposed_key_in_a_personal_dir_is_refused_naming_the_file(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    settings = _settings(tmp_path, write_config)
    Journal(settings.state_dir)
    key = settings.state_dir / decisions.KEY_FILE
    decisions.secret(settings.state_dir)
    key.chmod(0o604)
    with pytest.raises(decisions.UsageError) as e:
        decisions.secret(settings.state_dir)
    assert str(e.value) == f"{key} can be read by others; `chmod 600 {key}` (or delete it to make a new one)"


def test_a_key_replaced_under_root_at_every_try_is_refused_after_three(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(tmp_path, write_config)
    Journal(settings.state_dir)
    os.chmod(settings.state_dir, 0o2770)  # shared: root replaces a key that is not its own
    key = settings.state_dir / decisions.KEY_FILE
    decisions.secret(settings.state_dir)
    open_private = decisions.statefs.open_private
    opened: list[int] = []

    def open_then_vanish(path: Path, state_dir: Path) -> int:
        got = open_private(path, state_dir)
        os.unlink(path)  # another account moves it away each time
        opened.append(got)
        return got

    monkeypatch.setattr(decisions.statefs, "open_private", open_then_vanish)
    with pytest.raises(decisions.UsageError) as e:
        decisions.secret(settings.state_dir)
    assert str(e.value) == (f"{key} keeps changing under us (another account replaces it); "
                            "see who writes the state dir, then delete it")
    assert len(opened) == 3


def _as_account(uid: int, gid: int, work: Callable[[], object]) -> object:
    """work() in a forked child running as uid:gid (the trampolines of a mutation run are in
    the fork too); its result or the text of what it raised comes back through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            try:
                out: object = ("ok", work())
            except BaseException as e:
                out = ("raised", f"{type(e).__name__}: {e}")
            os.write(w, json.dumps(out, default=repr).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        got = fh.read()
    os.waitpid(pid, 0)
    return json.loads(got)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the tests make a throwaway account and become it")
def test_an_account_holds_the_key_of_its_own_dir_and_only_root_that_of_a_shared_one(
        tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    from tests.support.accounts import throwaway_account

    def load(state: Path, name: str) -> config.Settings:
        return config.load(write_config(
            f'[opskit]\nstate_dir = "{state}"\nnotify = ["tg"]\n[notify.tg]\ntype = "telegram"\n'
            f'token = "{BOT}"\nchat_id = "1"\nallowed_users = [{ALICE}]\n', name))

    top = Path(tempfile.mkdtemp(prefix="opskit-decisions-"))  # tmp_path's parents are root's alone (0700)
    top.chmod(0o755)
    with throwaway_account("opskdec") as pw, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, top)
        own = top / "own"
        own.mkdir()
        os.chown(own, pw.pw_uid, pw.pw_gid)
        settings = load(own / "state", "own.toml")

        def personal() -> object:
            j = Journal(settings.state_dir)
            queued = decisions.offer(settings, j, "svc", [("freeze", "svc")])
            signed = decisions.sign(settings, j, queued)
            st = os.stat(settings.state_dir / decisions.KEY_FILE)
            return [decisions.holds_key(settings.state_dir), [a.label for a in signed or ()],
                    st.st_uid, oct(stat.S_IMODE(st.st_mode))]

        assert _as_account(pw.pw_uid, pw.pw_gid, personal) == ["ok", [True, ["Freeze svc"], pw.pw_uid, "0o600"]]
        shared = top / "shared"
        shared.mkdir()
        in_shared = load(shared, "shared.toml")
        os.chown(shared, 0, pw.pw_gid)
        shared.chmod(0o2770)
        key = shared / decisions.KEY_FILE

        def member() -> object:
            refused = None
            try:
                decisions.secret(shared)
            except decisions.UsageError as e:
                refused = str(e)
            queued = [Action("Freeze", f"{decisions.UNSIGNED}1")]
            return [decisions.holds_key(shared), refused, decisions.sign(in_shared, None, queued),  # type: ignore[arg-type]
                    os.path.lexists(key)]

        assert _as_account(pw.pw_uid, pw.pw_gid, member) == ["ok", [
            False, f"{key}: in a shared state dir the decision key is root's alone (account {pw.pw_name} may not "
            "sign decisions); root's `opskit inbox` and `notify --flush` (cron.d) use it", None, False]]
        # root (its cron's inbox and notify --flush) signs in the shared dir; the key is root's
        # (made here, in the test's own process: the calls a mutation run records as reached)
        j = Journal(shared)
        signed = decisions.sign(in_shared, j, decisions.offer(in_shared, j, "svc", [("freeze", "svc")]))
        assert decisions.holds_key(shared) and [a.label for a in signed or ()] == ["Freeze svc"]
        assert (key.stat().st_uid, stat.S_IMODE(key.stat().st_mode)) == (0, 0o600)


def test_a_key_cut_short_is_replaced_by_a_whole_one(tmp_path: Path, write_config: Callable[[str], Path]) -> None:
    """A crash between the key's create and its write leaves it short: it is made anew."""
    settings = _settings(tmp_path, write_config)
    Journal(settings.state_dir)
    key = settings.state_dir / decisions.KEY_FILE
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    made = decisions.secret(settings.state_dir)
    assert len(made) == 32 and key.read_bytes() == made


@pytest.mark.parametrize("shared", [False, True], ids=["personal", "shared"])
def test_a_key_of_another_owner_is_named_with_whose_it_should_be(
        tmp_path: Path, write_config: Callable[[str], Path], shared: bool) -> None:
    settings = _settings(tmp_path, write_config)
    Journal(settings.state_dir)
    if shared:
        os.chmod(settings.state_dir, 0o2770)
    key = settings.state_dir / decisions.KEY_FILE
    decisions.secret(settings.state_dir)
    os.chown(key, 1, 0)  # neither root's nor (as root runs this) the account's own
    fix = (f"delete it: root's next `opskit inbox` makes a new one, 0600 root (`rm {key}`)" if shared
           else f"`chmod 600 {key}` (or delete it to make a new one)")
    assert decisions.key_exposed(key, settings.state_dir) == (
        f"{key} belongs to uid 1, not to " + ("root" if shared else "you"), fix)


def test_a_claims_proof_is_the_hmac_of_the_tap_it_claims_for(
        tmp_path: Path, write_config: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The proof outlives the run that wrote it (a killed run's claim is resumed by the next,
    perhaps of a newer opskit): HMAC-SHA256 over claim|offer|action|target|subject|expiry|channel|tap|by,
    unpadded url-safe base64."""
    settings = _settings(tmp_path, write_config)
    j = Journal(settings.state_dir)
    approve, _, _ = _approve_and_reject(settings, j)
    oid = _claimed_then_killed(settings, j, monkeypatch, approve, msg_id="12")
    row = decisions_store.get_offer(j, oid)
    assert row is not None
    msg = f"claim|{oid}|approve|{row.target}|{row.subject}|{row.expires}|tg|12|{ALICE_BY}"
    digest = hmac.new(decisions.secret(settings.state_dir), msg.encode(), hashlib.sha256).digest()
    assert row.proof == base64.urlsafe_b64encode(digest).decode().rstrip("=") and len(row.proof) == 43
