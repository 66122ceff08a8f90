"""`opskit react`: every reaction over the events after its cursor, in order, at least once.

The journal is the bus; each reaction keeps a cursor (kv scope "reaction": the last event it
is done with). One dispatcher at a time (a flock, base/bus.py LOCK), and the command it runs
holds that lock too, so a dispatcher killed half-way leaves no second copy running beside
the next one. A cursor moves past an event only after that event's run succeeded (or gave
up): a run killed half-way runs again — at least once, never skipped. A failed run stops
its reaction until its backoff has passed (later runs retry it); after `retries` more
failures it gives up, journals `reaction.gave-up` and notifies once, and moves on.

No daemon: whoever journals a matching event starts this detached (base/bus.py), and cron
runs it every minute. When it lets the lock go it reads the journal once more: an event
whose writer found the lock held is picked up here, not a minute later by cron.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opskit.base import bus
from opskit.base.clock import SYSTEM, Clock, iso, iso_precise, parse_iso
from opskit.base.config import Settings
from opskit.base.errors import LockBusy, UsageError
from opskit.base.lock import ServiceLock
from opskit.base.reactions_config import ReactionSettings
from opskit.reactions import runner
from opskit.storage import reaction_reads as reads
from opskit.storage.journal import Event, Journal, kv_update

SCOPE = "reaction"
BATCH = 500

Say = Callable[[str], None]


@dataclass
class Cursor:
    """Where one reaction stands (kv scope "reaction", key its name)."""

    event_id: int
    attempts: int = 0  # failed runs of the event after event_id
    next_try: str | None = None  # not before then (backoff)
    last: dict[str, Any] | None = None  # the last run: event_id, result, exit, ts
    gave_up: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "attempts": self.attempts, "next_try": self.next_try,
                "last": self.last, "gave_up": self.gave_up}

    @classmethod
    def from_json(cls, v: Any) -> Cursor | None:
        if not isinstance(v, dict) or not isinstance(v.get("event_id"), int):
            return None
        return cls(event_id=v["event_id"], attempts=int(v.get("attempts") or 0), next_try=v.get("next_try"),
                   last=v.get("last") if isinstance(v.get("last"), dict) else None,
                   gave_up=int(v.get("gave_up") or 0))


@dataclass
class Report:
    busy: bool = False  # another dispatcher had the lock: nothing done here
    ran: int = 0
    ok: int = 0
    failed: int = 0
    gave_up: int = 0
    skipped: list[str] = field(default_factory=list)  # reactions this account may not run

    def to_dict(self) -> dict[str, Any]:
        return {"busy": self.busy, "ran": self.ran, "ok": self.ok, "failed": self.failed,
                "gave_up": self.gave_up, "skipped": self.skipped}


def reactions_of(settings: Settings, only: str | None = None) -> list[ReactionSettings]:
    found = [r for r in settings.reactions if not r.gate and (only is None or r.name == only)]
    if only is not None and not found:
        known = ", ".join(r.name for r in settings.reactions if not r.gate) or "none"
        raise UsageError(f"no reaction {only!r} (configured: {known}); name one of them or add a [[reaction]] table")
    return found


def initial_cursor(settings: Settings, journal: Journal) -> int:
    """Where a reaction seen for the first time starts: after the last event journaled before
    the config was written, so a new reaction sees what comes after it was added (the event
    that started this dispatcher included), not the whole history."""
    try:
        since = dt.datetime.fromtimestamp(os.stat(settings.path).st_mtime, dt.timezone.utc) if settings.path \
            else journal.clock.now()
    except OSError:
        since = journal.clock.now()
    return reads.last_before(journal, iso_precise(since))


def load(settings: Settings, journal: Journal, r: ReactionSettings) -> Cursor:
    cur = Cursor.from_json(journal.kv_get(SCOPE, r.name))
    if cur is None:
        first = initial_cursor(settings, journal)

        def init(old: Any) -> Any:
            return old if Cursor.from_json(old) is not None else Cursor(first).to_json()

        cur = Cursor.from_json(kv_update(journal, SCOPE, r.name, init)) or Cursor(first)
    return cur


def save(journal: Journal, r: ReactionSettings, cur: Cursor) -> None:
    journal.kv_set(SCOPE, r.name, cur.to_json())


def events_after(journal: Journal, after: int, limit: int = BATCH) -> list[Event]:
    return reads.events_after(journal, after, limit)


def pending(journal: Journal, r: ReactionSettings, cur: Cursor, cap: int = 100_000) -> Iterator[Event]:
    """The events after the cursor that this reaction is to run, in order."""
    after, seen = cur.event_id, 0
    while seen < cap:
        batch = events_after(journal, after)
        if not batch:
            return
        for ev in batch:
            if r.matches(ev.type, ev.service, ev.data):
                yield ev
        seen += len(batch)
        after = batch[-1].id


def backoff(r: ReactionSettings, attempts: int) -> float:
    return float(min(r.backoff * (2 ** max(0, attempts - 1)), 3600.0))


def dispatch(settings: Settings, journal: Journal, *, clock: Clock = SYSTEM, only: str | None = None,
             replay_from: int | None = None, wait: float = 0.0, say: Say | None = None) -> Report:
    """Run what is due. Another dispatcher holding the lock: nothing (busy). replay_from:
    `only`'s cursor set back to just before that event first (the lock waited for)."""
    reactions = reactions_of(settings, only)
    report = Report()
    lock = ServiceLock(settings.state_dir, bus.LOCK, wait=wait, clock=clock, what="react")
    first = True
    while True:
        try:
            lock.acquire()
        except LockBusy:
            if first and replay_from is not None:
                raise
            report.busy = first
            return report
        finally:
            bus.ready()
        stopped: set[str] = set()
        try:
            if first and replay_from is not None:
                _replay(settings, journal, reactions[0], replay_from, clock)
            _drain(settings, journal, reactions, lock.fd, clock, report, stopped, say)
        finally:
            lock.release()
        first = False
        # An event written while we held the lock found it held and started nothing: look again.
        if not _due(settings, journal, reactions, stopped, clock):
            return report


