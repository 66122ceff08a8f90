"""Phone taps handed from the host that read them to the host they are for (the `handoff` table).

One host at a time reads a Telegram bot (fleet_locks.try_lock), but each host signs its own
buttons with its own decision key and keeps its own offers: a tap on a button another host
made cannot be checked, let alone applied, by the host that read it. That host writes the tap
as it came (the callback_query) into the fleet database, one row per other host of the fleet;
each host's `opskit inbox` takes its rows and handles them as if it had read them itself. The
host whose key signed the button applies it; for every other host the token is not theirs and
the row is spent without a word.

Exactly once: a row is taken inside a transaction that locks it (FOR UPDATE SKIP LOCKED, so two
runs of one host never take the same row) and marked taken in that transaction after the tap
was handled; a run killed half-way leaves it untaken, and the next run's tap is "seen" by the
local journal (decisions.receive records each tap once), never applied twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from opskit.storage.fleet import Fleet, Unreachable, _say


def hosts(fleet: Fleet, named: Iterable[str]) -> list[str]:
    """The fleet's other hosts: every host that ever forwarded an event, and the ones a
    service of this config names."""
    with fleet.using() as conn, conn.cursor() as cur:
        cur.execute("SELECT host FROM hosts")
        known = {str(r[0]) for r in cur.fetchall()}
    return sorted((known | set(named)) - {fleet.host})


def hand(fleet: Fleet, to: Iterable[str], payload: dict[str, Any], now: str) -> int:
    """One row per host in `to`, in one transaction; how many. Unreachable if it could not."""
    rows = [(h, json.dumps(payload, sort_keys=True), now) for h in to]
    if not rows:
        return 0
    with fleet.using() as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany("INSERT INTO handoff (host, payload, created) VALUES (%s, %s, %s)", rows)
    return len(rows)


def take(fleet: Fleet, now: Callable[[], str], handle: Callable[[dict[str, Any]], None]) -> int:
    """Handle every row handed to this host, oldest first, each once; how many were taken.
    `handle` runs while its row is locked; the row is marked taken when it returned."""
    conn = fleet.open()  # without psycopg: Unreachable, naming the extra
    import psycopg  # loaded by fleet.open(); only a fleet's inbox gets here

    done = 0
    try:
        while True:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT id, payload FROM handoff WHERE host = %s AND taken IS NULL ORDER BY id "
                            "LIMIT 1 FOR UPDATE SKIP LOCKED", (fleet.host,))
                row = cur.fetchone()
                if row is None:
                    return done
                try:
                    payload = json.loads(row[1])
                except ValueError:
                    payload = None
                if isinstance(payload, dict):
                    handle(payload)
                cur.execute("UPDATE handoff SET taken = %s, taken_by = %s WHERE id = %s AND taken IS NULL",
                            (now(), f"{fleet.host} pid {os.getpid()}", row[0]))
                done += cur.rowcount
    except psycopg.Error as e:
        raise Unreachable(_say(e)) from None
    finally:
        conn.close()
