"""The fleet's shared outbox: one queue in the fleet database that every host's flush works.

The rules are the SQLite outbox's (storage/outbox.py) and the courier is the same; what
changes is how a channel is claimed. A flusher takes the channel's advisory lock
(pg_try_advisory_lock on the flusher's own connection), then claims every open row of the
channel, oldest first by the time it was queued. Only the lock's holder sends on the
channel, so each message goes out once and in order however many hosts flush; a holder
that dies, or whose database connection is cut, loses the lock with its connection, and the
next flusher takes the channel at once: there is no stale claim to wait out. A holder that
hangs is cut by the server after CLAIM_STALE idle seconds (idle_session_timeout), as a stale
claim is taken over in SQLite. Rows marked 'sending' are only a record of who had them: the
lock, not the mark, is the claim.

A message queued while another host holds its channel is not sent alone past that host's
backlog (the SQLite outbox does that): the order is the point of the shared queue, and the
holder claims the channel again before it lets go, so the message goes out right after.

When the database cannot be reached, a host queues in its own SQLite outbox and delivers
from there as a single host does. When it answers again, those rows are forwarded, each
once, in their order and with their original times: marked 'forwarding' locally (a local
flush no longer takes them), inserted with ON CONFLICT (host, local_id) DO NOTHING, then
marked 'forwarded'. A forward killed between the steps is repeated and inserts nothing twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opskit.base.clock import Clock, iso
from opskit.base.errors import redact
from opskit.storage import outbox
from opskit.storage.fleet import LOCK_SPACE, STATEMENT_TIMEOUT_MS, SYNC_STEPS, Fleet, Unreachable, _say

if TYPE_CHECKING:
    import psycopg

    from opskit.storage.journal import Journal

# outbox.Row's fields, in its order
_COLUMNS = ("id, channel, created, level, title, message, service, event_id, status, attempts, last_error, "
            "next_try, claimed_by, claimed_at, delivered, remote_id, actions")
_OPEN = "status IN ('queued', 'sending')"
# A message whose buttons are not signed yet names offers in its own host's journal, signed with
# that host's key (notify/decisions.py): only that host may deliver it. Another host signing it
# would look the offer number up in its own journal and put another change's button on it.
_NOT_ANOTHERS_TO_SIGN = "NOT (host <> %s AND COALESCE(actions, '') LIKE '%%\"offer:%%')"
SYNC_EVERY = 1.0  # seconds: how often a flush forwards its events to the fleet journal


def _row(r: Sequence[Any]) -> outbox.Row:
    return outbox.Row(*r)


def _key(channel: str) -> str:
    return f"outbox:{channel}"


class Shared:
    """The shared outbox for one send or flush, on a connection of its own (its channel locks
    live and die with it). Every failure of the database is a failure to deliver now, never
    an exception into the courier: the rows stay in the database for the next flush."""

    drains = True

    def __init__(self, fleet: Fleet, journal: Journal) -> None:
        self.fleet = fleet
        self.journal = journal
        self.me = f"{fleet.host}:{os.getpid()}"
        self._conn: psycopg.Connection[Any] | None = None
        self._held: set[str] = set()
        self._synced = 0.0

    def connect(self) -> None:
        conn = self.fleet.open()
        self._conn = conn
        with self._cur() as cur:
            cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            if conn.info.server_version >= 140000:  # PostgreSQL 14 has it; before, a hung holder holds on
                # a hung holder's connection is closed by the server, and its channels are free
                cur.execute(f"SET idle_session_timeout = {int(outbox.CLAIM_STALE * 1000)}")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # its advisory locks go with it

    @contextlib.contextmanager
    def _cur(self) -> Iterator[psycopg.Cursor[Any]]:
        import psycopg  # loaded by connect() already

        if self._conn is None or self._conn.closed:
            raise Unreachable("the connection to the fleet database was lost")
        try:
            with self._conn.cursor() as cur:
                yield cur
        except psycopg.Error as e:
            why = _say(e)
            self.close()
            self.fleet.failed(why)
            self.fleet.note_down(self.journal, why)
            raise Unreachable(why) from None

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """A flush's events (notify.sent, one a message) are forwarded to the fleet journal once
        a second and at the end, not each on its own: a forward and a merge per message would
        cost more than delivering it."""
        busy = self.fleet._busy
        was = getattr(busy, "on", False)
        busy.on = True
        self._synced = time.monotonic()
        try:
            yield
        finally:
            busy.on = was
            if not was:
                self.fleet.sync(self.journal)

    def _sync_now_and_then(self) -> None:
        busy = self.fleet._busy
        if getattr(busy, "on", False) and time.monotonic() - self._synced >= SYNC_EVERY:
            busy.on = False
            try:
                self.fleet.sync(self.journal)
            finally:
                busy.on = True
                self._synced = time.monotonic()

    # --- the queue ----------------------------------------------------------------------------
    def enqueue(self, journal: Journal, clock: Clock, channel: str, *, level: str, title: str | None,
                message: str, service: str | None, event_id: int | None,
                actions: Sequence[tuple[str, str]] = ()) -> int:
        """Queue a message in the shared outbox; Unreachable when it could not be written
        (the caller queues it in the host's own outbox instead)."""
        with self._cur() as cur:
            cur.execute(
                "INSERT INTO outbox (host, channel, created, level, title, message, service, event_id, status, "
                "actions) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s) RETURNING id",
                (self.fleet.host, channel, iso(clock.now()), level, title, message, service, event_id,
                 json.dumps([[label, token] for label, token in actions]) if actions else None))
            got = cur.fetchone()
        assert got is not None
        return int(got[0])

    def claim_channel(self, journal: Journal, clock: Clock, channel: str, *,
                      fresh: int | None = None) -> tuple[list[outbox.Row], int]:
        """The channel's whole open queue, oldest first, once its lock is ours: (rows, 0); or
        ([], n) while another flusher holds it (n: its open rows, which it delivers, `fresh`
        included). An empty queue lets the lock go at once."""
        try:
            for _ in range(3):
                with self._cur() as cur:
                    if channel not in self._held:
                        cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, _key(channel)))
                        got = cur.fetchone()
                        if not got or not got[0]:
                            cur.execute(f"SELECT COUNT(*) FROM outbox WHERE channel = %s AND {_OPEN}", (channel,))
                            n = cur.fetchone()
                            return [], int(n[0]) if n else 0
                        self._held.add(channel)
                    # 'sending' rows of a channel whose lock we hold are a dead holder's: ours now
                    cur.execute(f"UPDATE outbox SET status = 'sending', claimed_by = %s, claimed_at = %s "
                                f"WHERE channel = %s AND {_OPEN} AND {_NOT_ANOTHERS_TO_SIGN} RETURNING {_COLUMNS}",
                                (self.me, iso(clock.now()), channel, self.fleet.host))
                    rows = sorted((_row(r) for r in cur.fetchall()), key=lambda r: (r.created, r.id))
                    if rows:
                        return rows, 0
                    self._unlock(cur, channel)
                    # A message queued by someone who found the channel held by us waits for us:
                    # look once more now that the lock is free.
                    cur.execute(f"SELECT EXISTS (SELECT 1 FROM outbox WHERE channel = %s AND {_OPEN} "
                                f"AND {_NOT_ANOTHERS_TO_SIGN})", (channel, self.fleet.host))
                    more = cur.fetchone()
                    if not more or not more[0]:
                        return [], 0
        except Unreachable:
            pass
        return [], 0

    def _unlock(self, cur: psycopg.Cursor[Any], channel: str) -> None:
        if channel in self._held:
            cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_SPACE, _key(channel)))
            self._held.discard(channel)

    def touch(self, journal: Journal, clock: Clock, ids: list[int]) -> set[int]:
        """The ids still ours. Our statement running on our connection is the proof that its
        locks still hold; a lost connection means nothing is ours any more."""
        if not ids:
            return set()
        try:
            with self._cur() as cur:
                cur.execute("UPDATE outbox SET claimed_at = %s WHERE status = 'sending' AND claimed_by = %s "
                            "AND id = ANY(%s) RETURNING id", (iso(clock.now()), self.me, list(ids)))
                return {int(r[0]) for r in cur.fetchall()}
        except Unreachable:
            return set()

    def finish(self, journal: Journal, clock: Clock, row_id: int, status: str, *, attempts: int,
               error: str | None = None, remote_id: str | None = None,
               next_try: dt.datetime | None = None) -> bool:
        self._sync_now_and_then()
        stamp = iso(clock.now())
        try:
            with self._cur() as cur:
                cur.execute(
                    "UPDATE outbox SET status = %s, attempts = attempts + %s, last_error = %s, "
                    "remote_id = COALESCE(%s, remote_id), delivered = %s, next_try = %s, "
                    "claimed_by = NULL, claimed_at = NULL WHERE id = %s AND status = 'sending' AND claimed_by = %s",
                    (status, attempts, redact(error) if error else None, remote_id,
                     stamp if status == "delivered" else None, iso(next_try) if next_try else None,
                     row_id, self.me))
                return cur.rowcount == 1
        except Unreachable:
            return False  # the database went away: the row is delivered again by the next holder

    def release(self, journal: Journal, ids: list[int]) -> None:
        """Rows we claimed but did not finish go back to the queue, and their channels' locks go."""
        if not ids:
            return
        with contextlib.suppress(Unreachable), self._cur() as cur:
            cur.execute("UPDATE outbox SET status = 'queued', claimed_by = NULL, claimed_at = NULL "
                        "WHERE status = 'sending' AND claimed_by = %s AND id = ANY(%s)", (self.me, list(ids)))
            cur.execute("SELECT DISTINCT channel FROM outbox WHERE id = ANY(%s)", (list(ids),))
            for (channel,) in cur.fetchall():
                self._unlock(cur, channel)

    # --- reads --------------------------------------------------------------------------------
    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._cur() as cur:
                cur.execute(sql.encode(), args)
                return list(cur.fetchall())
        except Unreachable:
            return []

    def channels_with_work(self, journal: Journal) -> list[str]:
        return [r[0] for r in self._all(f"SELECT channel FROM outbox WHERE {_OPEN} GROUP BY channel "
                                        "ORDER BY MIN(created), MIN(id)")]

    def channels_waiting_to_sign(self, journal: Journal) -> list[str]:
        return [r[0] for r in self._all("SELECT DISTINCT channel FROM outbox WHERE status = 'queued' "
                                        "AND actions LIKE '%%\"offer:%%' AND host = %s ORDER BY channel",
                                        (self.fleet.host,))]

    def get(self, journal: Journal, row_id: int) -> outbox.Row | None:
        rows = self._all(f"SELECT {_COLUMNS} FROM outbox WHERE id = %s", (row_id,))
        return _row(rows[0]) if rows else None

    def summary(self, journal: Journal) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for channel, status, n in self._all("SELECT channel, status, COUNT(*) FROM outbox "
                                            "GROUP BY channel, status ORDER BY channel, status"):
            out.setdefault(channel, {})[status] = int(n)
        return out

    def queued_count(self, journal: Journal) -> int:
        rows = self._all("SELECT COUNT(*) FROM outbox WHERE status = 'queued'")
        return int(rows[0][0]) if rows else 0


