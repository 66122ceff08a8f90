"""The decision tables: button offers and the taps that decide them, with the transactions
that make a tap count once (the rules are notify/decisions.py's).

A tap is identified by (channel, message id). Recording it as seen and claiming its offer
(open → applying, with our pid) happen in one transaction, so a tap read twice is skipped
and two taps of one offer cannot both claim it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from opskit.storage.journal import Journal, with_tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS decision_offers (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    action      TEXT NOT NULL,                  -- approve | reject | freeze | unfreeze
    target      TEXT NOT NULL,                  -- the approval id, or the service name
    subject     TEXT,                           -- the exact thing offered for: the change's sha, the freeze's event id
    service     TEXT NOT NULL,
    created     TEXT NOT NULL,
    expires     INTEGER NOT NULL,               -- unix seconds, signed into the token
    status      TEXT NOT NULL DEFAULT 'open',   -- open | applying | applied
    channel     TEXT,
    decided_by  TEXT,
    claimed_by  INTEGER,
    claimed_at  TEXT,
    outcome     TEXT,
    reply       TEXT,                           -- JSON: where to answer the tapper
    tap         TEXT,                           -- the message id of the tap that claimed it
    answered    TEXT,                           -- when the tapper was told the outcome
    proof       TEXT                            -- HMAC over the claim by the key holder (resume checks it)
);
CREATE TABLE IF NOT EXISTS decision_taps (
    channel  TEXT NOT NULL,
    msg_id   TEXT NOT NULL,                     -- Telegram update id, ntfy message id
    offer_id INTEGER,
    seen     TEXT NOT NULL,
    PRIMARY KEY (channel, msg_id)
);
"""

# Columns added after the first release (CREATE TABLE IF NOT EXISTS leaves an older journal
# without them): the binding of an offer to its exact subject, and the claim's proof.
_LATER = (("decision_offers", "subject", "TEXT"), ("decision_offers", "proof", "TEXT"))
_migrated: set[tuple[int, str]] = set()


def _db(journal: Journal) -> Journal:
    with_tables(journal, "decisions", SCHEMA)
    key = (os.getpid(), str(journal.path))
    if key not in _migrated:
        for table, column, kind in _LATER:
            if column not in {r[1] for r in journal.conn.execute(f"PRAGMA table_info({table})")}:
                try:
                    journal.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                except sqlite3.OperationalError as e:  # a concurrent opener added it first
                    if "duplicate column" not in str(e):
                        raise
        _migrated.add(key)
    return journal


@dataclass(frozen=True)
class Offer:
    id: int
    action: str
    target: str
    subject: str | None
    service: str
    created: str
    expires: int
    status: str
    channel: str | None
    decided_by: str | None
    claimed_by: int | None
    claimed_at: str | None
    outcome: str | None
    reply: str | None
    tap: str | None
    answered: str | None
    proof: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _offer(r: Any) -> Offer | None:
    return Offer(**{k: r[k] for k in Offer.__dataclass_fields__}) if r is not None else None


def get_offer(journal: Journal, offer_id: int) -> Offer | None:
    return _offer(_db(journal).conn.execute("SELECT * FROM decision_offers WHERE id = ?", (offer_id,)).fetchone())


