"""The courier: takes claimed outbox rows of one channel and delivers them in order.

Transient failures are retried with backoff inside the channel's retry_for (a 429's
retry_after wins over our backoff); the first message that stays undelivered stops its
channel so later ones do not overtake it. Before every POST the claim is refreshed and
checked: a row another process took over (our claim went stale) is left to it, never sent
twice. Permanent answers mark the channel broken and hand the message to the channel's
fallback. Every outcome lands in the outbox row and in a notify.sent / notify.failed
event; no URL or token ever does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
from dataclasses import dataclass, field

from opskit.base.clock import Clock, iso, parse_iso
from opskit.base.config import ChannelSettings, Settings
from opskit.base.errors import redact
from opskit.notify import decisions
from opskit.notify.base import Action, Message, Outcome
from opskit.storage import outbox
from opskit.storage.fleet import Unreachable
from opskit.storage.journal import Journal

BACKOFF_START = 0.5
BACKOFF_MAX = 8.0
CLAIM_REFRESH = 60.0  # well inside outbox.CLAIM_STALE
# A message with decision buttons queued by an account that may not sign them (docs/ARCHITECTURE.md, who may do what).
WAITS_FOR_KEY = ("its decision buttons are signed by root: root's `opskit inbox` sends it within a minute "
                 "(or `sudo opskit notify --flush`)")
SIGN_WAIT = 600.0  # seconds a message waits for root to sign its buttons, then goes without them
NO_BUTTONS = ("\n\n(no buttons: root's `opskit inbox` did not sign them within 10 minutes; decide with the "
              "commands above, and see `sudo opskit cron install --system`)")
KINDS = {"discord": "discord", "slack": "slack", "webhook": "webhook", "command": "command",
         "ntfy": "ntfy", "apprise": "apprise_", "telegram": "telegram"}


@dataclass
class RowResult:
    row_id: int
    channel: str
    status: str  # delivered | queued | broken
    error: str | None = None
    fallback_id: int | None = None


@dataclass
class Courier:
    settings: Settings
    journal: Journal
    clock: Clock
    retry_for: float | None = None
    # A new message's failure is always journaled; an old one's only when the error
    # changed, so a long outage is one event per message, not one per cron run.
    fresh: set[int] = field(default_factory=set)
    results: dict[int, RowResult] = field(default_factory=dict)
    stalled: dict[str, str] = field(default_factory=dict)  # channel → why it stopped
    claimed: set[int] = field(default_factory=set)  # every row handed to deliver_rows
    # Rows we claimed but another process took over before we finished them (with the
    # rest of their channel's claim): their outcome is that process's to record.
    lost: set[int] = field(default_factory=set)
    # The host's outbox, or the fleet's shared one (storage/fleet_outbox.py): the rules are the same.
    box: outbox.Box = outbox.LOCAL

    def deliver_rows(self, channel: str, rows: list[outbox.Row], visited: frozenset[str] = frozenset()) -> None:
        ids = [r.id for r in rows]
        self.claimed.update(ids)
        try:
            for i, row in enumerate(rows):
                ch = self.settings.channels.get(channel)
                if ch is None or channel in self.stalled:
                    why = self.stalled.get(channel) or f"channel {channel!r} is no longer configured"
                    self._queued(None, row, Outcome.transient(why), attempts=0, wait=None)
                    self.stalled[channel] = why
                    break
                actions = decisions.sign(self.settings, self.journal,
                                         [Action(str(a), str(t)) for a, t in json.loads(row.actions or "[]")],
                                         self.clock)
                if actions is None and self._waited_for_key(row):
                    # Root's inbox has not signed it for SIGN_WAIT (no cron.d yet, inbox failing):
                    # the text names the commands, and the alerts behind it must not wait forever.
                    actions = ()
                    row = dataclasses.replace(row, message=row.message + NO_BUTTONS)
                if actions is None:  # its buttons wait for the key holder: the channel's order is kept
                    self._queued(ch, row, Outcome.transient(WAITS_FOR_KEY), attempts=0, wait=None)
                    self.stalled[channel] = WAITS_FOR_KEY
                    break
                outcome, attempts, wait = self._attempt(ch, row, ids[i:], actions)
                if outcome is None:  # taken over: the taker has the channel's queue, in order
                    self.lost.update(ids[i:])
                    break
                if outcome.kind == "delivered":
                    self._delivered(ch, row, outcome, attempts)
                elif outcome.kind == "transient":
                    self._queued(ch, row, outcome, attempts, wait)
                    self.stalled[channel] = outcome.error or "not delivered"
                    break
                else:
                    self._broken(ch, row, outcome, attempts, visited)
        finally:
            # Whatever we claimed and did not finish goes back to the queue, in order.
            self.box.release(self.journal, ids)

    def _waited_for_key(self, row: outbox.Row) -> bool:
        try:
            return (self.clock.now() - parse_iso(row.created)).total_seconds() >= SIGN_WAIT
        except ValueError:
            return True

    # --- one message ------------------------------------------------------------------------
    def _attempt(self, ch: ChannelSettings, row: outbox.Row, claimed: list[int],
                 actions: tuple[Action, ...]) -> tuple[Outcome | None, int, float | None]:
        """Deliver one row, retrying transient failures: (outcome, attempts, wait before the next
        try), or (None, ...) when the row stopped being ours before a POST."""
        module = importlib.import_module(f"opskit.notify.{KINDS[ch.type]}")
        budget = self.retry_for if self.retry_for is not None else ch.retry_for
        deadline = self.clock.monotonic() + max(0.0, budget)
        delay = BACKOFF_START
        attempts = 0
        msg = Message(outbox_id=row.id, channel=row.channel, level=row.level, title=row.title, text=row.message,
                      service=row.service, event_id=row.event_id, created=row.created,
                      actions=actions)
        while True:
            if row.id not in self.box.touch(self.journal, self.clock, claimed):
                return None, attempts, None
            # Each attempt gets the channel's whole timeout: retry_for bounds when attempts start,
            # never cuts one short. Cut, a slow endpoint's answer is lost and the message — which
            # it may well have delivered — is sent again on the next flush.
            timeout = ch.timeout
            try:
                outcome: Outcome = module.deliver(ch, msg, timeout)
            except Exception as e:  # a bug in one channel must not stop the pipeline
                outcome = Outcome.transient(f"internal error in the {ch.type} channel ({type(e).__name__})")
            attempts += 1
            if outcome.kind != "transient":
                return outcome, attempts, None
            wait = outcome.retry_after if outcome.retry_after is not None else delay
            delay = min(delay * 2, BACKOFF_MAX)
            if self.clock.monotonic() + wait > deadline:
                return outcome, attempts, wait
            if not self._sleep(wait, row.id, claimed):
                return None, attempts, None

    def _sleep(self, seconds: float, row_id: int, claimed: list[int]) -> bool:
        """Wait, refreshing our claim so a long 429 wait never looks like a dead sender.
        False as soon as row_id is no longer ours: no point waiting to send it."""
        while seconds > 0:
            step = min(seconds, CLAIM_REFRESH)
            self.clock.sleep(step)
            seconds -= step
            if seconds > 0 and row_id not in self.box.touch(self.journal, self.clock, claimed):
                return False
        return True

    def _delivered(self, ch: ChannelSettings, row: outbox.Row, outcome: Outcome, attempts: int) -> None:
        if not self.box.finish(self.journal, self.clock, row.id, "delivered", attempts=attempts,
                             remote_id=outcome.remote_id):
            return  # taken over as stale while we were sending; its new holder reports it
        self.results[row.id] = RowResult(row.id, ch.name, "delivered")
        data: dict[str, object] = {"outbox_id": row.id, "channel": ch.name, "kind": ch.type,
                                   "status": "delivered", "attempts": attempts}
        if outcome.remote_id:
            data["remote_id"] = outcome.remote_id
        if row.title:
            data["title"] = row.title[:100]
        self.journal.append("notify.sent", row.service, data)
        if self.journal.kv_get("channel", ch.name):
            self.journal.kv_delete("channel", ch.name)  # it works again: no longer broken

    def _queued(self, ch: ChannelSettings | None, row: outbox.Row, outcome: Outcome, attempts: int,
                wait: float | None) -> None:
        next_try = self.clock.now() + dt.timedelta(seconds=wait) if wait is not None else None
        if not self.box.finish(self.journal, self.clock, row.id, "queued", attempts=attempts,
                             error=outcome.error, next_try=next_try):
            return
        self.results[row.id] = RowResult(row.id, row.channel, "queued", outcome.error)
        if row.id in self.fresh or outcome.error != row.last_error:
            self._failed(ch, row, "queued", outcome, attempts)

    def _broken(self, ch: ChannelSettings, row: outbox.Row, outcome: Outcome, attempts: int,
                visited: frozenset[str]) -> None:
        if not self.box.finish(self.journal, self.clock, row.id, "broken", attempts=attempts,
                             error=outcome.error):
            return
        result = RowResult(row.id, ch.name, "broken", outcome.error)
        self.results[row.id] = result
        previous = self.journal.kv_get("channel", ch.name) or {}
        self.journal.kv_set("channel", ch.name, {
            "broken": True, "status": outcome.status, "error": outcome.error,
            "since": previous.get("since") or iso(self.clock.now()), "outbox_id": row.id})
        fb = ch.fallback
        usable = fb is not None and fb not in visited and fb != ch.name and fb in self.settings.channels
        self._failed(ch, row, "broken", outcome, attempts, fallback=fb if usable else None)
        if not usable or fb is None:
            return
        note = f"\n\n(sent via fallback: channel {ch.name!r} is broken: {outcome.error})"
        try:
            new_id = self.box.enqueue(self.journal, self.clock, fb, level=row.level, title=row.title,
                                      message=row.message + note, service=row.service, event_id=row.event_id)
        except Unreachable:
            # The fleet database went away under us: the host's own outbox holds it, and it is
            # forwarded to the shared one when the database is back (not sent from here now).
            outbox.LOCAL.enqueue(self.journal, self.clock, fb, level=row.level, title=row.title,
                                 message=row.message + note, service=row.service, event_id=row.event_id)
            return
        result.fallback_id = new_id
        rows, _ = self.box.claim_channel(self.journal, self.clock, fb, fresh=new_id)
        self.deliver_rows(fb, rows, visited | {ch.name})

    def waiting(self, row_id: int, channel: str, service: str | None) -> None:
        """Journal a new message that was not tried because an older one ahead of it failed."""
        why = self.stalled.get(channel, "not delivered")
        self.journal.append("notify.failed", service, {
            "outbox_id": row_id, "channel": channel, "status": "queued", "attempts": 0,
            "error": f"waiting behind an older message: {why}"})

    def _failed(self, ch: ChannelSettings | None, row: outbox.Row, status: str, outcome: Outcome,
                attempts: int, fallback: str | None = None) -> None:
        data: dict[str, object] = {"outbox_id": row.id, "channel": row.channel, "status": status,
                                   "error": redact(outcome.error or ""), "attempts": attempts}
        if ch is not None:
            data["kind"] = ch.type
        if outcome.status is not None:
            data["http_status" if ch is not None and ch.type != "command" else "exit_status"] = outcome.status
        if fallback:
            data["fallback"] = fallback
        self.journal.append("notify.failed", row.service, data)
