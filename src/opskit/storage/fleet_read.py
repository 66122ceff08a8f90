"""Reading the fleet database: the events of every host, and each host's standing.

`opskit events`, `status` and `incident` read here when `[opskit] journal` names a database.
An event read here carries the fleet's id (the database's, unique across hosts: the one
`events`, `--follow` and `incident` name) and the host that journaled it. Every function
raises storage.fleet.Unreachable when the database cannot be used; the caller then reads
this host's own journal and says so (`unreachable()`, `note_unreachable()`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opskit.storage.fleet import Fleet, Unreachable
from opskit.storage.journal import Event, Journal, event_filters

_COLUMNS = "id, host, local_id, ts, ts_precise, type, service, chain, sha, data"
# The events that end a deploy: the last of them per (host, service) is its verdict.
VERDICTS = {"health.pass": "healthy", "health.fail": "failed", "rollback.complete": "reverted",
            "rollback.fail": "failed", "deploy.fail": "failed"}
# A gap in the fleet's ids (a forward still committing on another host) is waited for this
# long by --follow before it is taken for a sequence value that was never used.
GAP_WAIT = 30.0


def _event(row: Sequence[Any]) -> Event:
    return Event(id=int(row[0]), host=row[1], ts=row[3], ts_precise=row[4], type=row[5], service=row[6],
                 chain=row[7], sha=row[8], data=json.loads(row[9]))


def _usable(fleet: Fleet, journal: Journal) -> None:
    if fleet.known_down(journal):
        down = unreachable(journal) or {}
        raise Unreachable(str(down.get("error") or "the fleet database was unreachable moments ago"))


def query(fleet: Fleet, journal: Journal, *, host: str | None = None, service: str | None = None,
          types: tuple[str, ...] = (), type_prefix: str | None = None, since: str | dt.datetime | None = None,
          limit: int | None = None, after_id: int | None = None, chain: str | None = None) -> list[Event]:
    """Journal.query's reading over every host's events, oldest first (by the fleet's id)."""
    _usable(fleet, journal)
    where, args = event_filters("%s", service=service, type_prefix=type_prefix, types=types, since=since,
                                after_id=after_id, chain=chain)
    if host is not None:
        where.append("host = %s")
        args.append(host)
    sql = f"SELECT {_COLUMNS} FROM events" + (" WHERE " + " AND ".join(where) if where else "")
    if limit is not None:
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(min(limit, 2**63 - 1))
    else:
        sql += " ORDER BY id"
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute(sql.encode(), args)
        rows = cur.fetchall()
    if limit is not None:
        rows.reverse()
    return [_event(r) for r in rows]


def get(fleet: Fleet, journal: Journal, event_id: int) -> Event | None:
    _usable(fleet, journal)
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM events WHERE id = %s".encode(), (event_id,))
        row = cur.fetchone()
    return _event(row) if row else None


def last_id(fleet: Fleet, journal: Journal) -> int:
    _usable(fleet, journal)
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT COALESCE(MAX(id), 0) FROM events")
        row = cur.fetchone()
    return int(row[0]) if row else 0


def local_id(fleet: Fleet, journal: Journal, event_id: int) -> int | None:
    """This host's own id of a fleet event journaled here (None: another host's)."""
    _usable(fleet, journal)
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT local_id FROM events WHERE id = %s AND host = %s", (event_id, fleet.host))
        row = cur.fetchone()
    return int(row[0]) if row else None


def follow(fleet: Fleet, journal: Journal, *, start_after: int, poll: float = 0.5, **filters: Any) -> Iterator[Event]:
    """Events of every host as they reach the database, in the fleet's id order. Ids are
    taken when a forward starts and seen when it commits, so two hosts forwarding at once can
    commit 12 before 11: an id skipped over is looked for again for GAP_WAIT seconds before it
    is taken for a number never used (a forward rolled back, a duplicate refused)."""
    floor = start_after  # every id at or below it was shown or given up
    shown: set[int] = set()
    gaps: dict[int, float] = {}  # id missing above the floor → when it was first missed
    while True:
        batch = [ev for ev in query(fleet, journal, after_id=floor, **filters) if ev.id not in shown]
        for ev in batch:
            shown.add(ev.id)
            gaps.pop(ev.id, None)
            yield ev
        # With filters a gap is mostly another service's event: it holds the floor GAP_WAIT
        # seconds too, which costs a slightly longer query, never a missed event.
        top = max(shown, default=floor)
        now = time.monotonic()
        for missing in range(floor + 1, top):
            if missing not in shown:
                gaps.setdefault(missing, now)
        while floor < top and (floor + 1 in shown or now - gaps.get(floor + 1, now) >= GAP_WAIT):
            floor += 1
            shown.discard(floor)
            gaps.pop(floor, None)
        if not batch:
            journal.clock.sleep(poll)


def hosts(fleet: Fleet, journal: Journal) -> list[dict[str, Any]]:
    """Each host of the fleet: when it last forwarded, how many of its events the database
    holds, and per service its last verdict and last event."""
    _usable(fleet, journal)
    types = sorted(VERDICTS)
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT host, seen, forwarded FROM hosts ORDER BY host")
        known = {r[0]: {"host": r[0], "seen": r[1], "forwarded": int(r[2]), "services": {}} for r in cur.fetchall()}
        cur.execute(_LATEST, (types,))
        latest = cur.fetchall()
    for h, service, last, ts, eid, vts, type_, sha, data in latest:
        entry = known.setdefault(h, {"host": h, "seen": None, "forwarded": 0, "services": {}})
        verdict = None
        if eid is not None:
            verdict = {"status": VERDICTS[type_], "event": type_, "id": int(eid), "sha": sha, "when": vts,
                       "reason": json.loads(data).get("reason")}
        entry["services"][service] = {"name": service, "last_event": {"id": int(last), "ts": ts},
                                      "last_verdict": verdict}
    return [{**h, "services": [h["services"][k] for k in sorted(h["services"])]} for h in known.values()]


# Each (host, service) pair found by a skip scan of events_host_service (one index probe a pair,
# however many events), then its newest event and its newest verdict, each one probe back.
_LATEST = """
WITH RECURSIVE pairs AS (
    (SELECT host, service FROM events WHERE service IS NOT NULL ORDER BY host, service LIMIT 1)
    UNION ALL
    SELECT n.host, n.service FROM pairs p, LATERAL (
        SELECT host, service FROM events WHERE service IS NOT NULL AND (host, service) > (p.host, p.service)
        ORDER BY host, service LIMIT 1) n
)
SELECT p.host, p.service, last.id, last.ts, v.id, v.ts, v.type, v.sha, v.data
FROM pairs p
JOIN LATERAL (SELECT id, ts FROM events e WHERE e.host = p.host AND e.service = p.service
              ORDER BY id DESC LIMIT 1) last ON true
LEFT JOIN LATERAL (SELECT id, ts, type, sha, data FROM events e WHERE e.host = p.host AND e.service = p.service
                   AND e.type = ANY(%s) ORDER BY id DESC LIMIT 1) v ON true
ORDER BY p.host, p.service
"""


def frozen(fleet: Fleet, journal: Journal) -> dict[str, dict[str, Any]]:
    """The freezes in force across the fleet, by service."""
    _usable(fleet, journal)
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT service, value, host, updated FROM frozen WHERE value IS NOT NULL")
        rows = cur.fetchall()
    out = {}
    for service, value, host, updated in rows:
        v = json.loads(value)
        out[service] = {**(v if isinstance(v, dict) else {"reason": str(v)}), "host": host, "updated": updated}
    return out


def unreachable(journal: Journal) -> dict[str, Any] | None:
    """This host's record of the database being away (kv fleet/unreachable), or None."""
    down = journal.kv_get("fleet", "unreachable")
    return down if isinstance(down, dict) else None


def note_unreachable(fleet: Fleet, journal: Journal, why: str) -> dict[str, Any]:
    """A read found the database away: recorded as a failed forward is (once, with its start)."""
    if unreachable(journal) is None:
        fleet.sync(journal)  # tries once more; on failure writes kv fleet/unreachable + the event
    return unreachable(journal) or {"since": journal.now(), "error": why}


def pending(fleet: Fleet, journal: Journal) -> int:
    """This host's events not yet in the database."""
    return max(0, journal.last_event_id() - int(journal.kv_get("fleet", "forwarded") or 0))


class FleetEvents:
    """The fleet's events read as a Journal's are (query, get, newest_of), for the views that
    tell a story across hosts (`opskit incident`): a revert on one host read from another.
    `local` is this host's own journal (its outbox, its notifications)."""

    def __init__(self, fleet: Fleet, local: Journal) -> None:
        self.fleet = fleet
        self.local = local

    def query(self, **filters: Any) -> list[Event]:
        return query(self.fleet, self.local, **filters)

    def get(self, event_id: int) -> Event | None:
        return get(self.fleet, self.local, event_id)

    def newest_of(self, types: Sequence[str], service: str, since: str | dt.datetime) -> Event | None:
        found = [e for t in types for e in query(self.fleet, self.local, types=(t,), service=service,
                                                 since=since, limit=1)]
        return max(found, key=lambda e: e.id) if found else None

    def local_ids(self, ids: Sequence[int]) -> list[int]:
        """This host's own ids of those fleet events that it journaled."""
        _usable(self.fleet, self.local)
        with self.fleet.using() as conn, conn.cursor() as cur:
            cur.execute("SELECT local_id FROM events WHERE id = ANY(%s) AND host = %s ORDER BY local_id",
                        (list(ids), self.fleet.host))
            return [int(r[0]) for r in cur.fetchall()]