def _replay(settings: Settings, journal: Journal, r: ReactionSettings, from_id: int, clock: Clock) -> None:
    if not reads.exists(journal, from_id):
        raise UsageError(f"--from {from_id}: no such event (opskit events --json shows their ids)")
    cur = load(settings, journal, r)
    cur.event_id, cur.attempts, cur.next_try = from_id - 1, 0, None
    save(journal, r, cur)


def _due(settings: Settings, journal: Journal, reactions: list[ReactionSettings], stopped: set[str],
         clock: Clock) -> bool:
    last = journal.last_event_id()
    for r in reactions:
        if r.name in stopped:
            continue
        cur = load(settings, journal, r)
        if cur.event_id < last and not _waiting(cur, clock):
            return True
    return False


def _waiting(cur: Cursor, clock: Clock) -> bool:
    return cur.next_try is not None and clock.now() < parse_iso(cur.next_try)


def _drain(settings: Settings, journal: Journal, reactions: list[ReactionSettings], lock_fd: int, clock: Clock,
           report: Report, stopped: set[str], say: Say | None) -> None:
    progress = True
    while progress:
        progress = False
        for r in reactions:
            if r.name in stopped:
                continue
            cur = load(settings, journal, r)
            if _waiting(cur, clock):
                stopped.add(r.name)
                continue
            batch = events_after(journal, cur.event_id)
            if not batch:
                continue
            for ev in batch:
                if not r.matches(ev.type, ev.service, ev.data):
                    cur.event_id = ev.id
                    continue
                if r.run is not None and not runner.target(settings, r, ev.service).mine:
                    # Another account's work, and we are not root: root's cron runs it.
                    stopped.add(r.name)
                    if r.name not in report.skipped:
                        report.skipped.append(r.name)
                    break
                if not _one(settings, journal, r, ev, cur, lock_fd, clock, report, say):
                    stopped.add(r.name)
                    break
            save(journal, r, cur)
            progress = True


