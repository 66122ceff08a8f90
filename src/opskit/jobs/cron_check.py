"""`opskit cron-check`: what the schedules say should have run, against what did."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opskit.base import schedule
from opskit.base.clock import SYSTEM, Clock, iso, parse_iso
from opskit.base.errors import OpsError
from opskit.storage.journal import kv_update

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

from opskit.jobs.record import CHECK, FUTURE_SLACK, JOB, Notifier, notify_owner, reap_lost, report_recovery
from opskit.jobs.unfinished import Unfinished, finish_unfinished
from opskit.wiring import cron

# --- cron-check -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Watch:
    name: str
    schedule: str
    timezone: str | None  # None: the local zone (cron's)
    grace: float | None
    max_runtime: float | None
    source: str  # config | crontab


@dataclass
class JobStatus:
    name: str
    source: str  # config | crontab | journal (ran under run-job, schedule unknown)
    schedule: str | None
    timezone: str | None
    state: str  # ok | running | waiting | missed | overrun | failed
    problems: list[str] = field(default_factory=list)
    message: str = ""
    last_start: str | None = None
    last_status: str | None = None
    expected: str | None = None  # the run being waited for
    late_seconds: float | None = None
    grace: float | None = None
    events: list[int] = field(default_factory=list)  # events this check appended

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckReport:
    ts: str
    jobs: list[JobStatus]
    warnings: list[str]
    clock_back_seconds: float | None
    approvals_reminded: int = 0
    unfinished: list[Unfinished] = field(default_factory=list)  # deploys it found left open and finished

    @property
    def ok(self) -> bool:
        return not any(j.problems for j in self.jobs) and not any(u.error for u in self.unfinished)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "ok": self.ok, "jobs": [j.to_dict() for j in self.jobs],
                "warnings": self.warnings, "clock_back_seconds": self.clock_back_seconds,
                "approvals_reminded": self.approvals_reminded,
                "unfinished": [u.to_dict() for u in self.unfinished]}


_READ = object()


def watched_jobs(settings: Settings, crontab_text: str | None) -> tuple[dict[str, Watch], list[str]]:
    """Schedules to watch: [jobs.NAME] in the config, then run-job lines in the crontab."""
    out: dict[str, Watch] = {}
    warnings: list[str] = []
    for j in settings.jobs.values():
        out[j.name] = Watch(j.name, j.schedule, j.timezone, j.grace, j.max_runtime, "config")
    if crontab_text:
        lines, warnings = cron.parse_crontab(crontab_text)
        for ln in lines:
            if not ln.job or ln.job in out and out[ln.job].source == "config":
                continue
            if not ln.schedule:
                warnings.append(f"crontab line {ln.lineno}: job {ln.job} runs @reboot; not watched")
                continue
            if ln.job in out and out[ln.job].schedule != ln.schedule:
                warnings.append(f"crontab line {ln.lineno}: job {ln.job} is scheduled twice "
                                f"({out[ln.job].schedule!r} and {ln.schedule!r}); watching the first")
                continue
            out[ln.job] = Watch(ln.job, ln.schedule, None, None, None, "crontab")
    return out, warnings


def cron_check(settings: Settings, journal: Journal, clock: Clock = SYSTEM, *,
               notifier: Notifier | None = None, crontab_text: Any = _READ) -> CheckReport:
    """Find jobs that missed their run, overran, failed or vanished; one notification each."""
    now = clock.now()
    warnings: list[str] = []
    if crontab_text is _READ:
        try:
            crontab_text = cron.read_crontab(settings.cron.user)
        except OpsError as e:
            warnings.append(f"cannot read the crontab ({e.message}); watching [jobs] from the config only")
            crontab_text = None
        # A server's entries live in /etc/cron.d/opskit (cron install --system): watch them too.
        from opskit.wiring.crond import watched_text

        crontab_text = ((crontab_text or "") + watched_text()) or None
    watches, more = watched_jobs(settings, crontab_text)
    warnings += more

    last = journal.kv_get(CHECK, "last")
    back: float | None = None
    if last and parse_iso(last["ts"]) > now + FUTURE_SLACK:
        back = (parse_iso(last["ts"]) - now).total_seconds()
        warnings.append(f"the clock went back {back:.0f}s since the last cron-check; "
                        "measuring every job afresh from now (no missed runs are inferred across the jump)")
    ahead = clock_jumped_ahead(last, now, clock.monotonic(), _boot_id())
    if ahead is not None:
        warnings.append(f"the clock was set forward {ahead:.0f}s since the last cron-check (more wall-clock "
                        "time passed than real time); runs due inside that jump never had a chance and are "
                        "not reported as missed; measuring every job afresh from now")

    states = journal.kv_all(JOB)
    statuses = []
    for name in sorted(set(watches) | set(states)):
        statuses.append(_check_job(settings, journal, notifier, name, watches.get(name), now,
                                   reset=back is not None or ahead is not None))
    # Parked changes are the human side of the same promise: nothing waits unnoticed. cron-check
    # is the one job that runs every few minutes, so it sends the once-only reminders.
    from opskit.chain.approvals import remind_overdue

    reminded = remind_overdue(settings, journal, clock)
    # The immune system's own safety net: a pipeline that died (SIGKILL, OOM, power) is finished here.
    unfinished = finish_unfinished(settings, journal, clock)
    if journal.fleet is not None:
        # A host that lost the fleet database catches up here at the latest: every event kept
        # while it was away is forwarded, and the shared quarantine and freezes are pulled.
        if journal.fleet.sync(journal, force=True) is None:
            down = journal.kv_get("fleet", "unreachable")
            down = down if isinstance(down, dict) else {}
            why = down.get("error", "unreachable")
            warnings.append(f"the fleet journal cannot be reached ({why}); events stay here until it is back")
            if down and not down.get("notified"):  # once per outage: _up() clears the record
                last = journal.query(types=("fleet.unreachable",), limit=1)
                host = journal.fleet.host
                notify_owner(settings, journal, notifier,
                             f"{host} cannot reach the fleet journal since {down.get('since')} ({why}). It keeps "
                             "working alone: pushes are gated and reverted, its events and messages wait in its "
                             "own journal and are forwarded once the database is back. `opskit doctor` says "
                             "how to fix it.", title=f"{host}: fleet journal unreachable", level="warn",
                             service=None, event_id=last[0].id if last else None)
                journal.kv_set("fleet", "unreachable", {**down, "notified": iso(now)})
    journal.kv_set(CHECK, "last", {"ts": iso(now), "mono": clock.monotonic(), "boot": _boot_id(),
                                   "pid": os.getpid(), "jobs": len(statuses),
                                   "problems": sum(1 for s in statuses if s.problems)})
    return CheckReport(iso(now), statuses, warnings, back, reminded, unfinished)


def clock_jumped_ahead(last: Any, now: dt.datetime, mono: float, boot: str | None) -> float | None:
    """Seconds the wall clock was set forward since the last check, or None.

    The monotonic clock (system-wide, since boot) measures the real time between two checks;
    wall-clock time that passed beyond it is a correction (NTP after a host ran slow, a manual
    `date -s`). Only comparable within one boot: a reboot restarts the monotonic clock."""
    if not last or "mono" not in last or last.get("boot") != boot:
        return None
    jump = (now - parse_iso(last["ts"])).total_seconds() - (mono - float(last["mono"]))
    return jump if jump > FUTURE_SLACK.total_seconds() else None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _check_job(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
               watch: Watch | None, now: dt.datetime, reset: bool) -> JobStatus:
    events = reap_lost(settings, journal, notifier, name, now)
    st: dict[str, Any] = journal.kv_get(JOB, name) or {}
    service = st.get("service")
    status = JobStatus(name, watch.source if watch else "journal", watch.schedule if watch else None,
                       watch.timezone if watch else None, "ok", events=events,
                       last_start=st.get("last_start"), last_status=st.get("last_status"))
    runs = int(st.get("runs", 0))
    last_start = parse_iso(st["last_start"]) if st.get("last_start") else None
    future_start = None
    if last_start is not None and last_start > now + FUTURE_SLACK:
        future_start = st["last_start"]  # the clock went back since that run
        last_start = None

    # Still running past max_runtime: one report per run.
    running = st.get("running") or {}
    over = None
    max_runtime = watch.max_runtime if watch else None
    if max_runtime:
        for p, entry in sorted(running.items()):
            started = parse_iso(entry["started"])
            if (now - started).total_seconds() > max_runtime:
                over = (int(p), entry["started"], (now - started).total_seconds())
                break
    seen_over = journal.kv_get(CHECK, f"overrun:{name}")
    if over:
        pid, started_s, runtime = over
        status.problems.append("overrun")
        status.message = (f"running for {_human(runtime)} (pid {pid}), "
                          f"longer than max_runtime {_human(max_runtime or 0)}")
        if not seen_over or seen_over.get("pid") != pid or seen_over.get("started") != started_s:
            ev = journal.append("job.missed", service, {
                "job": name, "problem": "overrun", "pid": pid, "started": started_s,
                "runtime": round(runtime), "max_runtime": max_runtime})
            notify_owner(settings, journal, notifier,
                    f"Job {name} has been running for {_human(runtime)} (pid {pid}, started "
                    f"{started_s}), past its max_runtime of {_human(max_runtime or 0)}.",
                    title=f"opskit job {name} is stuck", level="warning", service=service,
                    event_id=ev.id)
            journal.kv_set(CHECK, f"overrun:{name}", {"pid": pid, "started": started_s, "event_id": ev.id})
            status.events.append(ev.id)
    elif seen_over:
        journal.kv_delete(CHECK, f"overrun:{name}")

    # Missed: the first run due after the last start (or after we began watching) never came.
    incident = journal.kv_get(CHECK, f"incident:{name}")
    if incident and runs > int(incident.get("runs", 0)):
        status.events.append(report_recovery(
            settings, journal, notifier, name, service,
            {"after": "missed", "expected": incident.get("expected")},
            f"Job {name} ran again; it had missed its run due {incident.get('expected')}."))
        journal.kv_delete(CHECK, f"incident:{name}")
        incident = None
    if watch is not None:
        missed = _missed(journal, watch, now, last_start, future_start, reset, status)
        if missed and incident is None:
            expected, late = missed
            ev = journal.append("job.missed", service, {
                "job": name, "problem": "missed", "expected": iso(expected), "late": round(late),
                "grace": status.grace, "schedule": watch.schedule,
                "timezone": watch.timezone or str(schedule.local_zone()),
                "last_start": st.get("last_start")})
            local = expected.astimezone(schedule.zone(watch.timezone))
            notify_owner(settings, journal, notifier,
                    f"Job {name} should have run at {local:%Y-%m-%d %H:%M %Z} ({watch.schedule}) and "
                    f"has not started {_human(late)} later. Last run: {st.get('last_start') or 'never'}. "
                    "Check the crontab (`opskit cron show`) and that the cron daemon runs.",
                    title=f"opskit job {name} missed its run", level="error", service=service,
                    event_id=ev.id)
            journal.kv_set(CHECK, f"incident:{name}", {"runs": runs, "expected": iso(expected),
                                                      "event_id": ev.id, "opened": iso(now)})
            status.events.append(ev.id)
        elif not missed and incident is not None:
            # Overdue no more without a run: the schedule changed or the clock moved back.
            journal.kv_delete(CHECK, f"incident:{name}")
    elif incident is not None:
        # No longer scheduled (its [jobs] table or crontab line removed): nothing can be missed.
        journal.kv_delete(CHECK, f"incident:{name}")

    if st.get("last_status") == "fail":
        status.problems.append("failed")
        if not status.message:
            status.message = (f"last run failed (exit {st.get('last_exit')}, "
                              f"{st.get('streak', 1)} failure(s) in a row)")
    if status.problems:
        status.state = status.problems[0]
    elif running:
        status.state = "running"
    elif not st:
        status.state = "waiting"
        status.message = status.message or "no run recorded yet"
    return status


def _missed(journal: Journal, watch: Watch, now: dt.datetime, last_start: dt.datetime | None,
            future_start: str | None, reset: bool, status: JobStatus) -> tuple[dt.datetime, float] | None:
    """The run this job owes: the first one due after max(last start, when we began watching).

    "Began watching" is the first sight of this schedule (for a job with a run on record, its
    last start), reset to now when the schedule changes or the clock went back — a run
    recorded "in the future" is ignored from the moment it is first noticed.
    """
    tz = schedule.zone(watch.timezone)
    sig = [watch.schedule, watch.timezone]

    def seen_update(old: Any) -> Any:
        if old is None:
            return {"sig": sig, "since": iso(last_start or now)}
        if (old.get("sig") != sig or reset or parse_iso(old["since"]) > now + FUTURE_SLACK
                or (future_start and old.get("ignore_start") != future_start)):
            return {"sig": sig, "since": iso(now), "ignore_start": future_start}
        return old

    seen = kv_update(journal, CHECK, f"seen:{watch.name}", seen_update)
    since = parse_iso(seen["since"])
    baseline = max(since, last_start) if last_start and not reset else since
    expected = schedule.next_run(watch.schedule, baseline, tz)
    grace = watch.grace or schedule.default_grace(schedule.period(watch.schedule, expected, tz))
    status.expected = iso(expected)
    status.grace = grace
    late = (now - expected).total_seconds()
    if late <= grace:
        return None
    status.late_seconds = round(late)
    status.problems.append("missed")
    if not status.message:
        status.message = f"due {iso(expected)}, not started {_human(late)} later (grace {_human(grace)})"
    return expected, late


def _human(seconds: float) -> str:
    s = int(round(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


# --- cron-check's own health, for `opskit status` -------------------------------------------

def cron_check_health(journal: Journal, settings: Settings, clock: Clock = SYSTEM) -> dict[str, Any]:
    """When cron-check last ran, how often it should, and whether it has gone quiet.

    Keys: last_run (ISO or None), age_seconds, expected_period, grace, next_due, overdue,
    installed, message, jobs (name → last_status, last_start, streak, running).
    """
    now = clock.now()
    tz = schedule.local_zone()
    expr = settings.cron.cron_check
    per = schedule.period(expr, now, tz)
    grace = schedule.default_grace(per)
    last = journal.kv_get(CHECK, "last")
    installed = journal.kv_get(CHECK, "installed")
    ref = parse_iso(last["ts"]) if last else parse_iso(installed["ts"]) if installed else None
    out: dict[str, Any] = {"last_run": last["ts"] if last else None, "age_seconds": None,
                           "expected_period": per, "grace": grace, "next_due": None,
                           "overdue": False, "installed": installed is not None}
    if ref is None:
        out["message"] = "cron-check has never run; install the crontab block with `opskit cron install`"
    else:
        due = schedule.next_run(expr, ref, tz)
        out["next_due"] = iso(due)
        out["age_seconds"] = round((now - ref).total_seconds()) if last else None
        out["overdue"] = (now - due).total_seconds() > grace
        if out["overdue"]:
            since = f"last ran {last['ts']}" if last else f"never ran since the install at {installed['ts']}"
            out["message"] = (f"CRON-CHECK IS NOT RUNNING: {since}, due every {_human(per)}; "
                              "missed and failed jobs go unnoticed. Is the cron daemon running?")
        else:
            out["message"] = f"cron-check ran {last['ts']}" if last else "cron-check has not run yet"
    out["jobs"] = {
        name: {"last_status": st.get("last_status"), "last_start": st.get("last_start"),
               "streak": st.get("streak", 0), "running": bool(st.get("running"))}
        for name, st in journal.kv_all(JOB).items()}
    return out


def missed_jobs(journal: Journal) -> dict[str, dict[str, Any]]:
    """job → {expected, opened}: the runs cron-check found missed and no run has ended since."""
    return {key.split(":", 1)[1]: {"expected": v.get("expected"), "opened": v.get("opened")}
            for key, v in journal.kv_all(CHECK).items() if key.startswith("incident:")}
