"""`opskit status`: one screen that answers "what runs where, and is it all right?".

collect() returns plain data (the --json output); render() prints it. Besides the deploy
state, each service shows its drift and its feature-branch chains (SECTIONS, below).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import Any

from opskit.base import accounts
from opskit.base.clock import SYSTEM, Clock, parse_iso
from opskit.base.config import ServiceSettings, Settings
from opskit.base.errors import OpsError
from opskit.base.lock import is_held, read_holder
from opskit.base.proc import pid_alive
from opskit.base.text import printable, shown
from opskit.chain.feature import status_section
from opskit.git.repo import Git
from opskit.notify import broken_channels, outbox_summary, ping
from opskit.storage import fallback, outbox
from opskit.storage.journal import Journal
from opskit.views import incident
from opskit.views.reactions import needs_attention

# How far back `opskit status` names a service's last incident.
INCIDENT_DAYS = 7


def _deployed(svc: ServiceSettings) -> dict[str, Any]:
    wt = Git(svc.worktree)
    if not wt.is_repo():
        return {"sha": None, "problem": f"{svc.worktree} is not a git checkout"}
    head = wt.head()
    if head is None:
        return {"sha": None, "problem": "no commit checked out"}
    return {"sha": head, "short": head[:10], "subject": printable(wt.subject(head)), "branch": wt.current_branch()}


def _from_journal(svc: ServiceSettings, rows: list[Any]) -> dict[str, Any] | None:
    """An operator's view of a worktree another account owns: git must not run there as them
    (accounts.py), so the deployed commit comes from the journal's last healthy deploy."""
    pw = accounts.owner(svc.worktree)
    if os.geteuid() == 0 or pw is None or pw.pw_uid == os.geteuid():
        return None
    row = next((r for r in rows if r["status"] == "healthy"), None)
    if row is None:
        return {"sha": None, "problem": f"no healthy deploy in the journal (git in {svc.worktree} runs "
                                        f"only as {pw.pw_name} or root)"}
    sha = str(row["sha"])
    return {"sha": sha, "short": sha[:10], "subject": f"(last healthy deploy in the journal; the worktree is "
                                                      f"{pw.pw_name}'s)", "branch": svc.branch}


def last_incident(journal: Journal, svc: ServiceSettings, clock: Clock = SYSTEM) -> dict[str, Any] | None:
    """The service's newest incident of the last INCIDENT_DAYS days, or None. History, not
    attention: a reverted service is healthy again (a freeze or a failed verdict is what needs
    a person, and attention() says so on its own)."""
    inc = incident.last_since(journal, svc.name, clock.now() - dt.timedelta(days=INCIDENT_DAYS))
    if inc is None:
        return None
    anchor = journal.get(inc.anchor)
    return {"id": inc.anchor, "ts": anchor.ts if anchor else None, "status": inc.status,
            "summary": incident.headline(journal, inc),
            "downtime_s": round(inc.downtime, 3) if inc.downtime is not None else None,
            "command": f"opskit incident {inc.anchor}"}


def attention_fields(settings: Settings, journal: Journal, svc: ServiceSettings,
                     rows: list[Any] | None = None) -> dict[str, Any]:
    """A service's part of attention(), from the journal only (no git): status shows it, the
    heartbeat sends it (views/heartbeat.py), metrics export it."""
    if rows is None:
        rows = journal.deploys(svc.name, limit=50)
    verdict = next((r for r in rows if r["status"] != "running"), None)
    running = [r for r in rows if r["status"] == "running"]
    in_progress = None
    if running:
        r = running[0]
        live = pid_alive(int(r["pid"] or 0)) and is_held(settings.state_dir, svc.name)
        in_progress = {"sha": r["sha"], "kind": r["kind"], "step": r["step"], "since": r["started"],
                       "pid": r["pid"], "alive": live}
        if live:
            in_progress["holder"] = read_holder(settings.state_dir, svc.name)
    return {
        "name": svc.name,
        "last_verdict": None if verdict is None else {
            "sha": verdict["sha"], "status": verdict["status"], "kind": verdict["kind"],
            "when": verdict["finished"] or verdict["started"], "reason": verdict["reason"]},
        "frozen": journal.frozen(svc.name),
        "in_progress": in_progress,
    }