def box_for(journal: Journal) -> outbox.Box:
    """The outbox a send or a flush uses now: the fleet's shared one while its database
    answers (the host's waiting rows are forwarded to it first), else the host's own."""
    if journal.fleet is None:
        return outbox.LOCAL
    return shared_or_local(journal.fleet, journal)


def shared_or_local(host: Fleet, journal: Journal) -> outbox.Box:
    """The shared outbox, with this host's waiting rows forwarded into it first; the host's
    own outbox when the database cannot be reached (it was down less than RETRY ago, or it
    does not answer now)."""
    if host.known_down(journal):
        return outbox.LOCAL
    box = Shared(host, journal)
    try:
        box.connect()
        with box._cur() as cur:
            forward(host, journal, cur.connection)
    except Unreachable as e:
        box.close()
        host.note_down(journal, e)
        return outbox.LOCAL
    return box


def forward(host: Fleet, journal: Journal, conn: psycopg.Connection[Any]) -> int:
    """Move the messages this host queued in its own outbox into the shared one, each once,
    in order, with their original times; the number moved. Rows a live local process is
    sending stay here: it finishes them (what it gives back is moved by a later forward)."""
    marked = "SELECT * FROM outbox WHERE status = 'forwarding' ORDER BY id"
    if not journal.conn.execute("SELECT 1 FROM outbox WHERE status IN ('queued', 'sending', 'forwarding') "
                                "LIMIT 1").fetchone():
        return 0
    with host._forwarding(wait=True):
        now = journal.clock.now()
        with journal.tx() as c:
            rows = [outbox.Row.of(r) for r in c.execute(
                "SELECT * FROM outbox WHERE status IN ('queued', 'sending') ORDER BY id")]
            c.executemany("UPDATE outbox SET status = 'forwarding', claimed_by = NULL, claimed_at = NULL "
                          "WHERE id = ?", [(r.id,) for r in rows if not outbox.held_elsewhere(r, now)])
        moving = [outbox.Row.of(r) for r in journal.conn.execute(marked)]
        if not moving:
            return 0
        # A forward killed after this commit and before the local mark below is repeated by
        # the next one; (host, local_id) makes the repeat insert nothing.
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO outbox (host, local_id, channel, created, level, title, message, service, event_id, "
                "status, attempts, last_error, next_try, actions) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'queued', %s, %s, %s, %s) "
                "ON CONFLICT (host, local_id) DO NOTHING",
                [(host.host, r.id, r.channel, r.created, r.level, r.title, r.message, r.service, r.event_id,
                  r.attempts, r.last_error, r.next_try, r.actions) for r in moving])
        with journal.tx() as c:
            c.executemany("UPDATE outbox SET status = 'forwarded' WHERE id = ? AND status = 'forwarding'",
                          [(r.id,) for r in moving])
    return len(moving)


SYNC_STEPS.append(forward)  # every sync of a process that loaded this module forwards the outbox too