def _one(settings: Settings, journal: Journal, r: ReactionSettings, ev: Event, cur: Cursor, lock_fd: int,
         clock: Clock, report: Report, say: Say | None) -> bool:
    """Run r for ev; True when the cursor may move past it (it succeeded, or gave up)."""
    out = runner.run(settings, r, ev, lock_fd=lock_fd)
    report.ran += 1
    data = {"reaction": r.name, "event_id": ev.id, "event_type": ev.type, "attempt": cur.attempts + 1,
            **out.data()}
    now = clock.now()
    if out.ok:
        journal.append("reaction.ok", ev.service, data, chain=ev.chain, sha=ev.sha)
        report.ok += 1
        cur.event_id, cur.attempts, cur.next_try = ev.id, 0, None
        cur.last = {"event_id": ev.id, "result": "ok", "exit": out.exit, "ts": iso(now)}
        save(journal, r, cur)
        _say(say, f"{r.name}: event #{ev.id} {ev.type}: ok ({out.duration:.1f}s)")
        return True
    cur.attempts += 1
    cur.last = {"event_id": ev.id, "result": "fail", "exit": out.exit, "ts": iso(now), "reason": out.reason}
    if cur.attempts > r.retries:
        gave = journal.append("reaction.gave-up", ev.service, {**data, "attempts": cur.attempts},
                              chain=ev.chain, sha=ev.sha)
        report.gave_up += 1
        cur.event_id, cur.attempts, cur.next_try = ev.id, 0, None
        cur.gave_up += 1
        cur.last["result"] = "gave-up"
        save(journal, r, cur)
        _say(say, f"{r.name}: event #{ev.id} {ev.type}: gave up after {r.retries + 1} run(s): {out.reason}")
        _notify_gave_up(settings, journal, r, ev, out, gave.id, r.retries + 1)
        return True
    wait = backoff(r, cur.attempts)
    cur.next_try = iso_precise(now + dt.timedelta(seconds=wait))
    journal.append("reaction.fail", ev.service, {**data, "retry_in": wait}, chain=ev.chain, sha=ev.sha)
    report.failed += 1
    save(journal, r, cur)
    _say(say, f"{r.name}: event #{ev.id} {ev.type}: failed ({out.reason}); retried in {wait:g}s or later")
    return False


def _notify_gave_up(settings: Settings, journal: Journal, r: ReactionSettings, ev: Event,
                    out: runner.Outcome, event_id: int, runs: int) -> None:
    from opskit.notify.announce import announce, event_ref  # only when a reaction gives up

    who = f"{ev.service}: " if ev.service else ""
    tail = f"\nLast output:\n```\n{out.tail[-600:]}\n```" if out.tail else ""
    announce(settings, journal,
             f"{who}reaction {r.name} gave up on event #{ev.id} ({ev.type}) after {runs} run(s): {out.reason}.\n"
             f"It moved on to the next event. Run it again: `opskit react --replay {r.name} --from {ev.id}`. "
             f"Event: {event_ref(event_id)}{tail}",
             title=f"{who}reaction {r.name} gave up", level="error", service=ev.service, event_id=event_id)


def _say(say: Say | None, line: str) -> None:
    if say is not None:
        try:
            say(line)
        except Exception:  # noqa: BLE001 — a closed terminal never stops the dispatcher
            pass


def status(settings: Settings, journal: Journal) -> list[dict[str, Any]]:
    """Each reaction: its cursor, how many of its events wait, its last result (`opskit reactions`)."""
    out = []
    for r in settings.reactions:
        row: dict[str, Any] = {"name": r.name, "on": list(r.on), "service": r.service, "gate": r.gate,
                               "kind": "url" if r.url is not None else "command"}
        if r.gate:
            last = reads.last_gate(journal, r.name)
            row.update(cursor=None, behind=0, attempts=0, next_try=None, last=last, gave_up=0)
        else:
            v = Cursor.from_json(journal.kv_get(SCOPE, r.name))
            cur = v or Cursor(initial_cursor(settings, journal))
            row.update(cursor=cur.event_id if v else None, behind=sum(1 for _ in pending(journal, r, cur)),
                       attempts=cur.attempts, next_try=cur.next_try, last=cur.last, gave_up=cur.gave_up)
        out.append(row)
    return out