def service_status(settings: Settings, journal: Journal, svc: ServiceSettings,
                   clock: Clock = SYSTEM) -> dict[str, Any]:
    rows = journal.deploys(svc.name, limit=50)
    try:
        deployed = _from_journal(svc, rows) or _deployed(svc)
    except OpsError as e:
        deployed = {"sha": None, "problem": str(e)}
    fields = attention_fields(settings, journal, svc, rows)
    last_good = journal.last_good(svc.name)
    entry: dict[str, Any] = {
        "name": svc.name,
        "mode": "pull" if svc.pull_mode else "push",
        "branch": svc.branch,
        "deployed": deployed,
        "last_verdict": fields["last_verdict"],
        "last_good": last_good,
        "frozen": fields["frozen"],
        "quarantined": len(journal.quarantine_list(svc.name)),
        "in_progress": fields["in_progress"],
        "last_incident": _guarded(lambda: last_incident(journal, svc, clock)),
    }
    for name, fn in SECTIONS.items():
        try:
            entry[name] = fn(settings, journal, svc)
        except Exception as e:  # one broken section must not hide the rest of the screen
            entry[name] = {"error": str(e)[:200]}
    return entry


def collect(settings: Settings, journal: Journal, services: list[str] | None = None,
            clock: Clock = SYSTEM, host: str | None = None) -> dict[str, Any]:
    """`host`: only that host of the fleet (this host's services only when it is this host)."""
    names = services or sorted(settings.services)
    if host is not None and settings.fleet is not None and host != settings.fleet.host:
        names = []
    out: dict[str, Any] = {"services": [service_status(settings, journal, settings.service(n), clock)
                                        for n in names]}
    out["outbox"] = outbox_summary(journal)
    out["broken_channels"] = {k: v for k, v in broken_channels(journal).items() if v.get("broken")}
    out["cron_check"] = _guarded(lambda: _cron_check(settings, journal, clock))
    out["fallback_pending"] = _guarded(lambda: fallback.pending(settings.state_dir))
    out.update(outside_watch(settings, journal, clock))
    # A failure recorded while a heartbeat was configured means nothing once it is removed.
    out["heartbeat"] = (_guarded(lambda: journal.kv_get(ping.HEARTBEAT, "state"))
                        if settings.monitor.heartbeat is not None else None)
    if settings.reactions:
        out["reactions"] = _guarded(lambda: _reactions(settings, journal))
    if journal.fleet is not None:
        out["fleet"] = _guarded(lambda: fleet_view(journal, clock, host, services))
    out["attention"] = attention(out)
    return out


def fleet_view(journal: Journal, clock: Clock = SYSTEM, host: str | None = None,
               services: list[str] | None = None) -> dict[str, Any]:
    """Every host of the fleet as the database has them: when each last forwarded and how far
    behind that is, its events there, and per service the last verdict and the last event;
    the freezes in force (a freeze holds on every host). Without the database: this host's
    record of since when it is away."""
    from opskit.storage import fleet_read  # only a host with a fleet journal reads the database
    from opskit.storage.fleet import Unreachable  # (and the fleet module with it)

    fleet = journal.fleet
    assert fleet is not None
    out: dict[str, Any] = {"host": fleet.host, "reachable": True, "unreachable_since": None, "error": None,
                           "pending": _guarded(lambda: fleet_read.pending(fleet, journal)), "hosts": [],
                           "frozen": {}}
    try:
        found = fleet_read.hosts(fleet, journal)
        out["frozen"] = fleet_read.frozen(fleet, journal)
    except Unreachable as e:
        down = fleet_read.note_unreachable(fleet, journal, str(e))
        return {**out, "reachable": False, "unreachable_since": down.get("since"), "error": down.get("error")}
    if fleet_read.unreachable(journal) is not None:  # back: forward what waited, clear the record
        fleet.sync(journal)
        out["pending"] = _guarded(lambda: fleet_read.pending(fleet, journal))
    now = clock.now()
    for h in found:
        if host is not None and h["host"] != host:
            continue
        if services:
            h["services"] = [s for s in h["services"] if s["name"] in services]
        h["behind_s"] = round((now - parse_iso(h["seen"])).total_seconds()) if h.get("seen") else None
        for s in h["services"]:
            s["frozen"] = out["frozen"].get(s["name"])
        out["hosts"].append(h)
    return out


