"""The approvals table: parked changes and the decisions that end them.

Each decision moves a row out of `parked` with one compare-and-swap UPDATE, so two people
deciding at once cannot both win, and a change is never merged twice. The rules around it
(who is told, reminders) are chain/approvals.py's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.errors import OpsError, UsageError, redact
from opskit.base.text import printable
from opskit.storage.journal import Journal, with_tables

SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service     TEXT NOT NULL,
    chain       TEXT NOT NULL,
    branch      TEXT NOT NULL,                   -- printable (non-UTF-8 bytes replaced)
    ref         BLOB NOT NULL,                   -- the branch name's exact bytes (git allows any)
    sha         TEXT NOT NULL,
    base        TEXT,
    created     TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'parked',  -- parked | approved | rejected | superseded
    cause       TEXT,                            -- why it waits for a human
    event_id    INTEGER,                         -- the review.needs-human event
    decided_by  TEXT,
    decided_at  TEXT,
    reason      TEXT,
    reminded_at TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, service, id);
"""

DECIDED = ("approved", "rejected", "superseded")
def _db(journal: Journal) -> Journal:
    return with_tables(journal, "approvals", SCHEMA)


@dataclass(frozen=True)
class Parked:
    id: int
    service: str
    chain: str
    branch: str
    ref: bytes
    sha: str
    base: str | None
    created: str
    status: str
    cause: str | None
    event_id: int | None
    decided_by: str | None
    decided_at: str | None
    reason: str | None
    reminded_at: str | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["ref"]  # bytes are not JSON; `branch` is its printable form
        return out

    @property
    def raw_branch(self) -> str:
        """The branch name as git needs it back (surrogate-escaped bytes)."""
        return self.ref.decode("utf-8", "surrogateescape")

    def describe(self) -> str:
        """`#3 svc feature/x 4d62098a (parked since …: review asked for a human)`"""
        when = self.created if self.status == "parked" else (self.decided_at or self.created)
        who = f" by {self.decided_by}" if self.decided_by else ""
        why = self.cause if self.status == "parked" else self.reason
        return (f"#{self.id} {self.service} {self.branch} {self.sha[:10]} ({self.status}{who} since {when}"
                + (f": {why}" if why else "") + ")")


def _row(r: Any) -> Parked:
    return Parked(**{k: r[k] for k in Parked.__dataclass_fields__})


def _bytes(branch: str) -> bytes:
    return branch.encode("utf-8", "surrogateescape")


def park(journal: Journal, *, service: str, chain: str, branch: str, sha: str, base: str | None,
         cause: str, clock: Clock = SYSTEM) -> Parked:
    with _db(journal).tx() as c:
        cur = c.execute(
            "INSERT INTO approvals (service, chain, branch, ref, sha, base, created, cause) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (service, chain, printable(branch), _bytes(branch), sha, base, iso(clock.now()), redact(cause)))
        new_id = cur.lastrowid
    assert new_id is not None
    found = get(journal, new_id)
    assert found is not None
    return found


def set_event(journal: Journal, approval_id: int, event_id: int) -> None:
    with _db(journal).tx() as c:
        c.execute("UPDATE approvals SET event_id = ? WHERE id = ?", (event_id, approval_id))


def get(journal: Journal, approval_id: int) -> Parked | None:
    r = _db(journal).conn.execute("SELECT * FROM approvals WHERE id = ?", (approval_id,)).fetchone()
    return _row(r) if r else None


def pending(journal: Journal, service: str | None = None, *, include_decided: bool = False,
            limit: int = 200) -> list[Parked]:
    sql = "SELECT * FROM approvals WHERE 1=1"
    args: list[Any] = []
    if service:
        sql += " AND service = ?"
        args.append(service)
    if not include_decided:
        sql += " AND status = 'parked'"
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(limit)
    rows = [_row(r) for r in _db(journal).conn.execute(sql, args)]
    rows.reverse()
    return rows


def decide(journal: Journal, approval_id: int, status: str, *, by: str, reason: str | None = None,
           clock: Clock = SYSTEM) -> Parked:
    """parked → status, atomically. Unknown id: UsageError (exit 2); decided: OpsError (exit 1)."""
    assert status in DECIDED
    with _db(journal).tx() as c:
        cur = c.execute(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ? "
            "WHERE id = ? AND status = 'parked'",
            (status, by, iso(clock.now()), redact(reason) if reason else None, approval_id))
        changed = cur.rowcount
    row = get(journal, approval_id)
    if row is None:
        raise UsageError(f"no parked change #{approval_id}; `opskit pending` lists the ones waiting")
    if not changed:
        raise OpsError(f"change #{approval_id} was already decided: {row.describe()}")
    return row


def mark(journal: Journal, approval_id: int, status: str, reason: str) -> None:
    """Record how an approved change ended when it could not be merged after all."""
    with _db(journal).tx() as c:
        c.execute("UPDATE approvals SET status = ?, reason = ? WHERE id = ?", (status, redact(reason), approval_id))


def reopen(journal: Journal, approval_id: int, reason: str) -> None:
    """Back to parked: an approval that never got to merge (the lock stayed busy)."""
    with _db(journal).tx() as c:
        c.execute("UPDATE approvals SET status = 'parked', decided_by = NULL, decided_at = NULL, reason = ? "
                  "WHERE id = ?", (redact(reason), approval_id))


def supersede(journal: Journal, service: str, branch: str, *, by_chain: str, by_sha: str,
              clock: Clock = SYSTEM) -> list[Parked]:
    """A newer push of `branch` ends the changes of it still parked. Returns the rows it ended."""
    reason = f"superseded by a newer push of {printable(branch)} ({by_sha[:10]}, chain {by_chain})"
    ids = [int(r[0]) for r in _db(journal).conn.execute(
        "SELECT id FROM approvals WHERE service = ? AND ref = ? AND status = 'parked' AND chain != ?",
        (service, _bytes(branch), by_chain))]
    ended = []
    for i in ids:
        try:
            ended.append(decide(journal, i, "superseded", by="opskit", reason=reason, clock=clock))
        except OpsError:  # decided by someone else in the meantime
            continue
    return ended


def claim_reminder(journal: Journal, approval_id: int, now: str) -> bool:
    """Mark a parked change reminded; False when another cron-check did it first."""
    with _db(journal).tx() as c:
        return bool(c.execute("UPDATE approvals SET reminded_at = ? WHERE id = ? AND reminded_at IS NULL "
                              "AND status = 'parked'", (now, approval_id)).rowcount)
