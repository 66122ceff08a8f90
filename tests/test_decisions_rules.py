"""The decision rules that guard a tap (docs/ARCHITECTURE.md, who may do what), each pinned by a
test that fails when the rule is broken: the token's signature is checked in full, a Telegram
channel without allowed_users lets nobody decide, and an offer is claimed once by the claim's
own compare-and-swap, not by the check that came before it. Races are forced by hooks, never
left to timing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from opskit.base import config
from opskit.chain import inbox
from opskit.notify import decisions
from opskit.sandbox.receiver import Receiver
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