def watch_data(settings: Settings, journal: Journal, clock: Clock = SYSTEM,
               cron_check: Any = None) -> dict[str, Any]:
    """What attention() reads, from the journal only (no git, no sections): the heartbeat's and
    the metrics' input. cron_check: its health as measured before this run (the heartbeat is
    sent by cron-check itself, which is never late once it runs)."""
    out: dict[str, Any] = {"services": [attention_fields(settings, journal, settings.service(n))
                                        for n in sorted(settings.services)]}
    out["broken_channels"] = {k: v for k, v in broken_channels(journal).items() if v.get("broken")}
    out["cron_check"] = (cron_check if cron_check is not None
                         else _guarded(lambda: _cron_check(settings, journal, clock)))
    out["fallback_pending"] = _guarded(lambda: fallback.pending(settings.state_dir))
    out.update(outside_watch(settings, journal, clock))
    if settings.reactions:
        out["reactions"] = _guarded(lambda: _reactions(settings, journal))
    if journal.fleet is not None:
        out["fleet"] = _guarded(lambda: _fleet_record(journal))
    return out


def _fleet_record(journal: Journal) -> dict[str, Any]:
    """The fleet's part of the heartbeat's attention: this host's record only (kv
    fleet/unreachable, written by every forward that failed), no connection of its own."""
    down = journal.kv_get("fleet", "unreachable")
    if not isinstance(down, dict):
        return {"reachable": True, "unreachable_since": None, "error": None}
    return {"reachable": False, "unreachable_since": down.get("since"), "error": down.get("error")}


def outside_watch(settings: Settings, journal: Journal, clock: Clock) -> dict[str, Any]:
    """Outbox messages waiting longer than [opskit] outbox_alarm, and jobs cron-check found missed."""
    from opskit.jobs.cron_check import missed_jobs  # the jobs' side is cron-check's, read once there

    now = clock.now()
    old = {}
    for channel, (count, oldest) in outbox.waiting(journal).items():
        age = (now - parse_iso(oldest)).total_seconds()
        if age > settings.monitor.outbox_alarm:
            old[channel] = {"count": count, "oldest": oldest, "age_seconds": round(age)}
    return {"outbox_old": old, "jobs_missed": _guarded(lambda: missed_jobs(journal))}
def _reactions(settings: Settings, journal: Journal) -> list[dict[str, Any]]:
    """Each reaction's standing (`opskit reactions`); attention names a failing or late one."""
    from opskit.reactions.dispatch import status  # only configs with [[reaction]] tables

    return status(settings, journal)


