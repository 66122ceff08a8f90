"""`opskit incident`: the story of one deploy incident, from the journal alone.

An incident is the chain (one push, one `opskit deploy`) in which a health gate failed, a
rollback ran or the service froze. From any of its events the story is rebuilt: every
step of that chain in order with its time (push, test, review, merge, deploy, the gate's
probes, revert, redeploy, re-gate), the notifications its events caused and when each was
delivered, and the human decisions about it. Then the figures an on-call person is asked
for the morning after:

- detected after: the bad deploy's end → health.fail
- restored after: the bad deploy's end → health.pass on the reverted code
- downtime: the first failed probe → the first healthy probe after the revert, from the
  gates' own probe times (health events' `started` + `probe_log`)
- human involvement: none, or who decided what, from which channel, and when

Times are the events' `ts_precise` (microseconds) where stored; older events have whole
seconds and their figures are whole seconds too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from opskit.base.clock import iso_precise, parse_iso
from opskit.base.errors import GitError, UsageError
from opskit.base.text import short, shown
from opskit.git.repo import Git
from opskit.storage import outbox
from opskit.storage.journal import Event, Journal

if TYPE_CHECKING:
    from opskit.storage.fleet_read import FleetEvents

# Where an incident is read from: this host's journal, or every host's (a fleet journal).
Source: TypeAlias = "Journal | FleetEvents"

ANCHORS = ("health.fail", "rollback.start", "rollback.complete", "rollback.fail", "service.frozen")
FENCE = "```"
SHOWN = ("push.received", "test.", "review.", "merge.", "deploy.", "health.", "rollback.", "service.frozen")


@dataclass
class Step:
    when: dt.datetime
    kind: str  # the event type, or probe / notify / decision
    text: str
    event_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"time": iso_precise(self.when), "kind": self.kind, "text": self.text, "event_id": self.event_id}


@dataclass
class Incident:
    service: str
    chain: str | None
    anchor: int
    status: str  # reverted | rollback-failed | frozen | failed
    bad: str | None
    revert: str | None
    reason: str
    steps: list[Step] = field(default_factory=list)
    detected_after: float | None = None
    restored_after: float | None = None
    downtime: float | None = None
    humans: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    # The service's own log as each failing event caught it (deploy/service_logs.py), all lines.
    logs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"service": self.service, "chain": self.chain, "event_id": self.anchor, "status": self.status,
                "bad": self.bad, "revert": self.revert, "reason": self.reason,
                "detected_after": _r(self.detected_after), "restored_after": _r(self.restored_after),
                "downtime": _r(self.downtime), "human_involvement": self.humans or None,
                "reverted": self.reverted, "notifications": self.notifications, "logs": self.logs,
                "steps": [s.to_dict() for s in self.steps]}


def _r(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


# --- finding one -----------------------------------------------------------------------------

def anchors(journal: Source, service: str | None = None, limit: int = 50) -> list[Event]:
    """The first incident event of each chain, newest last."""
    seen: dict[str, Event] = {}
    out = []
    for t in ANCHORS:
        for ev in journal.query(service=service, type_prefix=t, limit=500):
            if ev.type != t:
                continue
            key = ev.chain or f"event-{ev.id}"
            if key not in seen or ev.id < seen[key].id:
                seen[key] = ev
    out = sorted(seen.values(), key=lambda e: e.id)
    return out[-limit:]


def find(journal: Source, which: str, service: str | None = None) -> Event:
    if which == "last":
        found = anchors(journal, service, limit=1)
        if not found:
            raise UsageError("no incident in the journal" + (f" for {service}" if service else "")
                             + " (none of: " + ", ".join(ANCHORS) + ")")
        return found[-1]
    if not which.isdigit():
        raise UsageError(f"{which!r} is not an event id: give one from `opskit incident --list`, or `last`")
    ev = journal.get(int(which))
    if ev is None:
        raise UsageError(f"no event #{which}; `opskit incident --list` shows the incidents")
    if service is not None and ev.service != service:
        raise UsageError(f"event #{which} is about {ev.service}, not {service}")
    chain_events = journal.query(chain=ev.chain) if ev.chain else [ev]
    if not any(e.type in ANCHORS for e in chain_events):
        raise UsageError(f"event #{which} ({ev.type}) is not part of a deploy incident (a chain with one of: "
                         + ", ".join(ANCHORS) + "); `opskit incident --list` shows them")
    return ev


# --- the story ---------------------------------------------------------------------------------

def build(journal: Source, anchor: Event) -> Incident:
    events = journal.query(chain=anchor.chain) if anchor.chain else [anchor]
    svc = anchor.service or "?"
    first: dict[str, Event] = {}
    for e in events:
        first.setdefault(e.type, e)
    start = first.get("rollback.start")
    complete = first.get("rollback.complete")
    failed = first.get("rollback.fail")
    frozen = first.get("service.frozen")
    bad = (start.data.get("bad") if start else None) or (failed.data.get("bad") if failed else None)
    revert = complete.data.get("revert") if complete else None
    status = "reverted" if complete else "frozen" if frozen else "rollback-failed" if failed else "failed"
    fail = first.get("health.fail")
    reason = str((start or failed or fail or anchor).data.get("reason") or "")
    inc = Incident(service=svc, chain=anchor.chain, anchor=anchor.id, status=status, bad=bad, revert=revert,
                   reason=reason, reverted=list((start.data.get("reverted") if start else None) or []))

    for e in events:
        if any(e.type.startswith(p) for p in SHOWN):
            inc.steps.append(Step(e.when, e.type, describe(e), e.id))
        if e.type.startswith("health."):
            inc.steps.extend(_probes(e))
    _logs(inc, events)
    ids = {e.id for e in events}
    _notifications(journal, inc, ids)
    _humans(journal, inc, events)
    inc.steps.sort(key=lambda s: (s.when, s.event_id or 0))

    bad_deploy = next((e for e in events if e.type == "deploy.complete" and e.data.get("kind", "deploy") == "deploy"
                       and (bad is None or e.data.get("sha") == bad)), None)
    healed = next((e for e in events if e.type == "health.pass" and revert and e.sha == revert), None)
    if bad_deploy and fail:
        inc.detected_after = (fail.when - bad_deploy.when).total_seconds()
    if bad_deploy and healed:
        inc.restored_after = (healed.when - bad_deploy.when).total_seconds()
    down_from = _first_probe(fail, ok=False) if fail else None
    down_to = _first_probe(healed, ok=True) if healed else None
    if down_from and down_to:
        inc.downtime = (down_to - down_from).total_seconds()
    return inc


def _first_probe(ev: Event, *, ok: bool) -> dt.datetime | None:
    started, log = ev.data.get("started"), ev.data.get("probe_log")
    if not isinstance(started, str) or not isinstance(log, list):
        return None
    for at, good, _detail in log:
        if bool(good) is ok:
            return parse_iso(started) + dt.timedelta(seconds=float(at))
    return None


def _probes(ev: Event) -> list[Step]:
    started, log = ev.data.get("started"), ev.data.get("probe_log")
    if not isinstance(started, str) or not isinstance(log, list):
        return []
    t0 = parse_iso(started)
    return [Step(t0 + dt.timedelta(seconds=float(at)), "probe", f"probe +{float(at):.1f}s {'ok ' if ok else 'BAD'} {detail}",
                 ev.id) for at, ok, detail in log]


def _logs(inc: Incident, events: list[Event]) -> None:
    """Each failing event's `logs` once (a rollback.fail repeats the gate's when nothing newer ran)."""
    seen: set[tuple[str, ...]] = set()
    for e in events:
        lines, note = e.data.get("logs"), e.data.get("logs_note")
        if not isinstance(lines, list) or (not lines and not note):
            continue
        key = tuple(str(x) for x in lines) + (str(note or ""),)
        if key in seen:
            continue
        seen.add(key)
        inc.logs.append({"event_id": e.id, "type": e.type, "sha": e.sha, "lines": [str(x) for x in lines],
                         "note": note})


def _notifications(journal: Source, inc: Incident, ids: set[int]) -> None:
    if not ids:
        return
    local = journal if isinstance(journal, Journal) else journal.local
    if not isinstance(journal, Journal):  # the fleet's ids: this host's outbox knows its own events
        ids = set(journal.local_ids(sorted(ids)))
    for r in outbox.for_events(local, sorted(ids)):
        when = parse_iso(r["delivered"] or r["created"])
        sent = local.sent_at(r["id"])
        if sent:
            when = parse_iso(sent)
        state = "delivered" if r["status"] == "delivered" else f"NOT delivered ({r['status']})"
        inc.notifications.append({"outbox_id": r["id"], "channel": r["channel"], "title": r["title"],
                                  "status": r["status"], "delivered": r["delivered"]})
        inc.steps.append(Step(when, "notify", f"notification to {r['channel']}: {r['title'] or ''} — {state}"))


def _humans(journal: Source, inc: Incident, events: list[Event]) -> None:
    for e in events:
        if e.type == "review.pass" and e.data.get("human"):
            inc.humans.append(f"{e.data.get('decided_by')} approved change #{e.data.get('approval')} at {e.ts}")
    if not events:
        return
    after = events[0].id
    for e in journal.query(service=inc.service, type_prefix="decision.applied", after_id=after):
        if e.data.get("action") in ("freeze", "unfreeze"):
            text = f"{e.data.get('by')} tapped {e.data.get('action')} on {e.data.get('channel')} at {e.ts}"
            inc.humans.append(text)
            inc.steps.append(Step(e.when, "decision", text, e.id))
    for e in journal.query(service=inc.service, type_prefix="service.unfrozen", after_id=after):
        inc.humans.append(f"{e.data.get('who')} unfroze {inc.service} at {e.ts}")


def describe(e: Event) -> str:
    d = e.data
    sha = (e.sha or "")[:10]
    if e.type == "push.received":
        return f"push of {str(d.get('ref', '')).removeprefix('refs/heads/')} ({str(d.get('new', ''))[:10]})"
    if e.type in ("test.pass", "test.fail"):
        tail = [ln for ln in str(d.get("tail") or "").splitlines() if ln.strip()]
        return f"{e.type}: exit {d.get('exit')} in {d.get('duration', '?')}s" + (f" — {tail[-1][:80]}" if tail else "")
    if e.type.startswith("review."):
        who = f" by {d['decided_by']}" if d.get("decided_by") else ""
        return f"{e.type}{who}" + (f": {d.get('cause')}" if e.type == "review.needs-human" else "")
    if e.type == "merge.complete":
        return f"merged {d.get('branch')} into {d.get('into')}: {str(d.get('merge', ''))[:10]}"
    if e.type == "deploy.start":
        what = "redeploy of the revert" if d.get("kind") == "revert" else "deploy"
        return f"{what} {sha} started: {d.get('subject', '')}"
    if e.type == "deploy.complete":
        return f"deploy command finished in {d.get('duration', '?')}s ({d.get('kind', 'deploy')} {sha})"
    if e.type in ("health.pass", "health.fail"):
        return f"{e.type} on {sha}: {d.get('reason', '')}"
    if e.type == "rollback.start":
        return f"rollback of {str(d.get('bad', ''))[:10]} ({d.get('strategy')}) → last good {str(d.get('good', ''))[:10]}"
    if e.type == "rollback.complete":
        return f"rolled back: {str(d.get('revert', ''))[:10]} is live and healthy"
    if e.type == "rollback.fail":
        return f"rollback FAILED: {d.get('reason', '')}"
    if e.type == "service.frozen":
        return f"service frozen: {d.get('reason', '')}"
    return e.type


# --- rendering ---------------------------------------------------------------------------------

def _secs(x: float | None) -> str:
    if x is None:
        return "unknown"
    return f"{x:.2f}s" if x < 120 else f"{x / 60:.1f} min"


def render(inc: Incident) -> list[str]:
    t0 = inc.steps[0].when if inc.steps else None
    lines = [f"{inc.service}: incident #{inc.anchor} (chain {inc.chain}): {inc.status} — {inc.reason}"]
    for s in inc.steps:
        rel = f"+{(s.when - t0).total_seconds():7.2f}s" if t0 else ""
        lines.append(f"  {s.when.strftime('%H:%M:%S.%f')[:-3]} {rel}  {s.text}")
    lines += [f"detected after:  {_secs(inc.detected_after)} (deploy end → health.fail)",
              f"restored after:  {_secs(inc.restored_after)} (deploy end → healthy on the reverted code)",
              f"downtime:        {_secs(inc.downtime)} (first failed probe → first healthy probe after the revert)",
              "human involvement: " + ("; ".join(inc.humans) if inc.humans else "none")]
    for lg in inc.logs:
        lines.append(f"service log at {lg['type']} #{lg['event_id']} ({str(lg['sha'] or '')[:10]}):"
                     + (f" {lg['note']}" if lg["note"] else ""))
        lines += [f"  | {ln}" for ln in lg["lines"]]
    return [shown(line) for line in lines]  # steps quote commit subjects and probe output


def markdown(inc: Incident, repo: Git | None) -> str:
    day = inc.steps[0].when.strftime("%Y-%m-%d") if inc.steps else ""
    out = [f"# Postmortem: {inc.service}, {day} — {inc.status}", "",
           f"Incident event #{inc.anchor}, chain `{inc.chain}`. Cause as opskit saw it: {inc.reason}", "",
           "## Impact", "",
           f"- Downtime: {_secs(inc.downtime)} (first failed probe → first healthy probe after the revert)",
           f"- Detected after {_secs(inc.detected_after)}; restored after {_secs(inc.restored_after)}"
           " (both from the end of the bad deploy)",
           "- Users affected: _to fill in_", "", "## Timeline (UTC)", "", "| time | step |", "|---|---|"]
    out += [f"| {s.when.strftime('%H:%M:%S.%f')[:-3]} | {s.text.replace('|', '/')} |" for s in inc.steps]
    out += ["", "## Reverted commits", ""]
    for sha in inc.reverted:
        out.append(f"### `{sha[:10]}`")
        if repo is not None:
            try:
                out += ["", "```", repo.run("show", "--stat", "--format=%s%n%an <%ae>, %ad", sha).stdout.rstrip(),
                        "```"]
            except GitError:
                out.append("(not in the repository any more)")
        out.append("")
    if inc.logs:
        out += ["## The service's log", ""]
        for lg in inc.logs:
            out.append(f"At {lg['type']} #{lg['event_id']} (`{str(lg['sha'] or '')[:10]}`)"
                       + (f": {lg['note']}" if lg["note"] else ":"))
            if lg["lines"]:
                out += ["", FENCE] + [str(ln).replace(FENCE, "'" * 3) for ln in lg["lines"]] + [FENCE]
            out.append("")
    out += ["## What opskit did", ""]
    out += [f"- {s.text}" for s in inc.steps if s.kind.startswith(("rollback.", "service.frozen", "deploy.start"))]
    out += ["", "## Human involvement", ""] + ([f"- {h}" for h in inc.humans] or ["- none"])
    out += ["", "## Follow-ups", "", "- [ ] Root cause: _to fill in_", "- [ ] Why the tests/review did not catch it: _to fill in_",
            "- [ ] Re-land the fix (the reverted tree stays quarantined until released)", ""]
    return shown("\n".join(out), lines=True)


def summary_line(journal: Source, ev: Event) -> str:
    inc = build(journal, ev)
    return shown(f"#{ev.id} {ev.ts} {inc.service} {inc.status}: {inc.reason[:80]}"
                 + (f" (downtime {_secs(inc.downtime)})" if inc.downtime is not None else ""))


# --- the last one, for `opskit status` ------------------------------------------------------------

def last_since(journal: Source, service: str, since: dt.datetime) -> Incident | None:
    """The service's newest incident at or after `since`, built: found by service, type and time
    (journal.newest_of), then its own chain, so a status run reads a few rows, not the journal."""
    ev = journal.newest_of(ANCHORS, service, since)
    if ev is None:
        return None
    if ev.chain:  # the incident's id is its chain's first incident event, as `--list` names it
        ev = next((e for e in journal.query(chain=ev.chain) if e.type in ANCHORS), ev)
    return build(journal, ev)


def headline(journal: Source, inc: Incident) -> str:
    """What happened, in a few words: `auto-reverted 4d62098a1234: health gate failed: Connection refused`."""
    anchor = journal.get(inc.anchor)
    by_gate = anchor is not None and anchor.type == "health.fail"
    auto = by_gate or (anchor is not None and anchor.type == "rollback.start"
                       and anchor.data.get("trigger_event") is not None)
    what = {"reverted": "auto-reverted" if auto else "reverted", "frozen": "frozen after",
            "rollback-failed": "rollback failed for", "failed": "gate failed for"}.get(inc.status, inc.status)
    bad = inc.bad or (anchor.sha if anchor else None)
    cause = f"health gate failed: {inc.reason}" if by_gate and not inc.reason.startswith("health gate") else inc.reason
    return shown(f"{what} {short(bad)}: {cause}" if bad else f"{what}: {cause}")


def seconds(x: float | None) -> str:
    """A figure as `opskit incident` prints it (`downtime: 6.20s`)."""
    return _secs(x)
