"""The outbox table (schema in journal.py): rows are written before any send, claimed
for delivery, and finished as delivered, queued again, or broken.

Exactly once across concurrent senders: a process claims rows inside a
BEGIN IMMEDIATE transaction by setting status 'sending' and claimed_by to its pid. A
claim is honoured while that pid lives and the claim is fresh; a dead pid's or stale
claim is taken over. Order within a channel is kept by claiming a channel's whole queue
or none of it: while another live process holds rows of a channel, nobody else sends
on it. A channel is claimed just before it is delivered (never while other channels are
worked through), the claim is refreshed before every attempt, and that refresh says
which rows are still ours: a row taken over as stale is never sent again by its old
holder.

In a fleet (storage/fleet_outbox.py) the same operations run on the shared database's
outbox while it answers; `fleet_outbox.box_for(journal)` says which outbox a send or a flush uses. The
courier only ever talks to a Box.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from opskit.base.clock import Clock, iso, parse_iso
from opskit.base.errors import redact
from opskit.base.proc import pid_alive
from opskit.storage import fallback
from opskit.storage.fallback import JournalWriteError
from opskit.storage.journal import Journal

# A live process that has not touched its claim for this long is assumed hung (or its
# pid was reused) and its rows are taken over.
CLAIM_STALE = 300.0
OPEN = ("queued", "sending")


@dataclass(frozen=True)
class Row:
    id: int
    channel: str
    created: str
    level: str
    title: str | None
    message: str
    service: str | None
    event_id: int | None
    status: str
    attempts: int
    last_error: str | None
    next_try: str | None
    claimed_by: int | str | None  # a pid here; "host:pid" in the fleet's outbox
    claimed_at: str | None
    delivered: str | None
    remote_id: str | None
    actions: str | None = None  # JSON [[label, token], ...]: the buttons of an actionable message

    @classmethod
    def of(cls, r: sqlite3.Row) -> Row:
        return cls(**{k: r[k] for k in r.keys()})


def held_elsewhere(row: Row, now: dt.datetime) -> bool:
    """Is this row being delivered by a live process right now?"""
    if row.status != "sending":
        return False
    if not isinstance(row.claimed_by, int) or not pid_alive(row.claimed_by):
        return False
    if not row.claimed_at:
        return False
    try:
        age = (now - parse_iso(row.claimed_at)).total_seconds()
    except ValueError:
        return False
    return age < CLAIM_STALE


def _open_rows(c: sqlite3.Connection, channel: str) -> list[Row]:
    return [Row.of(r) for r in c.execute(
        "SELECT * FROM outbox WHERE channel = ? AND status IN ('queued', 'sending') ORDER BY id",
        (channel,))]


def _claim(c: sqlite3.Connection, ids: list[int], me: int, stamp: str) -> None:
    c.executemany("UPDATE outbox SET status = 'sending', claimed_by = ?, claimed_at = ? WHERE id = ?",
                  [(me, stamp, i) for i in ids])


def _get(c: sqlite3.Connection, ids: list[int]) -> list[Row]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    return [Row.of(r) for r in c.execute(f"SELECT * FROM outbox WHERE id IN ({marks}) ORDER BY id", ids)]


def enqueue(journal: Journal, clock: Clock, channel: str, *, level: str, title: str | None,
            message: str, service: str | None, event_id: int | None,
            actions: Sequence[tuple[str, str]] = ()) -> int:
    """Write a new message, queued, and return its id: durable before anything is sent.

    Nothing is claimed here: the caller claims the channel (claim_channel with fresh=id)
    just before delivering it, so a claim never ages while other channels are worked on.
    """
    try:
        with journal.tx() as c:
            cur = c.execute(
                "INSERT INTO outbox (channel, created, level, title, message, service, event_id, status, actions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (channel, iso(clock.now()), level, title, message, service, event_id,
                 json.dumps([[label, token] for label, token in actions]) if actions else None))
    except sqlite3.DatabaseError as e:
        # The caller sends it straight to the channel instead (notify/direct.py).
        raise JournalWriteError(fallback.describe(journal.path, e)) from None
    new_id = cur.lastrowid
    assert new_id is not None
    return new_id


def claim_channel(journal: Journal, clock: Clock, channel: str, *,
                  fresh: int | None = None) -> tuple[list[Row], int]:
    """Claim a channel's whole open queue, oldest first, to deliver it now.

    Returns (rows, 0), or (rows, n) when another live process holds the channel: n of its
    rows are left to that process. Then rows is empty, except that `fresh` (a message
    this process just wrote) is claimed alone if nobody has it yet: a fresh alert is not
    held back behind someone else's backlog.
    """
    me, now = os.getpid(), clock.now()
    with journal.tx() as c:
        rows = _open_rows(c, channel)
        if any(held_elsewhere(r, now) for r in rows):
            ids = [r.id for r in rows if r.id == fresh and not held_elsewhere(r, now)]
        else:
            ids = [r.id for r in rows]
        _claim(c, ids, me, iso(now))
        return _get(c, ids), len(rows) - len(ids)


def touch(journal: Journal, clock: Clock, ids: list[int]) -> set[int]:
    """Refresh our claim on rows we are still working through; return the ids still ours.

    A row missing from the answer was taken over (our claim went stale, or we were
    presumed dead) or finished: it must not be sent again from here.
    """
    if not ids:
        return set()
    marks = ",".join("?" * len(ids))
    mine = f"status = 'sending' AND claimed_by = ? AND id IN ({marks})"
    with journal.tx() as c:
        c.execute(f"UPDATE outbox SET claimed_at = ? WHERE {mine}", [iso(clock.now()), os.getpid(), *ids])
        return {r[0] for r in c.execute(f"SELECT id FROM outbox WHERE {mine}", [os.getpid(), *ids])}


def finish(journal: Journal, clock: Clock, row_id: int, status: str, *, attempts: int,
           error: str | None = None, remote_id: str | None = None,
           next_try: dt.datetime | None = None) -> bool:
    """Record how delivery ended; False if the row was no longer ours (taken over)."""
    stamp = iso(clock.now())
    with journal.tx() as c:
        cur = c.execute(
            "UPDATE outbox SET status = ?, attempts = attempts + ?, last_error = ?, "
            "remote_id = COALESCE(?, remote_id), delivered = ?, next_try = ?, "
            "claimed_by = NULL, claimed_at = NULL "
            "WHERE id = ? AND status = 'sending' AND claimed_by = ?",
            (status, attempts, redact(error) if error else None, remote_id,
             stamp if status == "delivered" else None,
             iso(next_try) if next_try else None, row_id, os.getpid()))
        return cur.rowcount == 1


def release(journal: Journal, ids: list[int]) -> None:
    """Give rows we claimed but did not try back to the queue."""
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    with journal.tx() as c:
        c.execute(f"UPDATE outbox SET status = 'queued', claimed_by = NULL, claimed_at = NULL "
                  f"WHERE status = 'sending' AND claimed_by = ? AND id IN ({marks})", [os.getpid(), *ids])


def channels_with_work(journal: Journal) -> list[str]:
    """Channels with open rows, the one with the oldest waiting message first."""
    return [r[0] for r in journal.conn.execute(
        "SELECT channel FROM outbox WHERE status IN ('queued', 'sending') "
        "GROUP BY channel ORDER BY MIN(id)")]


def channels_waiting_to_sign(journal: Journal) -> list[str]:
    """Channels with a queued message whose buttons are not signed yet (notify/decisions.py sign)."""
    return [r[0] for r in journal.conn.execute(
        "SELECT DISTINCT channel FROM outbox WHERE status = 'queued' AND actions LIKE '%\"offer:%' ORDER BY channel")]


def get(journal: Journal, row_id: int) -> Row | None:
    r = journal.conn.execute("SELECT * FROM outbox WHERE id = ?", (row_id,)).fetchone()
    return Row.of(r) if r else None


def summary(journal: Journal) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, status, n in journal.conn.execute(
            "SELECT channel, status, COUNT(*) FROM outbox GROUP BY channel, status ORDER BY channel, status"):
        out.setdefault(channel, {})[status] = n
    return out


def waiting(journal: Journal) -> dict[str, tuple[int, str]]:
    """channel → (messages not yet delivered, the oldest one's `created`): how long a channel's
    owner has been waiting (status's outbox alarm, the heartbeat, metrics)."""
    return {ch: (int(n), str(oldest)) for ch, n, oldest in journal.conn.execute(
        "SELECT channel, COUNT(*), MIN(created) FROM outbox WHERE status IN ('queued', 'sending') "
        "GROUP BY channel ORDER BY channel")}


def queued_count(journal: Journal) -> int:
    return int(journal.conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'queued'").fetchone()[0])


def for_events(journal: Journal, event_ids: Sequence[int]) -> list[sqlite3.Row]:
    """The messages sent about these events, oldest first (`opskit incident`)."""
    if not event_ids:
        return []
    marks = ",".join("?" * len(event_ids))
    return list(journal.conn.execute(
        f"SELECT id, channel, title, created, status, delivered, event_id FROM outbox WHERE event_id IN ({marks}) "
        "ORDER BY id", list(event_ids)))


class Box(Protocol):
    """The operations the courier and `notify` use: this module's (the host's SQLite outbox)
    or the fleet's shared outbox (storage/fleet_outbox.py)."""

    # After delivering a channel, claim it again for what was queued meanwhile: the shared
    # outbox does (a message queued while another host held the channel waits for that host).
    drains: bool

    def enqueue(self, journal: Journal, clock: Clock, channel: str, *, level: str, title: str | None,
                message: str, service: str | None, event_id: int | None,
                actions: Sequence[tuple[str, str]] = ()) -> int: ...

    def claim_channel(self, journal: Journal, clock: Clock, channel: str, *,
                      fresh: int | None = None) -> tuple[list[Row], int]: ...

    def touch(self, journal: Journal, clock: Clock, ids: list[int]) -> set[int]: ...

    def finish(self, journal: Journal, clock: Clock, row_id: int, status: str, *, attempts: int,
               error: str | None = None, remote_id: str | None = None,
               next_try: dt.datetime | None = None) -> bool: ...

    def release(self, journal: Journal, ids: list[int]) -> None: ...

    def channels_with_work(self, journal: Journal) -> list[str]: ...

    def channels_waiting_to_sign(self, journal: Journal) -> list[str]: ...

    def get(self, journal: Journal, row_id: int) -> Row | None: ...

    def summary(self, journal: Journal) -> dict[str, dict[str, int]]: ...

    def queued_count(self, journal: Journal) -> int: ...

    def close(self) -> None: ...

    def batched(self) -> contextlib.AbstractContextManager[None]: ...


class Local:
    """The host's own outbox, in its SQLite journal: this module's functions."""

    drains = False
    enqueue = staticmethod(enqueue)
    claim_channel = staticmethod(claim_channel)
    touch = staticmethod(touch)
    finish = staticmethod(finish)
    release = staticmethod(release)
    channels_with_work = staticmethod(channels_with_work)
    channels_waiting_to_sign = staticmethod(channels_waiting_to_sign)
    get = staticmethod(get)
    summary = staticmethod(summary)
    queued_count = staticmethod(queued_count)

    def close(self) -> None:
        pass

    def batched(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


LOCAL = Local()

