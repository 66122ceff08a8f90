"""Locks the hosts of a fleet share: PostgreSQL advisory locks on a connection of their own.

A service on several hosts (`[service.NAME] hosts = [...]`) deploys on one host at a time.
Each host first takes its own worktree lock (base/lock.py), then the fleet's
`pg_advisory_lock(LOCK_SPACE, hashtext('deploy:NAME'))` on a connection opened for it alone
and held for the deploy. The server drops the lock when that connection ends, however the
holder ends (SIGKILL, a crash, a closed socket), so there is no stale lock to clean up.

The wait is bounded like the local lock's (`--lock-wait`): the server's lock_timeout ends it
and the deploy gives up with LockBusy, naming who holds the lock. The waiting is said to the
pusher. When the database cannot be reached, the host deploys under its local lock alone
and says so, on deploy.start as well (`fleet_lock: "unavailable"`): a host without the
database keeps working as a single host.

The same kind of lock, tried once and never waited for, makes one host at a time read a
Telegram bot (`opskit inbox`: the Bot API allows one getUpdates reader per bot).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opskit.base.errors import LockBusy
from opskit.storage.fleet import LOCK_SPACE, Fleet, Unreachable, _say

if TYPE_CHECKING:
    import psycopg

    from opskit.base.config import ServiceSettings, Settings
    from opskit.storage.journal import Journal

KEEPALIVE_IDLE = 15  # seconds: idle before the server probes a lock holder's connection
HELD = "held"
UNAVAILABLE = "unavailable"

_HOLDER_SQL = """
SELECT a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid::bigint = %s AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295)
LIMIT 1
"""


@dataclass
class Outcome:
    """How a deploy was locked across the fleet: `held` (the fleet's lock was ours), or
    `unavailable` with the reason (the local lock alone)."""

    state: str
    error: str | None = None
    waited: float = 0.0

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {"fleet_lock": self.state}
        if self.state == HELD:
            out["fleet_lock_waited"] = self.waited
        if self.error:
            out["fleet_lock_error"] = self.error
        return out


def needed(settings: Settings, svc: ServiceSettings) -> bool:
    """Only a service that more than one host runs needs the fleet's lock."""
    return settings.fleet is not None and len(svc.hosts) > 1


def _holder(cur: psycopg.Cursor[Any], name: str) -> str:
    try:
        cur.execute(_HOLDER_SQL, (LOCK_SPACE, name))
        row = cur.fetchone()
    except Exception:
        return "another host"
    if not row or not row[0]:
        return "another host"
    return f"{row[0]} (connected since {row[1]:%Y-%m-%dT%H:%M:%SZ})" if row[1] is not None else str(row[0])


@contextlib.contextmanager
def deploy_lock(settings: Settings, journal: Journal, svc: ServiceSettings, *, wait: float, what: str,
                say: Callable[[str], None]) -> Iterator[Outcome | None]:
    """Hold the fleet's deploy lock of svc for the block: None when svc needs none (one host,
    no fleet), else the Outcome. LockBusy after `wait` seconds."""
    if not needed(settings, svc) or journal.fleet is None:
        yield None
        return
    fleet = journal.fleet
    name = f"deploy:{svc.name}"
    conn, outcome = _acquire(fleet, journal, name, svc.name, wait=wait, what=what, say=say)
    try:
        yield outcome
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # the server releases the lock with the session


def _acquire(fleet: Fleet, journal: Journal, name: str, service: str, *, wait: float, what: str,
             say: Callable[[str], None]) -> tuple[psycopg.Connection[Any] | None, Outcome]:
    def alone(why: str) -> tuple[None, Outcome]:
        say(f"{service}: the fleet database is unreachable ({why}); deploying under this host's lock alone")
        return None, Outcome(UNAVAILABLE, why)

    if fleet.known_down(journal):
        down = journal.kv_get("fleet", "unreachable")
        return alone(str(down.get("error") if isinstance(down, dict) else "") or "unreachable")
    try:
        conn = fleet.open()
    except Unreachable as e:  # psycopg missing included: fleet.open() names the extra
        return alone(str(e))
    import psycopg  # loaded by fleet.open() above; only a fleet's multi-host deploy gets here

    waited = 0.0
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('application_name', %s, false)", (f"opskit {fleet.host}: {what}"[:63],))
            # A host that vanishes without closing its socket (power cut, partition) must not hold
            # the lock for the kernel's default two hours: the server probes the session instead.
            cur.execute(f"SET tcp_keepalives_idle = {KEEPALIVE_IDLE}")
            cur.execute("SET tcp_keepalives_interval = 5")
            cur.execute("SET tcp_keepalives_count = 3")
            cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name))
            got = cur.fetchone()
            if not (got and got[0]):
                holder = _holder(cur, name)
                if wait <= 0:
                    conn.close()
                    raise LockBusy(f"{service}: fleet deploy lock held by {holder}; not waiting (--lock-wait 0)")
                say(f"{service}: fleet deploy lock held by {holder}; waiting up to {wait:.0f}s")
                # The server ends the wait: the lock is granted the moment its holder's
                # session ends, and lock_timeout bounds it like the local lock's wait.
                cur.execute(f"SET lock_timeout = {max(1, int(wait * 1000))}")
                began = time.monotonic()
                try:
                    cur.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name))
                except psycopg.errors.LockNotAvailable:
                    conn.close()
                    raise LockBusy(f"{service}: fleet deploy lock held by {holder}; gave up after {wait:.0f}s. "
                                   "Try again when it finishes (opskit status shows it)") from None
                waited = round(time.monotonic() - began, 3)
                cur.execute("SET lock_timeout = 0")
    except psycopg.Error as e:
        with contextlib.suppress(Exception):
            conn.close()
        return alone(_say(e))
    return conn, Outcome(HELD, waited=waited)


# --- one reader of a Telegram bot at a time ---------------------------------------------------

def bot_key(token: str) -> str:
    """The lock's name for a bot: a hash of its token, never the token (pg_locks is readable)."""
    return "telegram:" + hashlib.sha256(token.encode()).hexdigest()[:32]


@contextlib.contextmanager
def try_lock(fleet: Fleet, name: str) -> Iterator[bool]:
    """pg_try_advisory_lock(LOCK_SPACE, hashtext(name)) on its own connection, for the block:
    True if this host holds it, False if another host does. Unreachable when the database is."""
    conn = fleet.open()  # without psycopg: Unreachable, naming the extra
    import psycopg  # loaded by fleet.open(); only a fleet's inbox gets here

    try:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_SPACE, name))
                row = cur.fetchone()
        except psycopg.Error as e:
            raise Unreachable(_say(e)) from None
        yield bool(row and row[0])
    finally:
        with contextlib.suppress(Exception):
            conn.close()
