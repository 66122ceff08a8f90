"""The fleet journal: one PostgreSQL database that the hosts of a fleet share.

Each host keeps its own SQLite journal (journal.py) and writes it first, as on one host: a
push is gated and reverted whether or not the database answers. What the hosts share lives
in PostgreSQL:

- every event, forwarded in order with its original time, each exactly once: (host, local_id)
  is unique there, and the host's cursor (kv fleet/forwarded) moves only after the database
  committed. A forward that dies half-way is repeated and inserts nothing twice;
- the quarantine and the freezes, merged both ways by their time: a tree reverted on one host
  is refused by every host's pre-receive, and a host that cannot reach the database enforces
  the list it last synced;
- the shared outbox, the deploy locks of services on several hosts and the handing over of
  phone decisions (their own modules, on this connection).

psycopg is imported here only, and this module only when `[opskit] journal` names a
database: the hooks' fast path and a host without a fleet never pay for it.

When the database cannot be reached, the host says so once (`fleet.unreachable`, kv
fleet/unreachable with the time it began) and tries again at most every RETRY seconds, so a
burst of events does not wait for a connect timeout each; `fleet.reachable` when it is back,
with how many events it forwarded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from opskit.base import statefs
from opskit.base.clock import parse_iso
from opskit.base.errors import OpsError, redact

if TYPE_CHECKING:
    import psycopg

    from opskit.base.config import FleetSettings
    from opskit.storage.journal import Journal

_T = TypeVar("_T")

SCHEMA_VERSION = 1
CONNECT_TIMEOUT = 3  # seconds: a host whose database is gone must not hold a push for long
STATEMENT_TIMEOUT_MS = 10_000
DEADLINE = STATEMENT_TIMEOUT_MS / 1000 + 5  # seconds one exchange with the database may take here
FORWARD_WAIT = 60.0  # seconds a full sync waits for another forwarder of this host
RETRY = 30.0  # seconds between attempts once the database was found unreachable
BATCH = 1000  # events per forwarding transaction

# Each version's DDL, applied in order inside one transaction by `opskit journal migrate`.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    host       TEXT NOT NULL,
    local_id   BIGINT NOT NULL,
    ts         TEXT NOT NULL,
    ts_precise TEXT,
    type       TEXT NOT NULL,
    service    TEXT,
    chain      TEXT,
    sha        TEXT,
    data       TEXT NOT NULL DEFAULT '{}',
    UNIQUE (host, local_id)
);
CREATE INDEX events_service ON events (service, id);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_host ON events (host, id);
CREATE INDEX events_chain ON events (chain, id);
-- status's per (host, service) last event and verdict: a skip scan, not a pass over every event
CREATE INDEX events_host_service ON events (host, service, id);

CREATE TABLE quarantine (
    service     TEXT NOT NULL,
    tree        TEXT NOT NULL,
    sha         TEXT NOT NULL,
    host        TEXT NOT NULL,
    event_id    BIGINT,
    reason      TEXT,
    created     TEXT NOT NULL,
    released    TEXT,
    released_by TEXT,
    PRIMARY KEY (service, tree)
);

-- value NULL: unfrozen at `updated` (a freeze lifted on one host is lifted on all)
CREATE TABLE frozen (
    service TEXT PRIMARY KEY,
    value   TEXT,
    host    TEXT NOT NULL,
    updated TEXT NOT NULL
);

-- the shared outbox (storage/fleet_outbox.py): local_id is the row's id in its host's SQLite
-- outbox when it was queued there while the database was away (NULL when queued here), so a
-- forward repeated after a crash inserts nothing twice
CREATE TABLE outbox (
    id         BIGSERIAL PRIMARY KEY,
    host       TEXT NOT NULL,
    local_id   BIGINT,
    channel    TEXT NOT NULL,
    created    TEXT NOT NULL,
    level      TEXT NOT NULL,
    title      TEXT,
    message    TEXT NOT NULL,
    service    TEXT,
    event_id   BIGINT,
    status     TEXT NOT NULL DEFAULT 'queued',
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try   TEXT,
    claimed_by TEXT,
    claimed_at TEXT,
    delivered  TEXT,
    remote_id  TEXT,
    actions    TEXT,
    UNIQUE (host, local_id)
);
CREATE INDEX outbox_status ON outbox (status, channel, id);
CREATE INDEX outbox_open ON outbox (channel, created, id) WHERE status IN ('queued', 'sending');

-- a decision tapped on a phone for a service another host runs, applied there once
CREATE TABLE handoff (
    id       BIGSERIAL PRIMARY KEY,
    host     TEXT NOT NULL,
    payload  TEXT NOT NULL,
    created  TEXT NOT NULL,
    taken    TEXT,
    taken_by TEXT
);
CREATE INDEX handoff_host ON handoff (host, id) WHERE taken IS NULL;

CREATE TABLE hosts (
    host      TEXT PRIMARY KEY,
    seen      TEXT NOT NULL,
    forwarded BIGINT NOT NULL DEFAULT 0,
    host_id   TEXT  -- the state dir forwarding as this host (kv fleet/host_id): one per name
);
""",
}