def attention(data: dict[str, Any]) -> list[str]:
    """What needs a person, or the safety net, now: `opskit status` exits 1 when this is not empty.
    Drift is not here: drift-scan reports and notifies it."""
    out = []
    for s in data["services"]:
        p = s.get("in_progress")
        if p and not p["alive"]:
            out.append(f"{s['name']}: a {p['kind']} of {p['sha'][:10]} was interrupted at step {p['step']} "
                       f"(the next cron-check or `opskit deploy {s['name']}` finishes it)")
        if s.get("frozen"):
            out.append(f"{s['name']}: frozen, deploys refused (opskit unfreeze {s['name']})")
        v = s.get("last_verdict")
        if v and v["status"] == "failed" and not (p and p["alive"]):
            out.append(f"{s['name']}: the last {v['kind']} failed ({v['sha'][:10]})"
                       + (f": {v['reason']}" if v.get("reason") else ""))
    for name in sorted(data.get("broken_channels") or {}):
        out.append(f"channel {name} is broken: its notifications go to its fallback or wait")
    cc = data.get("cron_check")
    if isinstance(cc, dict) and cc.get("overdue"):
        out.append("cron-check is not running: nothing watches the jobs or finishes an interrupted deploy")
    for channel, info in sorted((data.get("outbox_old") or {}).items()):
        out.append(f"channel {channel}: {info['count']} message(s) waiting in the outbox since {info['oldest']}, "
                   "longer than outbox_alarm (opskit notify --flush; is the channel reachable?)")
    missed = data.get("jobs_missed")
    for name, info in sorted(missed.items() if isinstance(missed, dict) and "error" not in missed else []):
        out.append(f"job {name} missed its run due {info.get('expected')} (opskit cron-check)")
    hb = data.get("heartbeat")
    if isinstance(hb, dict) and hb.get("failing"):
        out.append(f"the heartbeat ping fails since {hb.get('since')}: {hb.get('error')} "
                   "(the external monitor will report this host late)")
    for row in data.get("reactions") or []:
        why = needs_attention(row) if isinstance(row, dict) else None
        if why:
            out.append(why)
    fl = data.get("fleet")
    if isinstance(fl, dict) and fl.get("reachable") is False:
        out.append(f"fleet journal unreachable since {fl.get('unreachable_since')}: {fl.get('error')} (this host's "
                   "events wait in its own journal and are forwarded once it is back; `opskit doctor` says how to fix it)")
    elif isinstance(fl, dict) and "error" in fl and "reachable" not in fl:
        out.append(f"fleet journal: cannot be read: {fl['error']}")
    waiting = data.get("fallback_pending")
    if isinstance(waiting, int) and waiting:
        out.append(f"{waiting} record(s) wait in the fallback log, outside the journal (journaled by the "
                   "next command that can write it; `opskit doctor` checks the journal)")
    return out


