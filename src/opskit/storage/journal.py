"""The event journal: one SQLite file in the state dir.

Hooks, cron jobs and manual runs write at once, so the database is in WAL mode with a
busy timeout and every write is one short BEGIN IMMEDIATE transaction. Besides events it
holds the small tables every step shares: deploys (what is live, what was last good),
quarantine (trees that were auto-reverted), the notification outbox, and a key/value
table for per-service state (frozen, drift, job health).

synchronous=NORMAL in WAL mode: a committed event survives a crash or SIGKILL of any
writer; only a power loss can take the last few commits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from opskit.base import bus, statefs
from opskit.base.clock import SYSTEM, Clock, iso, iso_precise, parse_iso
from opskit.base.errors import UsageError, redact
from opskit.storage import fallback

if TYPE_CHECKING:
    from opskit.base.config import FleetSettings
    from opskit.storage.fleet import Fleet

_T = TypeVar("_T")
_SQL_INT_MAX = 2**63 - 1  # SQLite integers are 64-bit

_CONNECTING = threading.Lock()  # one connect_checked at a time: its new descriptors are its own


def connect_checked(db: str | os.PathLike[str], state_dir: str | os.PathLike[str], mode: str = "rw",
                    *, seen: os.stat_result | None = None, timeout: float = 5.0,
                    isolation_level: Literal["DEFERRED", "EXCLUSIVE", "IMMEDIATE"] | None = "DEFERRED",
                    ) -> sqlite3.Connection:
    """sqlite3.connect() of an existing db in the state dir that is the very file check_sqlite
    saw (`seen`, else checked here): mode "rw" or "ro" never creates it (a link's missing target
    stays missing: sqlite3.OperationalError), and the main file SQLite opened must be that inode
    before anything is read or written, else the connection is closed and statefs.Unsafe
    (statefs' module docstring). FileNotFoundError when db is absent."""
    if seen is None:
        seen = statefs.check_sqlite(db, state_dir)
        if seen is None:
            raise FileNotFoundError(2, "no such database", os.fspath(db))
    uri = f"file:{urllib.parse.quote(os.path.abspath(db))}?mode={mode}"
    with _CONNECTING:
        before = statefs.open_files()
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=isolation_level)
        try:
            statefs.check_opened(before, seen, db)
        except BaseException:
            conn.close()
            raise
    return conn


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      TEXT NOT NULL,
    type    TEXT NOT NULL,
    service TEXT,
    chain   TEXT,
    sha     TEXT,
    data    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_service ON events (service, id);
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE INDEX IF NOT EXISTS events_chain ON events (chain, id);
-- opskit metrics counts deploys and rollbacks by service from this index alone (storage/stats.py);
-- an older journal gets it at its next open (one pass over the table).
CREATE INDEX IF NOT EXISTS events_type_service ON events (type, service);

CREATE TABLE IF NOT EXISTS deploys (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    service  TEXT NOT NULL,
    sha      TEXT NOT NULL,
    previous TEXT,
    chain    TEXT,
    kind     TEXT NOT NULL DEFAULT 'deploy',   -- deploy | revert | heal
    status   TEXT NOT NULL,                    -- running | healthy | failed | reverted | interrupted
    step     TEXT,                             -- where a running deploy is
    pid      INTEGER,
    started  TEXT NOT NULL,
    finished TEXT,
    reason   TEXT
);
CREATE INDEX IF NOT EXISTS deploys_service ON deploys (service, id);

CREATE TABLE IF NOT EXISTS quarantine (
    tree       TEXT NOT NULL,
    service    TEXT NOT NULL,
    sha        TEXT NOT NULL,
    event_id   INTEGER,
    reason     TEXT,
    created    TEXT NOT NULL,
    released   TEXT,
    released_by TEXT,
    PRIMARY KEY (service, tree)
);

CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    channel    TEXT NOT NULL,
    created    TEXT NOT NULL,
    level      TEXT NOT NULL,
    title      TEXT,
    message    TEXT NOT NULL,
    service    TEXT,
    event_id   INTEGER,
    status     TEXT NOT NULL DEFAULT 'queued',  -- queued | sending | delivered | broken; forwarding | forwarded: moved to a fleet's shared outbox
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_try   TEXT,
    claimed_by INTEGER,
    claimed_at TEXT,
    delivered  TEXT,
    remote_id  TEXT
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox (status, channel, id);