def insert_offers(journal: Journal, service: str, triples: Sequence[tuple[str, str, str | None]], created: str,
                  expires: int) -> list[int]:
    """One open offer per (action, target, subject); their ids, in order."""
    ids = []
    with _db(journal).tx() as c:
        for action, target, subject in triples:
            cur = c.execute("INSERT INTO decision_offers (action, target, subject, service, created, expires) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (action, target, subject, service, created, expires))
            assert cur.lastrowid is not None
            ids.append(int(cur.lastrowid))
    return ids


def tap_seen(journal: Journal, channel: str, msg_id: str) -> bool:
    return _db(journal).conn.execute("SELECT 1 FROM decision_taps WHERE channel = ? AND msg_id = ?",
                                     (channel, msg_id)).fetchone() is not None


def claim_by_tap(journal: Journal, found: Offer, *, channel: str, msg_id: str, by: str,
                 reply: dict[str, Any] | None, now: str, proof: str) -> tuple[bool, bool]:
    """Record the tap and claim its offer, in one transaction: (seen before, claimed).

    `found` is the offer as its token was checked: the claim takes the row only while it still
    says what was signed (action, target, subject, expiry), so a row rewritten after the check
    is never claimed."""
    with _db(journal).tx() as c:
        if c.execute("SELECT 1 FROM decision_taps WHERE channel = ? AND msg_id = ?",
                     (channel, msg_id)).fetchone():
            return True, False
        c.execute("INSERT INTO decision_taps (channel, msg_id, offer_id, seen) VALUES (?, ?, ?, ?)",
                  (channel, msg_id, found.id, now))
        # Approve and Reject of one change are two offers: the approval row's own
        # compare-and-swap settles a race between them.
        claimed = c.execute(
            "UPDATE decision_offers SET status = 'applying', channel = ?, decided_by = ?, claimed_by = ?, "
            "claimed_at = ?, reply = ?, tap = ?, answered = NULL, proof = ? WHERE id = ? AND status = 'open' "
            "AND action = ? AND target = ? AND subject IS ? AND expires = ?",
            (channel, by, os.getpid(), now, json.dumps(reply or {}), msg_id, proof, found.id,
             found.action, found.target, found.subject, found.expires)).rowcount
    return False, bool(claimed)


def record_refused_tap(journal: Journal, channel: str, msg_id: str, offer_id: int | None, now: str) -> bool:
    """Remember a refused tap; False when it was recorded before."""
    with _db(journal).tx() as c:
        return bool(c.execute("INSERT OR IGNORE INTO decision_taps (channel, msg_id, offer_id, seen) "
                              "VALUES (?, ?, ?, ?)", (channel, msg_id, offer_id, now)).rowcount)


def unanswered_by_tap(journal: Journal, channel: str, msg_id: str) -> Offer | None:
    """The offer this tap decided, if the tapper was never told the outcome."""
    return _offer(_db(journal).conn.execute(
        "SELECT * FROM decision_offers WHERE channel = ? AND tap = ? AND status = 'applied' "
        "AND answered IS NULL", (channel, msg_id)).fetchone())


def set_answered(journal: Journal, offer_id: int, now: str) -> None:
    with _db(journal).tx() as c:
        c.execute("UPDATE decision_offers SET answered = ? WHERE id = ?", (now, offer_id))


def finish(journal: Journal, found: Offer, outcome: str, *, waits: bool) -> None:
    """End an applying offer: open again when its target still waits, else applied (and the
    other button of the same change with it). The claim's proof is spent: a row set back to
    applying never passes resume's check again."""
    with _db(journal).tx() as c:
        c.execute("UPDATE decision_offers SET status = ?, outcome = ?, claimed_by = NULL, proof = NULL "
                  "WHERE id = ? AND status = 'applying'", ("open" if waits else "applied", outcome, found.id))
        if found.action in ("approve", "reject") and not waits:
            c.execute("UPDATE decision_offers SET status = 'applied', outcome = ? WHERE status = 'open' "
                      "AND action IN ('approve', 'reject') AND target = ? AND id != ?",
                      (f"superseded by offer {found.id}", found.target, found.id))


def applying(journal: Journal) -> list[Offer]:
    rows = [_offer(r) for r in _db(journal).conn.execute(
        "SELECT * FROM decision_offers WHERE status = 'applying' ORDER BY id")]
    return [r for r in rows if r is not None]


def reclaim(journal: Journal, found: Offer, now: str) -> bool:
    """Take over an applying offer whose claimer is gone; False when another run did first, or
    when the row no longer says what its proof was checked against (`found`)."""
    with _db(journal).tx() as c:
        return bool(c.execute("UPDATE decision_offers SET claimed_by = ?, claimed_at = ? "
                              "WHERE id = ? AND status = 'applying' AND claimed_by IS ? AND action = ? "
                              "AND target = ? AND subject IS ? AND expires = ? AND proof IS ?",
                              (os.getpid(), now, found.id, found.claimed_by, found.action, found.target,
                               found.subject, found.expires, found.proof)).rowcount)


def mark_applied(journal: Journal, offer_id: int, outcome: str) -> None:
    with _db(journal).tx() as c:
        c.execute("UPDATE decision_offers SET status = 'applied', outcome = ?, claimed_by = NULL, proof = NULL "
                  "WHERE id = ?", (outcome, offer_id))


def unclaim(journal: Journal, found: Offer, outcome: str) -> bool:
    """An applying offer whose claim no tap made (no valid proof) goes back to open: the real
    button still works for a person; False when another run moved it first."""
    with _db(journal).tx() as c:
        return bool(c.execute("UPDATE decision_offers SET status = 'open', channel = NULL, decided_by = NULL, "
                              "claimed_by = NULL, claimed_at = NULL, tap = NULL, proof = NULL, outcome = ? "
                              "WHERE id = ? AND status = 'applying' AND claimed_by IS ?",
                              (outcome, found.id, found.claimed_by)).rowcount)
