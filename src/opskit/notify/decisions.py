"""Decisions that come back from a phone: signed one-use tokens, and applying them once.

A button (Approve, Reject, Freeze, Unfreeze) carries a token `1.<offer>.<expiry>.<mac>`:
the offer is a row here (what the button does to what), the mac an HMAC-SHA256 over
(offer, action, target, expiry) keyed by `decision.key` in the state dir (32 random bytes,
0600, created on first use, never printed). Nobody without that file can make a token, and
a token is worth one decision: it expires with the service's approval_timeout and is used
up by its first valid tap. ~40 bytes: it fits Telegram's 64-byte callback_data.

Exactly once, across overlapping `opskit inbox` runs and kills: a tap is identified by
(channel, message id) — the Telegram update id, the ntfy message id. Recording it as seen
and claiming its offer (open → applying, with our pid) happen in one transaction, so a
tap read twice (a second run, a run killed before it stored its offset) is skipped, and
two taps of one offer cannot both claim it. The apply goes through the same code as the
CLI (chain/feature.approve, chain/approvals.reject, deploy/freeze.unfreeze), whose own compare-and-swap
on the approval row refuses a second merge. A run killed between its claim and the end of
its apply leaves the offer `applying` under a dead pid: the next run resumes it — applies
it if the change still waits, else records what already happened.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from opskit.base import statefs
from opskit.base.clock import SYSTEM, Clock, iso, parse_iso
from opskit.base.config import Settings
from opskit.base.errors import OpsError, UsageError
from opskit.base.proc import pid_alive
from opskit.notify.base import Action
from opskit.storage import approvals as approvals_store
from opskit.storage import decisions as store
from opskit.storage.decisions import SCHEMA, Offer
from opskit.storage.journal import Journal

ACTIONS = ("approve", "reject", "freeze", "unfreeze")
LABELS = {"approve": "Approve", "reject": "Reject", "freeze": "Freeze", "unfreeze": "Unfreeze"}
KEY_FILE = "decision.key"
MAC_BYTES = 16
UNSIGNED = "offer:"  # a queued button: the offer it is for, signed when the message is sent
LABEL_MAX = 40  # a button's text: short for Telegram's inline keyboard and ntfy's action header
LIFE_SLACK = 120  # seconds an offer's expiry may exceed its creation plus approval_timeout
# --- the key and the tokens -----------------------------------------------------------------

def holds_key(state_dir: Path) -> bool:
    """May this process make and check tokens? In a shared state dir only root (its cron's
    `opskit inbox` and `notify --flush` sign and apply): the push account writes the journal and
    the messages, and a key it could read would let it approve its own change (docs/ARCHITECTURE.md, who may do what). A
    personal state dir has one account, which holds it."""
    return os.geteuid() == 0 or not statefs.is_shared(state_dir)


def secret(state_dir: Path) -> bytes:
    """The HMAC key, created on first use, 0600 for its owner alone: root:root in a shared state
    dir. Never read through a link. A key another account could have read or planted is refused
    in a personal dir (with the fix); in a shared dir root replaces it (its tokens are void),
    since every member of the group can rename or plant files there."""
    path = Path(state_dir) / KEY_FILE
    if not holds_key(state_dir):
        raise UsageError(f"{path}: in a shared state dir the decision key is root's alone (account {_me()} "
                         "may not sign decisions); root's `opskit inbox` and `notify --flush` (cron.d) use it")
    shared = statefs.is_shared(state_dir)
    for _ in range(3):
        try:
            fd = statefs.open_private(path, state_dir)  # no link, one name, nobody else writes it
        except FileNotFoundError:
            _create(path, state_dir)
            continue
        except statefs.Unsafe:
            if not shared:
                raise
            _replace(path, state_dir)  # planted by a group member
            continue
        try:
            st = os.fstat(fd)
            bad = _unsafe(st, path, state_dir)
            data = b"" if bad else os.read(fd, 4096)
        finally:
            os.close(fd)
        if bad and not shared:
            raise UsageError(f"{bad[0]}; {bad[1]}")
        if bad or len(data) < 32:  # exposed or not root's (shared); or a crash between create and write
            _replace(path, state_dir)
            continue
        return data
    raise UsageError(f"{path} keeps changing under us (another account replaces it); "
                     "see who writes the state dir, then delete it")


def _me() -> str:
    from opskit.base.accounts import me  # only for this refusal

    return me()


def _create(path: Path, state_dir: Path) -> None:
    try:
        fd = statefs.create_exclusive(path, state_dir, 0o600)
    except FileExistsError:
        return  # someone made it first: the caller's next open checks whose it is
    with os.fdopen(fd, "wb") as fh:
        if os.geteuid() == 0:
            os.fchown(fh.fileno(), 0, 0)  # not the setgid state dir's group: nobody else reads it
        fh.write(secrets.token_bytes(32))
        fh.flush()
        os.fsync(fh.fileno())


def _replace(path: Path, state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # the name only: unlink never follows a link
    _create(path, state_dir)


def _unsafe(st: os.stat_result, path: Path, state_dir: Path) -> tuple[str, str] | None:
    """(what is wrong with the key file, the fix), or None: a regular file of this account's
    (root's in a shared dir), one link, that nobody else may read or write."""
    if statefs.is_shared(state_dir):
        fix = f"delete it: root's next `opskit inbox` makes a new one, 0600 root (`rm {path}`)"
        owner_ok = st.st_uid == 0
    else:
        fix = f"`chmod 600 {path}` (or delete it to make a new one)"
        owner_ok = st.st_uid == os.geteuid()
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        return f"{path} is not a plain file of its own (a link or a special file)", fix
    if not owner_ok:
        return f"{path} belongs to uid {st.st_uid}, not to " + ("root" if statefs.is_shared(state_dir) else "you"), fix
    if st.st_mode & stat.S_IRWXO:
        return f"{path} can be read by others", fix
    if st.st_mode & stat.S_IRWXG:
        return f"{path} can be read by group {st.st_gid}", fix
    return None


def _mac(key: bytes, offer_id: int, action: str, target: str, expires: int, subject: str | None = None) -> str:
    # Offers made before offers were bound to a subject have none: their tokens keep checking.
    msg = f"{offer_id}|{action}|{target}|{expires}" + (f"|{subject}" if subject is not None else "")
    digest = hmac.new(key, msg.encode(), hashlib.sha256).digest()[:MAC_BYTES]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def offer(settings: Settings, journal: Journal, service: str, buttons: Sequence[tuple[str, str]], *,
          ttl: float | None = None, clock: Clock = SYSTEM) -> list[Action]:
    """Buttons for (action, target) pairs, or [] when no channel of the service can carry a tap
    back (no offer rows, no key file for nothing).

    Each offer is bound to the exact thing it is offered for (its subject: the change's commit,
    the freeze's event id). The buttons carry `offer:ID`, not a token: tokens are made as the
    message is sent (sign()), by a process that holds the key, and never stored in the journal,
    which the push account can read."""
    if not any(settings.channels[n].actionable for n in settings.channels_for(service) if n in settings.channels):
        return []
    svc = settings.services.get(service)
    life = ttl if ttl is not None else (svc.approval_timeout if svc is not None else 24 * 3600.0)
    if holds_key(settings.state_dir):
        secret(settings.state_dir)  # made on first use; a key problem costs the buttons (buttons())
    now = clock.now()
    expires = int(now.timestamp() + life)
    assert all(action in ACTIONS for action, _ in buttons)
    triples = [(action, target, subject_of(journal, action, target)) for action, target in buttons]
    ids = store.insert_offers(journal, service, triples, iso(now), expires)
    return [Action(LABELS[action], f"{UNSIGNED}{oid}") for oid, (action, _) in zip(ids, buttons, strict=True)]


def subject_of(journal: Journal, action: str, target: str) -> str | None:
    """What an offer is for, exactly: the commit of the change it decides, the freeze it lifts."""
    if action in ("approve", "reject"):
        row = approvals_store.get(journal, int(target))
        return row.sha if row is not None else None
    if action == "unfreeze":
        return freeze_subject(journal.frozen(target))
    return None


def freeze_subject(frozen: dict[str, Any] | None) -> str | None:
    """Which freeze this is: its service.frozen event id, or (before that event is journaled,
    or when the journal could not take it) the freeze's own id — an Unfreeze is bound to one."""
    if not frozen:
        return None
    if frozen.get("frozen_event") is not None:
        return str(frozen["frozen_event"])
    return f"freeze:{frozen['freeze_id']}" if frozen.get("freeze_id") else None


def token(key: bytes, found: Offer) -> str:
    return f"1.{found.id}.{_b36(found.expires)}.{_mac(key, found.id, found.action, found.target, found.expires, found.subject)}"


def label(found: Offer) -> str:
    """What a signed button says: its action and what it acts on, read from the offer row
    itself, never from the message beside it ("Approve #13 abc1234", "Unfreeze app"). The row
    is the journal's, so only plain characters go through (no `,` or `;`: ntfy's action syntax)."""
    if found.action in ("approve", "reject"):
        what = f"#{found.target}" + (f" {found.subject[:7]}" if found.subject else "")
    else:
        what = found.target
    text = re.sub(r"[^A-Za-z0-9#._@:/ -]", "", f"{LABELS[found.action]} {what}")
    return text[:LABEL_MAX].rstrip()


def unsignable(settings: Settings, found: Offer, now: float) -> str | None:
    """Why root must not sign this offer row, or None. Offers are the journal's, which the push
    account writes: one that is spent, expired, or lives longer than its service's
    approval_timeout (a row written by hand, not by offer()) gets no token."""
    if found.action not in ACTIONS:
        return f"unknown action {found.action!r}"
    if found.status != "open":
        return f"offer {found.id} is {found.status}, not open"
    if now >= found.expires:
        return f"offer {found.id} expired at {iso(dt.datetime.fromtimestamp(found.expires, dt.timezone.utc))}"
    svc = settings.services.get(found.service)
    life = svc.approval_timeout if svc is not None else 24 * 3600.0
    try:
        created = parse_iso(found.created).timestamp()
    except (TypeError, ValueError):
        return f"offer {found.id} has no readable creation time ({found.created!r})"
    if found.expires > created + life + LIFE_SLACK:
        return (f"offer {found.id} expires {found.expires - created:.0f}s after it was made, more than "
                f"{found.service}'s approval_timeout ({life:.0f}s): not an offer opskit made")
    return None


def needs_signing(actions: Sequence[Action]) -> bool:
    return any(a.token.startswith(UNSIGNED) for a in actions)


def sign(settings: Settings, journal: Journal, actions: Sequence[Action],
         clock: Clock = SYSTEM) -> tuple[Action, ...] | None:
    """The buttons with their tokens, made now; None when this process may not hold the key
    (the message waits for root's `opskit inbox` or `notify --flush`). Each label is the offer's
    own action and subject (label()), whatever the queued row says. A key that cannot be used,
    an offer that is gone, or one unsignable() refuses costs its buttons, never the message (its
    text names the commands); a refused offer is journaled as decision.refused."""
    if not needs_signing(actions):
        return tuple(actions)
    if not holds_key(settings.state_dir):
        return None
    try:
        key = secret(settings.state_dir)
    except (OpsError, OSError):
        return tuple(a for a in actions if not a.token.startswith(UNSIGNED))
    out = []
    now = clock.now().timestamp()
    for a in actions:
        if not a.token.startswith(UNSIGNED):
            out.append(a)
            continue
        ident = a.token[len(UNSIGNED):]
        found = store.get_offer(journal, int(ident)) if ident.isdigit() else None
        if found is None:
            continue
        why = unsignable(settings, found, now)
        if why is not None:
            journal.append("decision.refused", found.service, {
                "action": found.action, "target": found.target, "offer": found.id,
                "reason": f"button not signed: {why}"})
            continue
        out.append(Action(label(found), token(key, found)))
    return tuple(out)


def buttons(settings: Settings, journal: Journal, service: str, pairs: Sequence[tuple[str, str]], *,
            clock: Clock = SYSTEM) -> list[Action]:
    """offer(), for the pipeline: a key problem costs the buttons (the text still names the
    commands), never the notification or the rollback that sends it."""
    try:
        return offer(settings, journal, service, pairs, clock=clock)
    except Exception:
        return []


def check(settings: Settings, journal: Journal, token: str, clock: Clock = SYSTEM) -> tuple[Offer | None, str | None]:
    """(offer, None) for a genuine unexpired token, else (offer or None, why it is refused)."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != "1" or not parts[1].isdigit():
        return None, "not an opskit decision token"
    try:
        expires = int(parts[2], 36)
    except ValueError:
        return None, "not an opskit decision token"
    found = store.get_offer(journal, int(parts[1]))
    if found is None:
        return None, "bad token (no such offer)"
    good = _mac(secret(settings.state_dir), found.id, found.action, found.target, expires, found.subject)
    if not hmac.compare_digest(good, parts[3]) or expires != found.expires:
        return None, "bad token (signature does not match)"
    if clock.now().timestamp() >= expires:
        return found, f"expired token (at {iso(dt.datetime.fromtimestamp(expires, dt.timezone.utc))})"
    return found, None


def setup_problems(settings: Settings) -> list[tuple[str, str, str]]:
    """(what, problem, fix) for `opskit doctor`: set-ups where a tap could not count or
    where a decision could be made by someone it should not be."""
    out = []
    for ch in settings.channels.values():
        if ch.type == "telegram" and not ch.allowed_users:
            out.append((f"notify.{ch.name}", "allowed_users is empty: every tap is refused",
                        "add allowed_users = [USER_ID] (the from.id of each person who may decide)"))
        if ch.type == "ntfy" and ch.reply_url is not None:
            if ch.reply_token is None:
                out.append((f"notify.{ch.name}", "reply_url without reply_token: the buttons publish anonymously, "
                            "so the reply topic must be writable by anyone",
                            "give the phone a write-only token for the reply topic (README: approve from your phone)"))
            if ch.token is None:
                out.append((f"notify.{ch.name}", "no token: opskit reads the reply topic anonymously",
                            "set token to a credential that can read the reply topic"))
    key = Path(settings.state_dir) / KEY_FILE
    exposed = key_exposed(key, settings.state_dir) if os.path.lexists(key) else None
    if exposed:
        out.append(("decision.key", f"{exposed[0]}: whoever reads it can approve any change", exposed[1]))
    return out


def key_exposed(path: Path, state_dir: Path) -> tuple[str, str] | None:
    """(who else can use the key at path, the fix), or None when only its holder can: a plain
    0600 file of its owner's (root's in a shared state dir)."""
    return _unsafe(path.lstat(), path, state_dir)


# --- receiving a tap ------------------------------------------------------------------------

@dataclass
class Verdict:
    status: str  # applied | refused | seen
    text: str  # what the tapper is told
    offer: Offer | None = None
    ok: bool = True  # applied and the action did what it asked (deployed, rejected, …)


class Applier(Protocol):
    """What a decision does, by the same code as the CLI (inbox.CliApplier)."""

    def still_waits(self, found: Offer) -> str | None:
        """None if the target can still take this decision, else why not."""

    def apply(self, found: Offer, by: str) -> tuple[str, bool]:
        """Do it: (what happened, ok). OpsError: it could not be done."""

    def waits_again(self, found: Offer) -> bool:
        """After apply: does the target wait for this decision again (never got to merge)?"""


def receive(settings: Settings, journal: Journal, applier: Applier, *, channel: str, msg_id: str, token: str,
            by: str, reply: dict[str, Any] | None = None, refuse: str | None = None,
            clock: Clock = SYSTEM) -> Verdict:
    """One tap, checked and applied at most once. `refuse`: a reason the channel already
    found (a Telegram user not in allowed_users)."""
    if store.tap_seen(journal, channel, msg_id):
        return _seen(journal, channel, msg_id)
    found, why = check(settings, journal, token, clock) if refuse is None else (None, refuse)
    if why is None and found is not None:
        why = "already decided" + (f" by {found.decided_by}" if found.decided_by else "") \
            if found.status != "open" else applier.still_waits(found)
    if why is not None or found is None:
        return _refused(journal, channel, msg_id, found, by, why or "refused", clock)
    proof = claim_proof(secret(settings.state_dir), found, channel, msg_id, by)
    again, claimed = store.claim_by_tap(journal, found, channel=channel, msg_id=msg_id, by=by, reply=reply,
                                        now=iso(clock.now()), proof=proof)
    if again:
        return _seen(journal, channel, msg_id)
    if not claimed:
        used = store.get_offer(journal, found.id)
        who = f" by {used.decided_by}" if used and used.decided_by else ""
        journal.append("decision.refused", found.service, {
            "channel": channel, "by": by, "action": found.action, "target": found.target,
            "reason": f"token already used{who}"})
        return Verdict("refused", f"already decided{who}", found, ok=False)
    journal.append("decision.received", found.service, {"channel": channel, "by": by, "action": found.action,
                                                         "target": found.target, "offer": found.id})
    return _apply(journal, applier, found, by)


def _seen(journal: Journal, channel: str, msg_id: str) -> Verdict:
    """A tap handled before. If it was the one that decided and its run ended before the
    tapper was told (killed after the apply), the verdict carries the offer to tell them now."""
    found = store.unanswered_by_tap(journal, channel, msg_id)
    return Verdict("seen", found.outcome or "" if found else "", found)


def answered(journal: Journal, offer_id: int, clock: Clock = SYSTEM) -> None:
    """The tapper was told (or told as far as the channel allows)."""
    store.set_answered(journal, offer_id, iso(clock.now()))


def _refused(journal: Journal, channel: str, msg_id: str, found: Offer | None, by: str, why: str,
             clock: Clock) -> Verdict:
    if not store.record_refused_tap(journal, channel, msg_id, found.id if found else None, iso(clock.now())):
        return _seen(journal, channel, msg_id)
    data: dict[str, Any] = {"channel": channel, "by": by, "reason": why}
    if found is not None:
        data.update(action=found.action, target=found.target, offer=found.id)
    journal.append("decision.refused", found.service if found else None, data)
    return Verdict("refused", f"refused: {why}; nothing changed", found, ok=False)


SIGNED = ("action", "target", "subject", "expires")


def _apply(journal: Journal, applier: Applier, verified: Offer, by: str) -> Verdict:
    """Apply exactly the offer that was checked (a token's HMAC, a claim's proof) and claimed.
    The row is the journal's, which the push account writes: if it no longer says what was
    checked, or is no longer our claim, nothing is applied and the tap is refused."""
    row = store.get_offer(journal, verified.id)
    changed = [f for f in SIGNED if row is None or getattr(row, f) != getattr(verified, f)]
    if row is None or changed or row.status != "applying" or row.claimed_by != os.getpid():
        why = ("the offer was changed in the journal after its token was checked ("
               + (", ".join(changed) if changed else "no longer our claim") + "): not applied")
        store.mark_applied(journal, verified.id, f"refused: {why}")
        journal.append("decision.refused", verified.service, {
            "channel": verified.channel or (row.channel if row else None), "by": by, "action": verified.action,
            "target": verified.target, "offer": verified.id, "reason": why})
        return Verdict("refused", f"refused: {why}; nothing changed", verified, ok=False)
    # what was signed, whatever the row says from here on
    found = replace(row, action=verified.action, target=verified.target, subject=verified.subject,
                    expires=verified.expires)
    offer_id = found.id
    try:
        text, ok = applier.apply(found, by)
    except OpsError as e:  # e.g. decided at the same moment by `opskit approve`
        text, ok = f"not applied: {e}", False
    waits = applier.waits_again(found)
    # An approval that never got to merge (lock busy, service frozen) waits again, and so
    # does its button: the next tap tries again. Otherwise the change's other button is spent.
    store.finish(journal, found, text, waits=waits)
    journal.append("decision.applied", found.service, {"channel": found.channel, "by": by, "action": found.action,
                                                        "target": found.target, "offer": found.id,
                                                        "outcome": text, "ok": ok})
    return Verdict("applied", text, store.get_offer(journal, offer_id), ok=ok)


def claim_proof(key: bytes, found: Offer, channel: str, msg_id: str, by: str) -> str:
    """What only the key holder can write beside a claim: resume() applies a claim only with it."""
    msg = f"claim|{found.id}|{found.action}|{found.target}|{found.subject}|{found.expires}|{channel}|{msg_id}|{by}"
    return base64.urlsafe_b64encode(hmac.new(key, msg.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def resume(settings: Settings, journal: Journal, applier: Applier, clock: Clock = SYSTEM) -> list[Verdict]:
    """Finish the decisions a killed inbox run claimed but did not see through.

    Only a claim a tap made counts: the journal is the push account's to write too, and an
    `applying` row under a dead pid, written by hand, must never make root decide (tests/test_pusher_cannot_decide.py).
    A claim without the key holder's proof goes back to open and is journaled as refused. A proof
    is spent when its claim ends (finish, mark_applied, unclaim clear it), so an ended row set back
    to applying by hand has none; the reclaim takes the row only while it says what the proof
    covers, and the apply is of the row as checked (_apply)."""
    out = []
    key: bytes | None = None
    for found in store.applying(journal):
        if pid_alive(found.claimed_by):
            continue
        key = key or secret(settings.state_dir)
        good = claim_proof(key, found, found.channel or "", found.tap or "", found.decided_by or "")
        if not found.proof or not hmac.compare_digest(good, found.proof):
            forged = "a claim no tap made (no valid proof in the journal): not applied"
            if store.unclaim(journal, found, f"refused: {forged}"):
                journal.append("decision.refused", found.service, {
                    "channel": found.channel, "by": found.decided_by, "action": found.action,
                    "target": found.target, "offer": found.id, "reason": forged})
                out.append(Verdict("refused", f"refused: {forged}; nothing changed", found, ok=False))
            continue
        if not store.reclaim(journal, found, iso(clock.now())):
            continue
        why = applier.still_waits(found)
        if why is None:
            out.append(_apply(journal, applier, found, found.decided_by or "?"))
            continue
        text = f"applied before an interruption ({why})"
        store.mark_applied(journal, found.id, text)
        out.append(Verdict("applied", text, store.get_offer(journal, found.id)))
    return out


__all__: Sequence[str] = ["offer", "check", "receive", "resume", "secret", "Offer", "Verdict", "Applier",
                          "SCHEMA"]
