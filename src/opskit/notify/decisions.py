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
import datetime as dt
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opskit.base import statefs
from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.config import Settings
from opskit.base.errors import OpsError, UsageError
from opskit.base.proc import pid_alive
from opskit.notify.base import Action
from opskit.storage import decisions as store
from opskit.storage.decisions import SCHEMA, Offer
from opskit.storage.journal import Journal

ACTIONS = ("approve", "reject", "freeze", "unfreeze")
LABELS = {"approve": "Approve", "reject": "Reject", "freeze": "Freeze", "unfreeze": "Unfreeze"}
KEY_FILE = "decision.key"
MAC_BYTES = 16
# --- the key and the tokens -----------------------------------------------------------------

def secret(state_dir: Path) -> bytes:
    """The HMAC key, created on first use for its owner alone — and for the state dir's group
    when the state dir is shared (the hooks' account makes the buttons, root's or another
    account's cron reads the taps; that group can already approve with `opskit approve`).
    A key anyone else can read is refused: whoever reads it can approve any change."""
    path = Path(state_dir) / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            if statefs.is_shared(state_dir):
                os.fchmod(fh.fileno(), 0o640)  # the group is the setgid state dir's
            fh.write(secrets.token_bytes(32))
            fh.flush()
            os.fsync(fh.fileno())
    exposed = key_exposed(path, state_dir)
    if exposed:
        raise UsageError(f"{exposed[0]}; {exposed[1]}")
    try:
        data = path.read_bytes()
    except PermissionError:  # made 0600 by another account (before keys were shared)
        raise UsageError(f"{path} cannot be read by this account; in a shared state dir its owner runs "
                         f"`chmod 640 {path}` (the state dir's group reads it)") from None
    if len(data) < 32:  # a crash between create and write: make it again
        path.unlink()
        return secret(state_dir)
    return data


def _mac(key: bytes, offer_id: int, action: str, target: str, expires: int) -> str:
    msg = f"{offer_id}|{action}|{target}|{expires}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()[:MAC_BYTES]
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
    """Signed buttons for (action, target) pairs, or [] when no channel of the service
    can carry a tap back (no offer rows, no key file for nothing)."""
    if not any(settings.channels[n].actionable for n in settings.channels_for(service) if n in settings.channels):
        return []
    svc = settings.services.get(service)
    life = ttl if ttl is not None else (svc.approval_timeout if svc is not None else 24 * 3600.0)
    key = secret(settings.state_dir)
    now = clock.now()
    expires = int(now.timestamp() + life)
    assert all(action in ACTIONS for action, _ in buttons)
    ids = store.insert_offers(journal, service, buttons, iso(now), expires)
    return [Action(LABELS[action], f"1.{oid}.{_b36(expires)}.{_mac(key, oid, action, target, expires)}")
            for oid, (action, target) in zip(ids, buttons, strict=True)]


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
    good = _mac(secret(settings.state_dir), found.id, found.action, found.target, expires)
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
    exposed = key_exposed(key, settings.state_dir) if key.exists() else None
    if exposed:
        out.append(("decision.key", f"{exposed[0]}: whoever reads it can approve any change", exposed[1]))
    return out


def key_exposed(path: Path, state_dir: Path) -> tuple[str, str] | None:
    """(who else can use the key at path, the fix), or None when no one may who should not: its
    owner may read it, and in a shared state dir the state dir's group."""
    st = path.stat()
    if statefs.is_shared(state_dir):  # the group must keep reading it
        fix = f"`chgrp {os.stat(state_dir).st_gid} {path} && chmod 640 {path}` (or delete it to make a new one)"
    else:
        fix = f"`chmod 600 {path}` (or delete it to make a new one)"
    if st.st_mode & stat.S_IRWXO:
        return f"{path} can be read by others", fix
    shared_group = statefs.is_shared(state_dir) and st.st_gid == os.stat(state_dir).st_gid
    if st.st_mode & (stat.S_IWGRP | stat.S_IXGRP) or (st.st_mode & stat.S_IRGRP and not shared_group):
        return f"{path} can be read by group {st.st_gid}, not the shared state dir's", fix
    return None


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
    again, claimed = store.claim_by_tap(journal, found.id, channel=channel, msg_id=msg_id, by=by, reply=reply,
                                        now=iso(clock.now()))
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
    return _apply(journal, applier, found.id, by)


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


def _apply(journal: Journal, applier: Applier, offer_id: int, by: str) -> Verdict:
    found = store.get_offer(journal, offer_id)
    assert found is not None
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


def resume(journal: Journal, applier: Applier, clock: Clock = SYSTEM) -> list[Verdict]:
    """Finish the decisions a killed inbox run claimed but did not see through."""
    out = []
    for found in store.applying(journal):
        if pid_alive(found.claimed_by) or not store.reclaim(journal, found, iso(clock.now())):
            continue
        why = applier.still_waits(found)
        if why is None:
            out.append(_apply(journal, applier, found.id, found.decided_by or "?"))
            continue
        text = f"applied before an interruption ({why})"
        store.mark_applied(journal, found.id, text)
        out.append(Verdict("applied", text, store.get_offer(journal, found.id)))
    return out


__all__: Sequence[str] = ["offer", "check", "receive", "resume", "secret", "Offer", "Verdict", "Applier",
                          "SCHEMA"]