CREATE TABLE IF NOT EXISTS kv (
    scope   TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
"""


@dataclass(frozen=True)
class Event:
    id: int
    ts: str
    type: str
    service: str | None
    data: dict[str, Any] = field(default_factory=dict)
    chain: str | None = None
    sha: str | None = None
    ts_precise: str | None = None  # the same instant to the microsecond (older events: None)
    host: str | None = None  # the host that journaled it (read from a fleet journal)

    def to_dict(self) -> dict[str, Any]:
        """The §5 shape, plus the chain id and commit that link a push's steps."""
        out: dict[str, Any] = {"id": self.id, "ts": self.ts, "type": self.type,
                               "service": self.service, "data": self.data}
        if self.chain:
            out["chain"] = self.chain
        if self.sha:
            out["commit"] = self.sha
        if self.ts_precise:
            out["ts_precise"] = self.ts_precise
        if self.host:
            out["host"] = self.host
        return out

    @property
    def when(self) -> dt.datetime:
        """The event's time, to the microsecond where it was stored so."""
        return parse_iso(self.ts_precise or self.ts)


def _row_event(row: sqlite3.Row) -> Event:
    return Event(id=row["id"], ts=row["ts"], type=row["type"], service=row["service"],
                 data=json.loads(row["data"]), chain=row["chain"], sha=row["sha"],
                 ts_precise=row["ts_precise"] if "ts_precise" in row.keys() else None)


class Journal:
    def __init__(self, state_dir: Path, clock: Clock = SYSTEM, *, fleet: FleetSettings | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.fleet: Fleet | None = None
        if fleet is not None:
            from opskit.storage.fleet import Fleet  # psycopg itself only once it connects

            self.fleet = Fleet(fleet, self.state_dir)
        problem = statefs.not_writable(self.state_dir)
        if problem:
            raise UsageError(problem)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as e:
            raise UsageError(
                f"state dir {self.state_dir}: cannot create it ({e.strerror}); "
                "set [opskit] state_dir or OPSKIT_STATE_DIR to a writable folder"
            ) from None
        self.path = self.state_dir / "journal.db"
        self._local = threading.local()
        self._init_lock = threading.Lock()
        self._shadow: dict[int, dict[str, Any]] = {}  # deploys rows that could not be written
        self._shadow_errors: dict[int, sqlite3.DatabaseError] = {}
        # Created by us, not by SQLite: never through a planted link, shared (statefs). O_EXCL, so
        # an existing journal is never opened here: closing any descriptor of it would drop the
        # POSIX locks this process's SQLite connections hold on it (sqlite.org/howtocorrupt.html).
        try:
            os.close(statefs.open_file(self.path, self.state_dir, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except (FileExistsError, FileNotFoundError):
            pass
        with self._init_lock:
            conn = self.conn
            conn.executescript(SCHEMA)
            add_columns(conn)
            # SQLite gives -wal and -shm the journal's own mode, so sharing the journal shares them.
            for f in (self.path, self.path.with_name("journal.db-wal"), self.path.with_name("journal.db-shm")):
                statefs.share(f, self.state_dir)
        self.replay_fallback()

    # --- when a write fails (docs/ARCHITECTURE.md, faults) -------------------------------------
    def _kept(self, record: dict[str, Any], e: BaseException) -> None:
        """A write failed (disk full, I/O error, corrupt file): keep it aside, go on."""
        fallback.keep(self.state_dir, {"ts": self.now(), **record}, e, self.path)

    def keep_outbox(self, channel: str, *, level: str, title: str | None, message: str, service: str | None,
                    event_id: int | None, error: BaseException) -> None:
        """A message the outbox could not hold and its channel did not take: queued once there is room."""
        self._kept({"kind": "outbox", "channel": channel, "level": level, "title": title, "message": message,
                    "service": service, "event_id": event_id}, error)

    def read_or(self, read: Callable[[], _T], default: _T) -> _T:
        """A read the immune system can go on without (the last known-good commit, a freeze
        flag for a message): on a damaged journal, `default`, said once on stderr with the path
        and the fix. A revert must not stop because history cannot be read; git has the facts."""
        try:
            return read()
        except sqlite3.DatabaseError as e:
            fallback.warn_read(self.path, e)
            return default

    def replay_fallback(self) -> int:
        """Journal what earlier writes had to keep aside, exactly once; 0 when nothing (or no room)."""
        if not any(p.exists() for p in fallback.locations(self.state_dir)):
            return 0
        try:
            return fallback.replay(self.state_dir, self.conn, _apply_kept)
        except sqlite3.DatabaseError:
            return 0  # still no room (or still damaged): they stay aside for the next one

    # --- connection ---------------------------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            # SQLite opens by name and follows links: the file it opened must be the one checked,
            # and it never creates one (a link swapped in between: connect_checked).
            seen = statefs.check_sqlite(self.path, self.state_dir)
            if seen is None:  # removed since __init__ made it: made again here, never by SQLite
                with contextlib.suppress(FileExistsError):
                    os.close(statefs.open_file(self.path, self.state_dir,
                                               os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o644))
                seen = statefs.check_sqlite(self.path, self.state_dir)
            try:
                if seen is None:
                    raise sqlite3.OperationalError("it vanished as it was made")
                conn = connect_checked(self.path, self.state_dir, "rw", seen=seen, timeout=30.0,
                                              isolation_level=None)
            except sqlite3.OperationalError as e:
                statefs.check_sqlite(self.path, self.state_dir)  # a link swapped in since: Unsafe, the fix
                raise UsageError(
                    f"journal {self.path}: cannot open ({e}); check the state dir's permissions"
                ) from None
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue, not deadlock."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def now(self) -> str:
        return iso(self.clock.now())

    # --- events -------------------------------------------------------------------------------
    def append(self, type: str, service: str | None = None, data: dict[str, Any] | None = None,
               *, chain: str | None = None, sha: str | None = None) -> Event:
        payload = _clean(redact(json.dumps(data or {}, default=str, ensure_ascii=False)))
        service = _clean(service) if service is not None else None
        when = self.clock.now()
        ts, precise = iso(when), iso_precise(when)
        try:
            with self.tx() as c:
                cur = c.execute(
                    "INSERT INTO events (ts, type, service, chain, sha, data, ts_precise) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (ts, type, service, chain, sha, payload, precise),
                )
                eid = cur.lastrowid
        except sqlite3.DatabaseError as e:
            # The pipeline must go on (a revert, a notification): kept aside, journaled later; id 0.
            self._kept({"kind": "event", "ts": ts, "ts_precise": precise, "type": type, "service": service,
                        "chain": chain, "sha": sha, "data": payload}, e)
            eid = 0
        assert eid is not None
        if eid:
            # Reactions (base/bus.py): a matching event starts the dispatcher; a start that
            # fails is written down, never raised into the step that emitted the event.
            problem = bus.appended(self.state_dir, type, service, data or {})
            if problem:
                self.append("reaction.fail", None, {"reaction": None, "stage": "trigger", "event_id": eid,
                                                    "reason": problem})
            if self.fleet is not None:
                self.fleet.after_append(self)  # forwarded now, or once the database is back
        return Event(id=eid, ts=ts, type=type, service=service, data=json.loads(payload),
                     chain=chain, sha=sha, ts_precise=precise)

    def query(self, *, service: str | None = None, type_prefix: str | None = None,
              since: str | dt.datetime | None = None, limit: int | None = None,
              after_id: int | None = None, chain: str | None = None,
              types: tuple[str, ...] = ()) -> list[Event]:
        """Matching events, oldest first; with `limit`, the newest `limit` of them. `types`:
        any of these, each an exact type or a prefix ending in "." (storage/event_types.py
        `parse`, the reading of `opskit events --type`)."""
        where, args = event_filters("?", service=service, type_prefix=type_prefix, types=types, since=since,
                                    after_id=after_id, chain=chain)
        sql = "SELECT * FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if limit is not None:
            sql += " ORDER BY id DESC LIMIT ?"
            args.append(min(limit, _SQL_INT_MAX))  # `--limit 99999999999999999999` means all of them
            rows = list(self.conn.execute(sql, args))
            rows.reverse()
        else:
            sql += " ORDER BY id"
            rows = list(self.conn.execute(sql, args))
        return [_row_event(r) for r in rows]

    def last(self, type_prefix: str | None = None, service: str | None = None) -> Event | None:
        found = self.query(type_prefix=type_prefix, service=service, limit=1)
        return found[0] if found else None

    def newest_of(self, types: Sequence[str], service: str, since: str | dt.datetime) -> Event | None:
        """The newest event of one of `types` for `service` at or after `since`. Each type is looked
        up by the (type, id) index, newest first, so `opskit status` (run often) reads a few rows,
        not the service's whole history."""
        if not types:
            return None
        cutoff = since if isinstance(since, str) else iso(since)
        one = "SELECT * FROM (SELECT * FROM events WHERE type = ? AND service = ? AND ts >= ? ORDER BY id DESC LIMIT 1)"
        sql = " UNION ALL ".join([one] * len(types)) + " ORDER BY id DESC LIMIT 1"
        args: list[Any] = []
        for t in types:
            args += [t, service, cutoff]
        row = self.conn.execute(sql, args).fetchone()
        return _row_event(row) if row else None

    def get(self, event_id: int) -> Event | None:
        row = self.conn.execute("SELECT * FROM events WHERE id = ?", (event_id,)).fetchone()
        return _row_event(row) if row else None

    def follow(self, *, poll: float = 0.5, start_after: int | None = None,
               **filters: Any) -> Iterator[Event]:
        """Events as they are appended; runs until the caller stops iterating."""
        if start_after is None:
            row = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            start_after = int(row[0])
        last = start_after
        while True:
            batch = self.query(after_id=last, **filters)
            for ev in batch:
                last = ev.id
                yield ev
            if not batch:
                self.clock.sleep(poll)

    # --- key/value state ---------------------------------------------------------------------
    def kv_get(self, scope: str, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM kv WHERE scope = ? AND key = ?", (scope, key)).fetchone()
        return json.loads(row[0]) if row else None

    def kv_all(self, scope: str) -> dict[str, Any]:
        return {r[0]: json.loads(r[1]) for r in
                self.conn.execute("SELECT key, value FROM kv WHERE scope = ? ORDER BY key", (scope,))}

    def kv_set(self, scope: str, key: str, value: Any) -> None:
        text = redact(json.dumps(value, default=str))
        try:
            with self.tx() as c:
                c.execute(
                    "INSERT INTO kv (scope, key, value, updated) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                    (scope, key, text, self.now()),
                )
        except sqlite3.DatabaseError as e:
            self._kept({"kind": "kv", "scope": scope, "key": key, "value": text}, e)
            return
        if scope == "frozen":
            self._shared_changed()

    def kv_delete(self, scope: str, key: str) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM kv WHERE scope = ? AND key = ?", (scope, key))
            if self.fleet is not None and scope == "frozen" and not self.fleet.merging:  # lifted on every host
                c.execute("INSERT INTO kv (scope, key, value, updated) VALUES ('fleet-unfrozen', ?, ?, ?) "
                          "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                          (key, json.dumps(iso_precise(self.clock.now())), self.now()))
        if scope == "frozen":
            self._shared_changed()

    # --- deploys ------------------------------------------------------------------------------
    def deploy_start(self, service: str, sha: str, *, previous: str | None, chain: str | None,
                     kind: str = "deploy") -> int:
        """The new row's id; negative when it could not be written (kept in memory, and kept
        aside when it finishes, so the verdict reaches the journal later)."""
        started = self.now()
        try:
            with self.tx() as c:
                cur = c.execute(
                    "INSERT INTO deploys (service, sha, previous, chain, kind, status, step, pid, started) "
                    "VALUES (?, ?, ?, ?, ?, 'running', 'start', ?, ?)",
                    (service, sha, previous, chain, kind, os.getpid(), started),
                )
                assert cur.lastrowid is not None
                return cur.lastrowid
        except sqlite3.DatabaseError as e:
            shadow_id = min(self._shadow, default=0) - 1  # below every live one: ids never collide
            self._shadow[shadow_id] = {"service": service, "sha": sha, "previous": previous, "chain": chain,
                                       "kind": kind, "status": "running", "step": "start", "pid": os.getpid(),
                                       "started": started, "finished": None, "reason": None}
            self._shadow_errors[shadow_id] = e  # named when the row is kept aside: full, corrupt, I/O
            return shadow_id

    def deploy_step(self, deploy_id: int, step: str) -> None:
        if deploy_id in self._shadow:
            self._shadow[deploy_id]["step"] = step
            return
        try:
            with self.tx() as c:
                c.execute("UPDATE deploys SET step = ? WHERE id = ?", (step, deploy_id))
        except sqlite3.DatabaseError:
            pass  # where a running deploy is: only its verdict must not be lost

    def deploy_finish(self, deploy_id: int, status: str, reason: str | None = None) -> None:
        finished, why = self.now(), redact(reason) if reason else None
        if deploy_id in self._shadow:
            row = self._shadow.pop(deploy_id)
            row.update(status=status, finished=finished, reason=why)
            self._kept({"kind": "deploy", "row": row}, self._shadow_errors.pop(deploy_id))
            return
        try:
            with self.tx() as c:
                c.execute("UPDATE deploys SET status = ?, finished = ?, reason = ? WHERE id = ?",
                          (status, finished, why, deploy_id))
        except sqlite3.DatabaseError as e:
            self._kept({"kind": "deploy_finish", "deploy_id": deploy_id, "status": status,
                        "finished": finished, "reason": why}, e)

    def deploys(self, service: str, limit: int = 20) -> list[sqlite3.Row]:
        return list(self.conn.execute(
            "SELECT * FROM deploys WHERE service = ? ORDER BY id DESC LIMIT ?", (service, limit)))

    def frozen(self, service: str) -> dict[str, Any] | None:
        """The service's freeze (reason, event_id, since), or None: the one reading of it, for
        the pipeline, pre-receive and `status` alike."""
        if self.fleet is not None:
            value: Any = self.fleet.frozen(self, service)
        else:
            value = self.kv_get("frozen", service)
        if value is None and any(p.exists() for p in fallback.locations(self.state_dir)):
            value = fallback.kept_value(self.state_dir, "frozen", service)  # frozen while the disk was full
        if isinstance(value, dict):
            return value
        return {"reason": str(value)} if value else None  # a damaged entry still freezes

    def deployed_shas(self) -> dict[str, list[str]]:
        """Every service → the commits it ever deployed, newest first, each once (one query)."""
        shas: dict[str, list[str]] = {}
        for service, sha in self.conn.execute("SELECT service, sha FROM deploys ORDER BY id DESC"):
            lst = shas.setdefault(service, [])
            if sha not in lst:
                lst.append(sha)
        return shas

    def sent_at(self, outbox_id: int) -> str | None:
        """When the notify.sent event of an outbox row was written (sub-second), if it was."""
        row = self.conn.execute("SELECT ts_precise FROM events WHERE type = 'notify.sent' "
                                "AND json_extract(data, '$.outbox_id') = ? ORDER BY id LIMIT 1",
                                (outbox_id,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def event_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def last_event_id(self) -> int:
        """The newest event's id (0: none yet), where `--follow` starts."""
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def running_deploys(self, service: str | None = None) -> list[sqlite3.Row]:
        if service is None:
            return list(self.conn.execute("SELECT * FROM deploys WHERE status = 'running' ORDER BY id"))
        return list(self.conn.execute(
            "SELECT * FROM deploys WHERE status = 'running' AND service = ? ORDER BY id", (service,)))

    def last_good(self, service: str) -> str | None:
        """The last commit that passed its health gate: the rollback target."""
        row = self.conn.execute(
            "SELECT sha FROM deploys WHERE service = ? AND status = 'healthy' ORDER BY id DESC LIMIT 1",
            (service,)).fetchone()
        return row[0] if row else None

    def quarantine_add(self, service: str, tree: str, sha: str, event_id: int | None, reason: str) -> None:
        try:
            with self.tx() as c:
                _quarantine_insert(c, service, tree, sha, event_id, redact(reason), self.now())
        except sqlite3.DatabaseError as e:
            self._kept({"kind": "quarantine", "service": service, "tree": tree, "sha": sha,
                        "event_id": event_id, "reason": redact(reason)}, e)
        self._shared_changed()

    def quarantined(self, service: str, tree: str) -> dict[str, Any] | None:
        """The quarantine row in force for (service, tree); in a fleet, any host's."""
        if self.fleet is not None:
            return self.fleet.quarantined(self, service, tree)
        row = self.conn.execute(
            "SELECT * FROM quarantine WHERE service = ? AND tree = ? AND released IS NULL",
            (service, tree)).fetchone()
        return dict(row) if row else None

    def quarantine_list(self, service: str | None = None, include_released: bool = False) -> list[sqlite3.Row]:
        if self.fleet is not None:  # every host's rows, pulled first (kept as last synced without the database)
            self.fleet.dirty = True
            self.fleet.sync(self, batches=0)
        sql = "SELECT * FROM quarantine WHERE 1=1"
        args: list[Any] = []
        if service:
            sql += " AND service = ?"
            args.append(service)
        if not include_released:
            sql += " AND released IS NULL"
        return list(self.conn.execute(sql + " ORDER BY created", args))

    def quarantine_release(self, service: str, tree_prefix: str, by: str) -> int:
        if self.fleet is not None:  # a tree another host reverted is released here too
            self.fleet.dirty = True
            self.fleet.sync(self, batches=0)
        with self.tx() as c:
            cur = c.execute(
                "UPDATE quarantine SET released = ?, released_by = ? "
                "WHERE service = ? AND released IS NULL AND (tree LIKE ? OR sha LIKE ?)",
                (self.now(), by, service, tree_prefix + "%", tree_prefix + "%"),
            )
            n = cur.rowcount
        if n:
            self._shared_changed()
        return n

    def _shared_changed(self) -> None:
        """A quarantine row or a freeze changed here: in a fleet, every host learns it now
        (or at this host's next sync, when the database is away)."""
        if self.fleet is not None and not self.fleet.merging:
            self.fleet.dirty = True
            self.fleet.sync(self, batches=0)


# Columns added after the first release: CREATE TABLE IF NOT EXISTS leaves an older journal
# without them, so they are added here (a concurrent opener may win the race; that is fine).
_LATER_COLUMNS = (("events", "ts_precise", "TEXT"), ("outbox", "actions", "TEXT"))


def add_columns(conn: sqlite3.Connection) -> None:
    for table, column, kind in _LATER_COLUMNS:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):
                    raise


def _quarantine_insert(c: sqlite3.Connection, service: str, tree: str, sha: str, event_id: int | None,
                       reason: str, created: str) -> None:
    c.execute(
        "INSERT INTO quarantine (tree, service, sha, event_id, reason, created) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (service, tree) DO UPDATE SET sha = excluded.sha, event_id = excluded.event_id, "
        "reason = excluded.reason, created = excluded.created, released = NULL, released_by = NULL",
        (tree, service, sha, event_id, reason, created),
    )


def _apply_kept(c: sqlite3.Connection, rec: dict[str, Any]) -> None:
    """One record a failed write kept aside (fallback.py), written now, inside the caller's transaction."""
    kind, ts = rec.get("kind"), str(rec.get("ts") or "")
    if kind == "event":
        data = json.loads(rec["data"]) if isinstance(rec.get("data"), str) else rec.get("data") or {}
        data = {**data, "journaled_late": True}
        c.execute("INSERT INTO events (ts, type, service, chain, sha, data, ts_precise) VALUES (?, ?, ?, ?, ?, ?, ?)",
                  (ts, rec["type"], rec.get("service"), rec.get("chain"), rec.get("sha"),
                   json.dumps(data, ensure_ascii=False), rec.get("ts_precise")))
    elif kind == "deploy":
        r = rec["row"]
        c.execute("INSERT INTO deploys (service, sha, previous, chain, kind, status, step, pid, started, finished, "
                  "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (r["service"], r["sha"], r["previous"], r["chain"], r["kind"], r["status"], r["step"], r["pid"],
                   r["started"], r["finished"], r["reason"]))
    elif kind == "deploy_finish":
        c.execute("UPDATE deploys SET status = ?, finished = ?, reason = ? WHERE id = ? AND status = 'running'",
                  (rec["status"], rec["finished"], rec["reason"], rec["deploy_id"]))
    elif kind == "kv":
        c.execute("INSERT INTO kv (scope, key, value, updated) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated = excluded.updated "
                  "WHERE kv.updated <= excluded.updated", (rec["scope"], rec["key"], rec["value"], ts))
    elif kind == "quarantine":
        _quarantine_insert(c, rec["service"], rec["tree"], rec["sha"], rec.get("event_id"), rec.get("reason") or "", ts)
    elif kind == "outbox":
        c.execute("INSERT INTO outbox (channel, created, level, title, message, service, event_id, status) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued')",
                  (rec["channel"], ts, rec["level"], rec.get("title"), rec["message"], rec.get("service"),
                   rec.get("event_id")))


def event_filters(mark: str, *, service: str | None = None, type_prefix: str | None = None,
                  types: tuple[str, ...] = (), since: str | dt.datetime | None = None,
                  after_id: int | None = None, chain: str | None = None) -> tuple[list[str], list[Any]]:
    """The WHERE terms and their arguments of Journal.query's filters, with `mark` as the
    placeholder ("?" for SQLite, "%s" for PostgreSQL): both event stores read alike
    (tests/test_journal_backends.py)."""
    where: list[str] = []
    args: list[Any] = []
    if service is not None:
        where.append(f"service = {mark}")
        args.append(service)
    if type_prefix:
        # A range instead of LIKE so the index on type is used.
        where.append(f"type >= {mark} AND type < {mark}")
        args += [type_prefix, type_prefix + "\U0010ffff"]
    if types:
        either: list[str] = []
        for t in types:
            if t.endswith("."):
                either.append(f"(type >= {mark} AND type < {mark})")  # a range, as above: the index is used
                args += [t, t + "\U0010ffff"]
            else:
                either.append(f"type = {mark}")
                args.append(t)
        where.append("(" + " OR ".join(either) + ")")
    if since is not None:
        where.append(f"ts >= {mark}")
        args.append(since if isinstance(since, str) else iso(since))
    if after_id is not None:
        where.append(f"id > {mark}")
        args.append(after_id)
    if chain is not None:
        where.append(f"chain = {mark}")
        args.append(chain)
    return where, args


def _clean(text: str) -> str:
    """Text that SQLite can store: git output read with surrogateescape (a non-UTF-8 branch
    name or file name) has lone surrogates; they become U+FFFD instead of crashing the write."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def parse_since(text: str, clock: Clock = SYSTEM) -> dt.datetime:
    """`2h`, `30m`, `7d`, `45s`, `1w` or an ISO time → an aware UTC datetime."""
    t = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if t and t[-1] in units and t[:-1].replace(".", "", 1).isdigit():
        try:
            return clock.now() - dt.timedelta(seconds=float(t[:-1]) * units[t[-1]])
        except OverflowError:  # before the year 1: was exit 3 (tests/test_bad_input.py)
            raise UsageError(f"--since {text!r}: too far back; a duration reaches at most "
                             "to the year 1, e.g. 2h, 30m, 7d, 5200w") from None
    try:
        return parse_iso(t)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: not a duration or time; use e.g. 2h, 30m, 7d or 2026-04-26T03:00:00Z"
        ) from None


# --- kv read-modify-write (added by the cron/jobs helper) -----------------------------------
# run-job and cron-check update one job's state from several processes at once (overlapping
# runs, cron-check every 5 minutes); a kv_get + kv_set pair would lose one of two updates.

def kv_update(journal: Journal, scope: str, key: str,
              update: Callable[[Any], Any]) -> Any:
    """Atomically replace kv[scope, key] with update(old value or None); return the new value.

    update() runs inside one BEGIN IMMEDIATE transaction, so it must be quick and must not
    write to the journal itself. Returning None deletes the key.
    """
    with journal.tx() as c:
        row = c.execute("SELECT value FROM kv WHERE scope = ? AND key = ?", (scope, key)).fetchone()
        new = update(json.loads(row[0]) if row else None)
        if new is None:
            c.execute("DELETE FROM kv WHERE scope = ? AND key = ?", (scope, key))
        else:
            c.execute(
                "INSERT INTO kv (scope, key, value, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                (scope, key, redact(json.dumps(new, default=str)), journal.now()),
            )
    return new


_tables_ready: set[tuple[int, str, str]] = set()
_tables_lock = threading.Lock()


def with_tables(journal: Journal, name: str, schema: str) -> Journal:
    """A storage module's own tables (approvals, decisions), created on first use in this
    process: the journal's schema belongs to others."""
    key = (os.getpid(), str(journal.path), name)
    with _tables_lock:
        if key not in _tables_ready:
            journal.conn.executescript(schema)
            _tables_ready.add(key)
    return journal