# The advisory-lock space: opskit's keys are (this, hashtext(name)), two int4s.
LOCK_SPACE = 0x6F70  # "op"
_MIGRATE_KEY = 1


# More work each sync does on its connection, added by the modules that own it (the shared
# outbox forwards the host's waiting messages): they sit above this module and the journal.
SYNC_STEPS: list[Callable[[Fleet, Journal, psycopg.Connection[Any]], object]] = []


class Unreachable(OpsError):
    """The fleet database cannot be used now; the message names why, never the password.
    `broken`: the connection itself is gone (a new one may answer), not a statement refused."""

    broken = False


def _say(e: BaseException) -> str:
    """An error from psycopg in one line, the password masked."""
    text = " ".join(str(e).split()) or type(e).__name__
    return redact(text)[:300]


class Fleet:
    """One host's view of the fleet database: a connection per process, opened on first use."""

    def __init__(self, settings: FleetSettings, state_dir: Path) -> None:
        self.url = settings.url.reveal()
        self.host = settings.host
        self.state_dir = Path(state_dir)
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0
        self._failed_at = 0.0  # monotonic: when this process last failed to reach it
        self._why = ""  # and why
        self._lock = threading.RLock()
        self._busy = threading.local()
        self._merged_at = 0.0  # monotonic: this process's last merge of quarantine and freezes
        self.dirty = False  # this process changed a quarantine row or a freeze since its last merge
        self.merging = False  # the merge is writing another host's change here
        self._lock_fd: tuple[int, int] | None = None  # the forward lock's descriptor, and whose (pid)

    # --- connection ---------------------------------------------------------------------------
    def open(self, *, check_schema: bool = True) -> psycopg.Connection[Any]:
        """A new connection (the caller owns it). Unreachable when it cannot be had."""
        try:
            import psycopg  # ~0.2 s: only a process that talks to the fleet database pays it
        except ImportError:
            raise Unreachable("psycopg is not installed; install opskit[postgres] "
                              "(pip install 'opskit[postgres]')") from None
        try:
            # Keepalives and tcp_user_timeout: a database host that vanishes from the network
            # (no reset, no answer) ends the connection in seconds, not the kernel's two hours.
            conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT, autocommit=True,
                                   application_name=f"opskit {self.host}"[:63], keepalives=1,
                                   keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
                                   tcp_user_timeout=15_000)
        except psycopg.Error as e:
            raise Unreachable(f"cannot connect: {_say(e)}") from None
        try:
            if check_schema:
                have = schema_version(conn)
                if have < SCHEMA_VERSION:
                    conn.close()
                    raise Unreachable(f"the database has schema version {have}, opskit needs "
                                      f"{SCHEMA_VERSION}: run `opskit journal migrate`")
        except psycopg.Error as e:
            conn.close()
            raise Unreachable(f"cannot read the schema: {_say(e)}") from None
        return conn

    def conn(self, *, force: bool = False) -> psycopg.Connection[Any]:
        """This process's connection. Without `force`, a database found unreachable less than
        RETRY seconds ago (here or by another process of this host) is not tried again."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid() and not self._conn.closed:
                return self._conn
            if not force and time.monotonic() - self._failed_at < RETRY:
                raise Unreachable(self._why)
            try:
                conn = self.open()
                with conn.cursor() as cur:
                    cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            except Unreachable as e:
                self._failed_at, self._why = time.monotonic(), str(e)
                raise
            self._conn, self._pid = conn, os.getpid()
            return conn

    def failed(self, why: str) -> None:
        """A statement failed on the cached connection: drop it and wait RETRY before the next try."""
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None
            self._failed_at, self._why = time.monotonic(), why

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def using(self, *, force: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """The connection for one piece of work; any database error becomes Unreachable (and
        the connection is dropped), so callers handle one exception."""
        conn = self.conn(force=force)  # without psycopg: Unreachable, naming the extra to install
        import psycopg  # loaded by conn() already
        try:
            yield conn
        except psycopg.Error as e:
            self.failed(_say(e))
            err = Unreachable(_say(e))
            err.broken = bool(conn.broken or conn.closed)
            raise err from None

    def ask(self, work: Callable[[psycopg.Connection[Any]], _T], *, force: bool = False) -> _T:
        """work(connection), on the cached connection; when that one proves dead (the server
        restarted since), once more on a new one. Unreachable when neither answers."""
        cached = self._conn is not None and self._pid == os.getpid()
        try:
            return self._within(work, force=force)
        except Unreachable as e:
            if not (cached and e.broken):  # a statement refused or timed out: not again
                raise
        return self._within(work, force=True)

    def _within(self, work: Callable[[psycopg.Connection[Any]], _T], *, force: bool) -> _T:
        """work(connection), cut by this process at DEADLINE: a server that stops answering
        (a stalled backend, a failover half-done) still ACKs, so neither the server's
        statement_timeout nor TCP's own timers end the wait. The socket is shut down under the
        waiting statement, which then fails like a lost connection."""
        with self.using(force=force) as conn:
            token = _WATCHDOG.watch(conn)
            try:
                return work(conn)
            finally:
                _WATCHDOG.done(token)

    # --- the host's record of reachability (kv fleet/unreachable in the local journal) --------
    def known_down(self, journal: Journal) -> bool:
        """Did this host (any process of it) fail to reach the database less than RETRY ago?
        Then a new process does not wait for a connect timeout again (a hook, each append)."""
        if self._conn is not None and self._pid == os.getpid():
            return False
        down = journal.kv_get("fleet", "unreachable")
        if not isinstance(down, dict):
            return False
        try:
            last = parse_iso(str(down.get("last_try") or down.get("since")))
        except ValueError:
            return False
        return (journal.clock.now() - last).total_seconds() < RETRY

    def note_down(self, journal: Journal, why: Unreachable | str) -> None:
        """A read or a send found the database away: written down like a forward's failure, so
        the next process of this host (the next push's pre-receive) does not wait for a connect
        timeout. Never raises: the local journal's own trouble is not the caller's."""
        with contextlib.suppress(Exception):
            self._down(journal, str(why))

    def _down(self, journal: Journal, why: str) -> None:
        was = journal.kv_get("fleet", "unreachable")
        now = journal.now()
        if not isinstance(was, dict):
            journal.kv_set("fleet", "unreachable", {"since": now, "error": why, "last_try": now})
            self._emit(journal, "fleet.unreachable", {"host": self.host, "error": why})
        else:
            journal.kv_set("fleet", "unreachable", {**was, "error": why, "last_try": now})

    def _up(self, journal: Journal, forwarded: int) -> None:
        was = journal.kv_get("fleet", "unreachable")
        if was is not None:
            journal.kv_delete("fleet", "unreachable")
            self._emit(journal, "fleet.reachable", {"host": self.host, "since": was.get("since"),
                                                    "forwarded": forwarded})

    def _emit(self, journal: Journal, type: str, data: dict[str, Any]) -> None:
        self._busy.on = True  # the event's own forward is the next sync's
        try:
            journal.append(type, None, data)
        finally:
            self._busy.on = False

    # --- forwarding ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _forwarding(self, wait: bool) -> Iterator[bool]:
        """One forwarder per host at a time, so events reach the database in their local order.
        Yields False, without waiting, when another process holds it and `wait` is off."""
        if self._lock_fd is None or self._lock_fd[1] != os.getpid():  # opened once per process
            fd = statefs.open_file(self.state_dir / "fleet-forward.lock", self.state_dir,
                                   os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            statefs.share_fd(fd, self.state_dir)
            self._lock_fd = (fd, os.getpid())
        fd = self._lock_fd[0]
        deadline = time.monotonic() + (FORWARD_WAIT if wait else 0.0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # the holder forwards ours too, or the next sync does
                    yield False
                    return
                time.sleep(0.05)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def after_append(self, journal: Journal) -> None:
        """Called after each local event: forward what is waiting, never raising."""
        if getattr(self._busy, "on", False):
            return
        self.sync(journal, batches=1)

    def sync(self, journal: Journal, *, batches: int | None = None, force: bool = False) -> int | None:
        """Forward the events not yet in the database (all, or `batches` of BATCH) and merge the
        quarantine and freezes both ways. The events forwarded; None when it could not."""
        if getattr(self._busy, "on", False):
            return None
        if not force and self.known_down(journal):
            return None
        self._busy.on = True
        try:
            try:
                # The merge reads both whole lists: after a local change, on a forced or full
                # sync, and at most every RETRY seconds otherwise (an append stays cheap).
                merge = force or batches is None or self.dirty or time.monotonic() - self._merged_at >= RETRY

                def work(conn: psycopg.Connection[Any]) -> int:
                    n = self._forward(journal, conn, batches)
                    if merge:
                        self.dirty = False
                        self._merge(journal, conn)
                        self._merged_at = time.monotonic()
                    for step in SYNC_STEPS:
                        step(self, journal, conn)
                    return n

                n = self.ask(work, force=force)
            except Unreachable as e:
                self._busy.on = False
                with contextlib.suppress(Exception):
                    self._down(journal, str(e))
                return None
            except Exception as e:  # the local journal (full, damaged): the step goes on
                self._busy.on = False
                with contextlib.suppress(Exception):
                    self._down(journal, f"{type(e).__name__}: {_say(e)}")
                return None
        finally:
            self._busy.on = False
        with contextlib.suppress(Exception):  # the local journal's trouble is its own to report
            self._up(journal, n)
        return n

    def _forward(self, journal: Journal, conn: psycopg.Connection[Any], batches: int | None) -> int:
        """Send the events after the cursor: all of them (batches None: waits for the lock), or
        what an append finds waiting. An append never queues behind another forwarder: the
        holder looks again once it lets the lock go, so it takes this event too (a burst of
        appends from several processes becomes a few large transactions)."""
        if batches == 0:
            return 0
        total = 0
        for _ in range(20):  # bounded: a host appending faster than it forwards goes on appending
            with self._forwarding(wait=batches is None) as mine:
                if not mine:
                    return total
                total += self._send(journal, conn, batches)
            if batches is None or journal.last_event_id() <= int(journal.kv_get("fleet", "forwarded") or 0):
                break
        return total

    def host_id(self, journal: Journal) -> str:
        """This state dir's own id in the fleet, made on first use."""
        got = journal.kv_get("fleet", "host_id")
        if isinstance(got, str) and got:
            return got
        import secrets  # once per state dir

        made = secrets.token_hex(16)
        journal.kv_set("fleet", "host_id", made)
        return made

    def _send(self, journal: Journal, conn: psycopg.Connection[Any], batches: int | None) -> int:
        total = done = 0
        while batches is None or done < batches:
            after = int(journal.kv_get("fleet", "forwarded") or 0)
            rows = journal.conn.execute(
                "SELECT id, ts, ts_precise, type, service, chain, sha, data FROM events "
                "WHERE id > ? ORDER BY id LIMIT ?", (after, BATCH)).fetchall()
            if not rows:
                break
            host_id = self.host_id(journal)
            # Pipelined: the statements go out together and the answers come back together,
            # two round trips per batch instead of five.
            with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO events (host, local_id, ts, ts_precise, type, service, chain, sha, data) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (host, local_id) DO NOTHING",
                    [(self.host, r["id"], r["ts"], r["ts_precise"], r["type"], r["service"], r["chain"],
                      r["sha"], r["data"]) for r in rows])
                # One state dir per host name: a second one (a rebuilt host, a cloned VM) would
                # send local ids the first already used, and those events would be taken for
                # ones already there and dropped. Its inserts above are rolled back with this.
                cur.execute(
                    "INSERT INTO hosts (host, seen, forwarded, host_id) VALUES (%s, %s, %s, %s) ON CONFLICT (host) "
                    "DO UPDATE SET seen = excluded.seen, forwarded = GREATEST(hosts.forwarded, excluded.forwarded), "
                    "host_id = COALESCE(hosts.host_id, excluded.host_id) "
                    "WHERE hosts.host_id IS NULL OR hosts.host_id = excluded.host_id RETURNING host",
                    (self.host, journal.now(), rows[-1]["id"], host_id))
                if cur.fetchone() is None:
                    raise Unreachable(f"the host name {self.host!r} is already used in the fleet by another "
                                      "state dir (a rebuilt or cloned host?); set [opskit] host to a name of "
                                      "its own: its events stay here until then")
            journal.kv_set("fleet", "forwarded", int(rows[-1]["id"]))
            total += len(rows)
            done += 1
        return total

    # --- quarantine and freezes: merged both ways, the newer side wins -----------------------
    def _merge(self, journal: Journal, conn: psycopg.Connection[Any]) -> None:
        local = [dict(r) for r in journal.conn.execute("SELECT * FROM quarantine")]
        with conn.transaction(), conn.cursor() as cur:
            for r in local:
                cur.execute(_PG_QUARANTINE_UPSERT, (r["service"], r["tree"], r["sha"], self.host, r["event_id"],
                                                    r["reason"], r["created"], r["released"], r["released_by"]))
            cur.execute("SELECT service, tree, sha, event_id, reason, created, released, released_by "
                        "FROM quarantine")
            shared = cur.fetchall()
        with journal.tx() as c:
            for s in shared:
                c.execute(_LOCAL_QUARANTINE_UPSERT, s)
        self._merge_frozen(journal, conn)

    def _merge_frozen(self, journal: Journal, conn: psycopg.Connection[Any]) -> None:
        mine = journal.kv_all("frozen")
        lifted = journal.kv_all("fleet-unfrozen")  # service → when it was unfrozen here
        with conn.transaction(), conn.cursor() as cur:
            for service, value in mine.items():
                cur.execute(_PG_FROZEN_UPSERT, (service, json.dumps(value), self.host, _since(value)))
            for service, when in lifted.items():
                cur.execute(_PG_FROZEN_UPSERT, (service, None, self.host, str(when)))
            cur.execute("SELECT service, value, updated FROM frozen")
            shared = cur.fetchall()
        # What the merge applies here is another host's change, not this host's: written as
        # it is, never as a new freeze or unfreeze of ours (that would be pushed back later
        # with our time and could undo a newer one elsewhere).
        self.merging = True
        try:
            for service, value, updated in shared:
                if value is None:
                    if service in mine and _since(mine[service]) <= updated:
                        journal.kv_delete("frozen", service)
                elif service not in mine or _since(mine[service]) < updated:
                    if str(lifted.get(service) or "") < updated:
                        journal.kv_set("frozen", service, json.loads(value))
            for service in lifted:
                journal.kv_delete("fleet-unfrozen", service)
        finally:
            self.merging = False

    # --- reads: the newer of the shared and the local answer --------------------------------
    def quarantined(self, journal: Journal, service: str, tree: str) -> dict[str, Any] | None:
        """The (service, tree) quarantine row in force, or None. The shared row and the local
        one are compared by their time: a release on another host lifts it here, a revert made
        here while the database was away still holds, and without the database the last
        synced list is the answer."""
        local = journal.conn.execute("SELECT * FROM quarantine WHERE service = ? AND tree = ?",
                                     (service, tree)).fetchone()
        newest = dict(local) if local else None
        try:
            def read(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
                with conn.cursor() as cur:
                    cur.execute("SELECT service, tree, sha, event_id, reason, created, released, released_by, "
                                "host FROM quarantine WHERE service = %s AND tree = %s", (service, tree))
                    got = cur.fetchone()
                    names = [d.name for d in cur.description or ()]
                return dict(zip(names, got, strict=True)) if got else None

            shared = self.ask(read) if not self.known_down(journal) else None
        except Unreachable as e:
            self.note_down(journal, e)
            shared = None
        if shared is not None:
            if newest is None or _newer(shared, newest):
                newest = shared
        return newest if newest is not None and newest.get("released") is None else None

    def frozen(self, journal: Journal, service: str) -> dict[str, Any] | None:
        """The service's freeze in force, or None: the newer of the shared and the local state
        (a freeze or an unfreeze on any host counts; without the database, the local one)."""
        local = journal.kv_get("frozen", service)
        lifted = journal.kv_get("fleet-unfrozen", service)
        when, value = (_since(local), local) if local is not None else (str(lifted or ""), None)
        try:
            def read(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
                with conn.cursor() as cur:
                    cur.execute("SELECT value, updated FROM frozen WHERE service = %s", (service,))
                    return cur.fetchone()

            row = self.ask(read) if not self.known_down(journal) else None
        except Unreachable as e:
            self.note_down(journal, e)
            row = None
        if row is not None and str(row[1]) > when:
            value = json.loads(row[0]) if row[0] is not None else None
        if value is None:
            return None
        return value if isinstance(value, dict) else {"reason": str(value)}


class _Watchdog:
    """One thread per process that cuts a connection whose exchange outlived DEADLINE (a
    timer per exchange cost a thread start on every append)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, tuple[psycopg.Connection[Any], float]] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._n = 0

    def watch(self, conn: psycopg.Connection[Any]) -> int:
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                self._active.clear()  # a forked child watches its own exchanges only
                self._thread = threading.Thread(target=self._run, name="opskit-fleet-deadline", daemon=True)
                self._pid = os.getpid()
                self._thread.start()
            self._n += 1
            self._active[self._n] = (conn, time.monotonic() + DEADLINE)
            return self._n

    def done(self, token: int) -> None:
        with self._lock:
            self._active.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                late = [t for t, (_, until) in self._active.items() if until <= now]
                conns = [self._active.pop(t)[0] for t in late]
            for conn in conns:
                _shut(conn)


_WATCHDOG = _Watchdog()


def _shut(conn: psycopg.Connection[Any]) -> None:
    """End the connection under whatever waits on it (a timer's thread: the waiting thread
    holds the connection's own lock, so conn.close() here would wait for it)."""
    import socket  # only when a database stopped answering

    with contextlib.suppress(Exception):
        s = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()


def _version(row: Mapping[str, Any]) -> str:
    return str(row.get("released") or row.get("created") or "")


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Is quarantine row `a` the one in force over `b`? The later one; at the same second, a
    release (it always follows its quarantine). The SQL upserts below say the same."""
    va, vb = _version(a), _version(b)
    return va > vb or (va == vb and a.get("released") is not None and b.get("released") is None)


def _since(value: Any) -> str:
    """When a freeze began, to the microsecond where it was written so (a freeze and its
    unfreeze can fall in one second)."""
    if not isinstance(value, dict):
        return ""
    return str(value.get("since_precise") or value.get("since") or "")


_PG_QUARANTINE_UPSERT = """
INSERT INTO quarantine (service, tree, sha, host, event_id, reason, created, released, released_by)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (service, tree) DO UPDATE SET sha = excluded.sha, host = excluded.host,
    event_id = excluded.event_id, reason = excluded.reason, created = excluded.created,
    released = excluded.released, released_by = excluded.released_by
WHERE COALESCE(excluded.released, excluded.created) > COALESCE(quarantine.released, quarantine.created)
   OR (COALESCE(excluded.released, excluded.created) = COALESCE(quarantine.released, quarantine.created)
       AND excluded.released IS NOT NULL AND quarantine.released IS NULL)
"""

_LOCAL_QUARANTINE_UPSERT = """
INSERT INTO quarantine (service, tree, sha, event_id, reason, created, released, released_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (service, tree) DO UPDATE SET sha = excluded.sha, event_id = excluded.event_id,
    reason = excluded.reason, created = excluded.created, released = excluded.released,
    released_by = excluded.released_by
WHERE COALESCE(excluded.released, excluded.created) > COALESCE(quarantine.released, quarantine.created)
   OR (COALESCE(excluded.released, excluded.created) = COALESCE(quarantine.released, quarantine.created)
       AND excluded.released IS NOT NULL AND quarantine.released IS NULL)
"""

_PG_FROZEN_UPSERT = """
INSERT INTO frozen (service, value, host, updated) VALUES (%s, %s, %s, %s)
ON CONFLICT (service) DO UPDATE SET value = excluded.value, host = excluded.host, updated = excluded.updated
WHERE excluded.updated > frozen.updated
   OR (excluded.updated = frozen.updated AND excluded.value IS NOT NULL AND frozen.value IS NOT NULL)
"""


# --- schema ---------------------------------------------------------------------------------

def schema_version(conn: psycopg.Connection[Any]) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('opskit_schema') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return 0
        cur.execute("SELECT COALESCE(MAX(version), 0) FROM opskit_schema")
        got = cur.fetchone()
        return int(got[0]) if got else 0


def migrate(fleet: Fleet) -> list[int]:
    """Bring the database's schema to SCHEMA_VERSION; the versions applied (none: it was current).
    Concurrent runs queue on an advisory lock; each version is one transaction."""
    applied: list[int] = []
    import psycopg  # only `opskit journal migrate` gets here

    conn = fleet.open(check_schema=False)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, _MIGRATE_KEY))
            cur.execute("CREATE TABLE IF NOT EXISTS opskit_schema (version INTEGER PRIMARY KEY, applied TEXT NOT NULL)")
            have = schema_version(conn)
            for version in sorted(MIGRATIONS):
                if version <= have:
                    continue
                cur.execute(MIGRATIONS[version].encode())
                cur.execute("INSERT INTO opskit_schema (version, applied) VALUES (%s, now()::text)", (version,))
                applied.append(version)
    except psycopg.Error as e:
        raise Unreachable(f"migrate failed: {_say(e)}") from None
    finally:
        conn.close()
    return applied
