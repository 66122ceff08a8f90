"""`opskit inbox`: read the decisions taps sent back, once, and apply them (no daemon, no port).

Run by cron every minute with `--wait 50`: it long-polls Telegram's `getUpdates` (and polls
ntfy reply topics every few seconds) until the wait is over, so a tap takes effect within
seconds while it listens and within the minute otherwise. One run at a time (a flock in the
state dir; a second run says so and leaves). Where a channel stands is kept in the kv table
(`inbox` scope): Telegram's next update offset, ntfy's last message id. It is stored after
a tap was handled; a run killed before that reads the tap again and decisions.receive skips
it as seen. A channel that cannot be reached is one line and exit 1; its taps wait there
(Telegram keeps unconfirmed updates 24 h, ntfy's cache 12 h) for the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from opskit.base import statefs
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import ChannelSettings, Settings
from opskit.base.errors import GitError, UsageError, redact
from opskit.base.text import shown
from opskit.chain import approvals
from opskit.chain import feature as chain
from opskit.deploy import freeze
from opskit.git.repo import Git
from opskit.notify import decisions
from opskit.notify.base import Action
from opskit.storage import fleet_outbox
from opskit.storage.fleet import Unreachable
from opskit.storage.journal import Journal

NTFY_POLL = 3.0  # seconds between polls of an ntfy reply topic while --wait lasts
TG_POLL_MAX = 50  # Telegram long-poll ceiling per call


@dataclass
class InboxReport:
    applied: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    busy: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


@dataclass
class CliApplier:
    """A decision does what its command does: `opskit approve` / `reject` / `unfreeze`, and
    for Freeze the freeze a failed rollback sets."""

    settings: Settings
    journal: Journal
    clock: Clock = SYSTEM
    write: Callable[[str], None] = print

    def still_waits(self, found: decisions.Offer) -> str | None:
        if found.action in ("approve", "reject"):
            row = approvals.get(self.journal, int(found.target))
            if row is None:
                return f"change #{found.target} no longer exists"
            if row.status != "parked":
                return f"change #{row.id} no longer waits: {row.describe()}"
            if found.subject is not None and row.sha != found.subject:  # bound to the commit it was offered for
                return (f"change #{row.id} no longer waits: it is {row.sha[:10]} now, "
                        f"not the {found.subject[:10]} this button was offered for")
            return self._branch_moved(row)
        frozen = self.journal.frozen(found.target)
        if found.action == "unfreeze" and frozen is None:
            return f"{found.target} is not frozen"
        if found.action == "unfreeze" and found.subject is not None \
                and decisions.freeze_subject(frozen) != found.subject:
            # an Unfreeze offered for one freeze must not lift a later one
            return (f"{found.target} no longer waits for this Unfreeze: it was offered for the freeze of event "
                    f"#{found.subject}, which ended; the service was frozen again since")
        if found.action == "freeze" and frozen is not None:
            return f"{found.target} is already frozen"
        return None

    def _branch_moved(self, row: approvals.Parked) -> str | None:
        """A change whose branch was deleted or pushed again since it parked no longer waits,
        even before a chain has said so (a push still running, a deletion)."""
        svc = self.settings.services.get(row.service)
        if svc is None or svc.pull_mode:
            return None  # the merge step checks it against the remote
        try:
            tip = Git(svc.repo).branch_tip(row.raw_branch)
        except GitError:
            return None
        if tip is None:
            return f"change #{row.id} no longer waits: {row.branch} was deleted"
        if tip != row.sha:
            return f"change #{row.id} no longer waits: {row.branch} moved on to {tip[:10]}"
        return None

    def apply(self, found: decisions.Offer, by: str) -> tuple[str, bool]:
        if found.action == "approve":
            result = chain.approve(self.settings, self.journal, int(found.target), by=by, clock=self.clock,
                                   write=self.write)
            return f"approved by {by}: {result.status}" + ("" if result.ok else f" ({result.reason})"), result.ok
        if found.action == "reject":
            row = approvals.reject(self.settings, self.journal, int(found.target),
                                   f"rejected from {found.channel} by {by}", clock=self.clock, by=by)
            return f"rejected by {row.decided_by}: nothing merged", True
        if found.action == "unfreeze":
            was = freeze.unfreeze(self.settings, self.journal, found.target, by)
            return (f"unfrozen by {by}: deploys allowed again", True) if was \
                else (f"{found.target} was not frozen", False)
        done = freeze.freeze_by_hand(self.settings, self.journal, found.target, by=by, reason=f"tapped on {found.channel}",
                           clock=self.clock, write=self.write)
        if done is None:
            return f"{found.target} was frozen already", False
        return f"frozen by {by}: deploys refused until `opskit unfreeze {found.target}`", True

    def waits_again(self, found: decisions.Offer) -> bool:
        if found.action != "approve":
            return False
        row = approvals.get(self.journal, int(found.target))
        return row is not None and row.status == "parked"


class _Down(Exception):
    """A channel could not be read; its line for stderr."""


def actionable(settings: Settings) -> list[ChannelSettings]:
    return [ch for ch in settings.channels.values() if ch.actionable]


@contextlib.contextmanager
def _one_at_a_time(settings: Settings) -> Iterator[bool]:
    path = settings.state_dir / "inbox.lock"
    # Read-only is enough for flock; never created through a planted link (statefs, tests/test_state_links.py).
    fd = statefs.open_file(path, settings.state_dir, os.O_RDONLY | os.O_CREAT, 0o600, flock_only=True)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def run(settings: Settings, journal: Journal, *, wait: float = 0.0, clock: Clock = SYSTEM,
        write: Callable[[str], None] = print) -> InboxReport:
    channels = actionable(settings)
    if not channels:
        raise UsageError("no channel can carry a decision back: add a [notify.NAME] with type = \"telegram\", "
                         "or reply_url on an ntfy channel (README: approve from your phone)")
    if not decisions.holds_key(settings.state_dir):
        raise UsageError("inbox: in a shared state dir only root holds the decision key and applies taps; "
                         "root's cron runs it (sudo opskit cron install --system)")
    report = InboxReport()
    with _one_at_a_time(settings) as mine:
        if not mine:
            report.busy = True
            write("another `opskit inbox` is running; it takes the decisions")
            return report
        applier = CliApplier(settings, journal, clock, write)
        for v in decisions.resume(settings, journal, applier, clock):
            _record(report, v, "resumed")
        deadline = clock.monotonic() + max(0.0, wait)
        held = contextlib.ExitStack()
        # In a fleet, one host at a time reads each bot (a second getUpdates would end the
        # first with 409 Conflict); the others skip it this run, and take the taps handed to them.
        down: set[str] = _bots_read_elsewhere(settings, journal, channels, held, write)
        first = True
        with held:
            # After the first pass, a remainder under a second is not worth another long poll
            # (Telegram's timeout is whole seconds: 0 would answer at once, again and again).
            while first or deadline - clock.monotonic() >= 1.0:
                first = False
                _send_offers(settings, journal, clock)
                _take_handed(settings, journal, applier, report, clock, write)
                live = [ch for ch in channels if ch.name not in down]
                if not live:
                    break
                has_tg = any(ch.type == "telegram" for ch in live)
                for ch in live:
                    left = max(0.0, deadline - clock.monotonic())
                    try:
                        if ch.type == "telegram":
                            # With an ntfy topic to watch too, come back to it every few seconds.
                            hold = min(left, TG_POLL_MAX, NTFY_POLL if len(live) > 1 else TG_POLL_MAX)
                            _telegram(settings, journal, applier, ch, int(hold), report, clock, write)
                        else:
                            _ntfy(settings, journal, applier, ch, report, clock, write)
                    except _Down as e:
                        down.add(ch.name)
                        report.problems.append(redact(str(e)))
                if not has_tg and clock.monotonic() < deadline:
                    clock.sleep(min(NTFY_POLL, max(0.0, deadline - clock.monotonic())))
    return report


def _send_offers(settings: Settings, journal: Journal, clock: Clock) -> None:
    """Messages with buttons the push account's pipeline queued wait for the key holder to sign
    them (notify/decisions.py sign): send them now, once a poll — a minute at most."""
    from opskit import notify  # start-up: only when such a message waits

    box = fleet_outbox.box_for(journal)  # in a fleet, the shared outbox holds them
    try:
        names = box.channels_waiting_to_sign(journal)
    finally:
        box.close()
    if not names:
        return
    with contextlib.suppress(Exception):  # a channel that is down keeps them queued; never stops the taps
        notify.flush(settings, journal, clock=clock, retry_for=0, channels=names)


def _record(report: InboxReport, v: decisions.Verdict, channel: str) -> None:
    if v.status == "seen":
        return
    entry = {"channel": channel, "status": v.status, "text": v.text, "ok": v.ok}
    if v.offer is not None:
        entry.update(action=v.offer.action, target=v.offer.target, service=v.offer.service)
    (report.applied if v.status == "applied" else report.refused).append(entry)


# --- a fleet: one reader per bot, taps handed to the host they are for -----------------------

def _bots_read_elsewhere(settings: Settings, journal: Journal, channels: list[ChannelSettings],
                         held: contextlib.ExitStack, write: Callable[[str], None]) -> set[str]:
    """Take the fleet's reader lock of each bot (kept in `held` for the run); the channels
    whose bot another host reads now. Without the database, this host reads them (alone)."""
    fleet = journal.fleet
    tg = [ch for ch in channels if ch.type == "telegram" and ch.token is not None]
    if fleet is None or not tg:
        return set()
    from opskit.storage import fleet_locks  # only in a fleet, with a bot to read

    mine: dict[str, bool] = {}
    skipped: set[str] = set()
    for ch in tg:
        assert ch.token is not None
        key = fleet_locks.bot_key(ch.token.reveal())
        if key not in mine:
            if fleet.known_down(journal):
                mine[key] = True
            else:
                try:
                    mine[key] = held.enter_context(fleet_locks.try_lock(fleet, key))
                except Unreachable as e:
                    write(f"{ch.name}: the fleet database is unreachable ({e}); reading the bot from this host")
                    mine[key] = True
        if not mine[key]:
            write(f"{ch.name}: another host of the fleet reads this bot now; its taps for this host "
                  "are handed over")
            skipped.add(ch.name)
    return skipped


def _not_ours(settings: Settings, journal: Journal, query: dict[str, Any], clock: Clock) -> bool:
    """A button this host did not sign: no offer of ours, or our key does not match."""
    found, why = decisions.check(settings, journal, str(query.get("data", "")), clock)
    return found is None and (why or "").startswith("bad token")


def _hand_over(settings: Settings, journal: Journal, ch: ChannelSettings, update_id: int,
               query: dict[str, Any], clock: Clock, write: Callable[[str], None]) -> bool:
    """A tap on another host's button goes to the fleet's other hosts (the one whose key
    signed it applies it); True if it was handed over. _Down when it could not be: the
    update stays unconfirmed at Telegram for the next run."""
    fleet = journal.fleet
    if fleet is None or not _not_ours(settings, journal, query, clock):
        return False
    from opskit.storage import handoff  # only in a fleet

    payload = {"channel": ch.name, "update_id": update_id, "query": query, "from_host": fleet.host}
    try:
        others = _others(settings, fleet)
        if not others:
            return False
        handoff.hand(fleet, others, payload, journal.now())
    except Unreachable as e:
        # Kept here and handed over once the database is back: the bot's other taps go on.
        journal.kv_set(PENDING, f"{ch.name}:{update_id}", payload)
        write(f"{ch.name}: a tap on another host's button; the fleet database is unreachable ({e}), "
              "it is handed over when it is back")
        return True
    write(f"{ch.name}: a tap on another host's button, handed to {', '.join(others)}")
    return True


PENDING = "fleet-handoff"  # kv scope: taps for other hosts read while the database was away


def _others(settings: Settings, fleet: Any) -> list[str]:
    from opskit.storage import handoff  # only in a fleet

    return handoff.hosts(fleet, {h for svc in settings.services.values() for h in svc.hosts})


def _hand_pending(settings: Settings, journal: Journal, write: Callable[[str], None]) -> None:
    """Hand over the taps kept while the database was unreachable, oldest first."""
    fleet = journal.fleet
    pending = journal.kv_all(PENDING)
    if fleet is None or not pending:
        return
    from opskit.storage import handoff  # only in a fleet

    for key, payload in sorted(pending.items(), key=lambda kv: str(kv[0])):
        try:
            others = _others(settings, fleet)
            handoff.hand(fleet, others, payload, journal.now())
        except Unreachable:
            return
        journal.kv_delete(PENDING, key)
        write(f"{payload.get('channel')}: a tap read while the fleet database was away, handed to "
              f"{', '.join(others) or 'no other host'}")


def _take_handed(settings: Settings, journal: Journal, applier: CliApplier, report: InboxReport,
                 clock: Clock, write: Callable[[str], None]) -> None:
    """Apply the taps another host read for this one, each once."""
    fleet = journal.fleet
    if fleet is None or fleet.known_down(journal):
        return
    from opskit.storage import handoff  # only in a fleet

    _hand_pending(settings, journal, write)

    def handle(payload: dict[str, Any]) -> None:
        ch = settings.channels.get(str(payload.get("channel")))
        query, uid = payload.get("query"), payload.get("update_id")
        if ch is None or ch.type != "telegram" or not isinstance(query, dict) or not isinstance(uid, int):
            return
        if _not_ours(settings, journal, query, clock):
            return  # a button of a third host: that host applies it
        _tap(settings, journal, applier, ch, uid, query, report, clock, write)

    try:
        handoff.take(fleet, journal.now, handle)
    except Unreachable as e:
        write(f"the fleet database is unreachable ({e}); taps handed to this host wait there")


# --- Telegram --------------------------------------------------------------------------------

def _telegram(settings: Settings, journal: Journal, applier: CliApplier, ch: ChannelSettings, hold: int,
              report: InboxReport, clock: Clock, write: Callable[[str], None]) -> None:
    from opskit.notify import telegram  # httpx only when there is a channel to read

    state = journal.kv_get("inbox", ch.name) or {}
    body: dict[str, Any] = {"timeout": hold, "allowed_updates": ["callback_query"]}
    if state.get("offset"):
        body["offset"] = int(state["offset"])
    outcome, result = telegram.call(ch, "getUpdates", body, ch.timeout + hold)
    if outcome.kind != "delivered" or not isinstance(result, list):
        raise _Down(f"telegram channel {ch.name!r}: getUpdates failed ({outcome.error or 'no result'}); "
                    "the taps wait there for the next `opskit inbox`")
    last = None
    for update in result:
        uid = update.get("update_id")
        if not isinstance(uid, int):
            continue
        query = update.get("callback_query")
        if isinstance(query, dict) and not _hand_over(settings, journal, ch, uid, query, clock, write):
            _tap(settings, journal, applier, ch, uid, query, report, clock, write)
        journal.kv_set("inbox", ch.name, {"offset": uid + 1})
        last = uid
    if last is not None and journal.fleet is not None:
        # The next reader may be another host, with an offset of its own: confirm now what
        # this one read, so Telegram never gives it to a second host.
        telegram.call(ch, "getUpdates", {"offset": last + 1, "timeout": 0, "limit": 1,
                                         "allowed_updates": ["callback_query"]}, ch.timeout)


def _tap(settings: Settings, journal: Journal, applier: CliApplier, ch: ChannelSettings, update_id: int,
         query: dict[str, Any], report: InboxReport, clock: Clock, write: Callable[[str], None]) -> None:
    from opskit.notify import telegram  # start-up: httpx only when there is a channel to read
    from opskit.notify.base import clip, cut  # with telegram, above

    user = _obj(query.get("from"))
    uid = user.get("id")
    name = user.get("username")
    by = f"telegram:{uid}" + (f" @{name}" if isinstance(name, str) and name else "")
    refuse = None
    if not isinstance(uid, int) or uid not in ch.allowed_users:
        refuse = (f"telegram user {uid} is not in allowed_users of channel {ch.name}" if ch.allowed_users
                  else f"channel {ch.name} has no allowed_users: nobody may decide there")
    msg = _obj(query.get("message"))
    chat = _obj(msg.get("chat"))
    reply = {"chat_id": chat.get("id"), "message_id": msg.get("message_id")}
    v = decisions.receive(settings, journal, applier, channel=ch.name, msg_id=str(update_id),
                          token=str(query.get("data", "")), by=by, reply=reply, refuse=refuse, clock=clock)
    _record(report, v, ch.name)
    if v.status == "seen" and v.offer is None:
        return
    write(f"{ch.name}: {by}: {v.text}")
    # Telegram shows the answer as a toast; it must come within seconds of the tap, so a
    # tap read late (the next cron minute) cannot be answered: that is expected.
    telegram.call(ch, "answerCallbackQuery", {"callback_query_id": str(query.get("id", "")),
                                              "text": clip(v.text, 190), "show_alert": v.status == "refused"},
                  ch.timeout)
    if v.status in ("applied", "seen") and v.offer is not None and reply["message_id"] is not None:
        mark = "✅" if v.ok else "⚠️"
        text = cut(f"{msg.get('text') or ''}\n\n{mark} {v.text}", telegram.TEXT_MAX, "…")
        edit: dict[str, Any] = {"chat_id": reply["chat_id"], "message_id": reply["message_id"], "text": text}
        undo = decisions.sign(settings, journal, _undo(settings, journal, v, clock), clock) or ()
        if undo:
            edit["reply_markup"] = {"inline_keyboard": [[{"text": a.label, "callback_data": a.token} for a in undo]]}
        elif v.offer.status == "open" and isinstance(msg.get("reply_markup"), dict):
            edit["reply_markup"] = msg["reply_markup"]  # it waits again (lock busy, frozen): tap again later
        done, _ = telegram.call(ch, "editMessageText", edit, ch.timeout)
        if done.kind == "delivered" or done.status == 400:  # 400: deleted, or edited already
            decisions.answered(journal, v.offer.id, clock)
        else:
            write(f"{ch.name}: could not mark the message as decided ({done.error})")


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- ntfy ------------------------------------------------------------------------------------

def _ntfy(settings: Settings, journal: Journal, applier: CliApplier, ch: ChannelSettings, report: InboxReport,
          clock: Clock, write: Callable[[str], None]) -> None:
    from opskit.notify.base import request  # start-up: httpx only when an ntfy topic is read

    assert ch.reply_url is not None
    state = journal.kv_get("inbox", ch.name) or {}
    headers = {"Authorization": f"Bearer {ch.token.reveal()}"} if ch.token is not None else {}
    outcome, resp = request("GET", ch.reply_url.reveal().rstrip("/") + "/json", timeout=ch.timeout, headers=headers,
                            params={"poll": "1", "since": str(state.get("since") or "all")})
    if outcome.kind != "delivered" or resp is None:
        raise _Down(f"ntfy channel {ch.name!r}: the reply topic could not be read ({outcome.error}); "
                    "the taps wait there (12 h) for the next `opskit inbox`")
    for line in resp.text.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if not isinstance(m, dict) or m.get("event", "message") != "message" or not isinstance(m.get("id"), str):
            continue
        by = f"ntfy:{ch.name}"
        v = decisions.receive(settings, journal, applier, channel=ch.name, msg_id=m["id"],
                              token=str(m.get("message", "")), by=by, clock=clock)
        _record(report, v, ch.name)
        if v.status != "seen" or v.offer is not None:
            write(f"{ch.name}: {by}: {v.text}")
            _follow_up(settings, journal, ch, v, clock)
            if v.offer is not None and v.status != "refused":
                decisions.answered(journal, v.offer.id, clock)
        journal.kv_set("inbox", ch.name, {"since": m["id"]})


def _follow_up(settings: Settings, journal: Journal, ch: ChannelSettings, v: decisions.Verdict,
               clock: Clock) -> None:
    """ntfy cannot edit the tapped message: the answer is a new one on the same topic."""
    from opskit import notify  # only to answer an ntfy tap

    service = v.offer.service if v.offer is not None else None
    what = f"{v.offer.action} {_target(v.offer)}" if v.offer is not None else "decision"
    with contextlib.suppress(Exception):  # durable in the outbox; never undoes the decision
        status = "applied" if v.status == "seen" else v.status
        notify.send(settings, journal, shown(v.text, lines=True), title=shown(f"{what}: {status}"),
                    level="info" if v.ok else "warning", service=service, channels=[ch.name], clock=clock,
                    actions=_undo(settings, journal, v, clock))


def _undo(settings: Settings, journal: Journal, v: decisions.Verdict, clock: Clock) -> list[Action]:
    """A service frozen from a phone gets its Unfreeze button right there."""
    if v.offer is None or v.offer.action != "freeze" or not v.ok or v.status != "applied":
        return []
    return decisions.buttons(settings, journal, v.offer.service, [("unfreeze", v.offer.target)], clock=clock)


def _target(o: decisions.Offer) -> str:
    return f"change #{o.target}" if o.action in ("approve", "reject") else o.target