def _guarded(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as e:  # one broken section must not hide the rest of the screen
        return {"error": str(e)[:200]}


def _cron_check(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> Any:
    # Who watches the watcher: cron-check notices silent jobs, status notices a silent cron-check.
    from opskit.jobs.cron_check import cron_check_health

    return cron_check_health(journal, settings, clock)


def _drift_section(settings: Settings, journal: Journal, svc: ServiceSettings) -> Any:
    state = journal.kv_get("drift", svc.name)
    if not state:
        return "clean at the last scan" if journal.last("drift.", svc.name) else "never scanned"
    return f"{state.get('count')} finding(s) since {state.get('since')} (opskit drift-scan {svc.name})"




def _waiting(outbox: dict[str, dict[str, int]] | None) -> str:
    if outbox is None:
        return "outbox: unknown (notify not installed)"
    parts = []
    for channel, counts in sorted(outbox.items()):
        waiting = {k: v for k, v in counts.items() if k != "delivered" and v}
        if waiting:
            parts.append(f"{channel}: " + ", ".join(f"{v} {k}" for k, v in sorted(waiting.items())))
    return "outbox: " + ("; ".join(parts) if parts else "nothing waiting")


def render(data: dict[str, Any]) -> list[str]:
    """Plain lines (no markup): the command decides how to print them."""
    lines: list[str] = []
    if not data["services"] and data.get("fleet") is None:
        lines.append("no services configured (add a [service.NAME] table to opskit.toml)")
    for s in data["services"]:
        d = s["deployed"]
        head = f"{d['short']} {d['subject']}" if d.get("sha") else f"? ({d.get('problem')})"
        lines.append(f"{s['name']}  [{s['mode']} mode, {s['branch']}]")
        lines.append(f"  deployed:    {head}")
        v = s["last_verdict"]
        if v:
            why = f" — {v['reason']}" if v["reason"] and v["status"] != "healthy" else ""
            lines.append(f"  last verdict: {v['status']} ({v['kind']} {v['sha'][:10]}) at {v['when']}{why}")
        else:
            lines.append("  last verdict: none yet")
        f = s["frozen"]
        lines.append(f"  frozen:      YES since {f.get('since')}: {f.get('reason')} (opskit unfreeze {s['name']})"
                     if f else "  frozen:      no")
        lines.append(f"  quarantined: {s['quarantined']} tree(s)")
        p = s["in_progress"]
        if p:
            state = "running" if p["alive"] else "interrupted (holder gone; the next cron-check or deploy finishes it)"
            lines.append(f"  in progress: {p['kind']} {p['sha'][:10]} at step {p['step']} since {p['since']} "
                         f"(pid {p['pid']}, {state})")
        inc = s.get("last_incident")
        if isinstance(inc, dict) and "error" not in inc:
            lines.append(f"  last incident: {inc['ts']} {inc['summary']}; downtime "
                         f"{incident.seconds(inc['downtime_s'])} ({inc['command']})")
        elif isinstance(inc, dict):
            lines.append(f"  last incident: unknown ({inc['error']})")
        else:
            lines.append(f"  last incident: none in {INCIDENT_DAYS} days")
        for name in SECTIONS:
            if s.get(name) is not None:
                lines.append(f"  {name}: {s[name]}")
    lines.append(_waiting(data.get("outbox")))
    for name, info in sorted((data.get("broken_channels") or {}).items()):
        lines.append(f"channel {name} is BROKEN since {info.get('since')}: {info.get('error') or info.get('status')} "
                     "(fix its url; messages wait in the outbox or went to its fallback)")
    cc = data.get("cron_check")
    if isinstance(cc, dict) and cc.get("message"):
        lines.append(f"cron-check: {cc['message']}")
    lines += _fleet_lines(data.get("fleet"))
    needs = data.get("attention") or []
    lines.append("needs attention:" if needs else "needs attention: nothing")
    lines += [f"  - {line}" for line in needs]
    return [shown(line) for line in lines]  # subjects, branch names and reasons are data


def _fleet_lines(fl: Any) -> list[str]:
    if not isinstance(fl, dict):
        return []
    if "reachable" not in fl:
        return [f"fleet: cannot be read: {fl.get('error')}"]
    if not fl["reachable"]:
        return [f"fleet journal unreachable since {fl['unreachable_since']}: {fl['error']} "
                f"({fl.get('pending')} event(s) of this host wait to be forwarded)"]
    lines = [f"fleet: {len(fl['hosts'])} host(s); this host is {fl['host']}"
             + (f", {fl['pending']} event(s) not forwarded yet" if fl.get("pending") else "")]
    for h in fl["hosts"]:
        behind = f"{h['behind_s']}s ago" if h.get("behind_s") is not None else "never"
        lines.append(f"host {h['host']}: last seen {h.get('seen') or 'never'} ({behind}), "
                     f"{h['forwarded']} event(s) forwarded")
        for s in h["services"]:
            v = s.get("last_verdict")
            verdict = (f"{v['status']} ({v['event']} {str(v['sha'] or '')[:10]}) at {v['when']}" if v
                       else "none yet")
            ev = s.get("last_event")
            frozen = s.get("frozen")
            lines.append(f"  {s['name']}: last verdict {verdict}"
                         + (f"; frozen since {frozen.get('since')}: {frozen.get('reason')}" if frozen else "")
                         + (f"; last event #{ev['id']} at {ev['ts']}" if ev else ""))
    return lines


# --- feature-branch chains and parked changes -------------------------------
# Registered here so `opskit status` shows them without importing the chain on every status.

def _chain_section(settings: Settings, journal: Journal, svc: ServiceSettings) -> Any:
    return status_section(settings, journal, svc)


# Merged into each service's entry under these names, in this order.
SECTIONS: dict[str, Callable[[Settings, Journal, ServiceSettings], Any]] = {
    "drift": _drift_section, "chain": _chain_section}
