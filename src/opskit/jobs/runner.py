"""run-job and cron-check: a cron job never fails or stops silently (issue 5 item 3).

`run-job NAME -- CMD` journals every run of a job and notifies once per failure streak.
`cron-check` compares what ran with what the schedules say should have run, and reports
missed runs, runs stuck past max_runtime, last runs that failed, and runs whose run-job
vanished without a result (SIGKILL, OOM, power loss).

State (kv, shared with `opskit status`):
- scope "job", key NAME: runs (a counter), last_start/last_end/last_status/last_exit,
  streak (consecutive failures), running {pid: {started, ticks}}, running_pid.
- scope "cron-check": "last" → {ts} (cron-check's own heartbeat), "installed" (set by
  `cron install`), "seen:NAME" (when a schedule was first watched), "incident:NAME" (an open
  missed incident), "overrun:NAME" (the run already reported as overrunning).

Overlap (a run starting while an earlier one still runs): the new run goes ahead and the
overlap is reported in job.start (overlap: true, overlap_pids) and on stderr. Refusing it
would turn one slow run into a missed run, and each opskit job is safe to overlap
(deploy holds the service lock, notify --flush claims rows, drift-scan only reads).

Clock changes: incidents and recoveries are matched by the run counter, never by
timestamps. When cron-check sees the clock went backwards (its own last run, or a job
start, lies in the future), it restarts every job's measurement from now instead of
comparing with the future: no false "missed" storm, and real misses after the jump are
still caught one period later.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opskit.base import proc
from opskit.base import schedule
from opskit.base.clock import SYSTEM, Clock, iso, parse_iso
from opskit.base.errors import OpsError, UsageError, redact
from opskit.base.proc import pid_alive
from opskit.storage.journal import kv_update

if TYPE_CHECKING:
    from opskit.base.config import Settings
    from opskit.storage.journal import Journal

JOB = "job"
CHECK = "cron-check"
TAIL = 20  # lines of output kept in job.fail and its notification
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A start or heartbeat this far in the future means the clock was set back.
_FUTURE_SLACK = dt.timedelta(seconds=60)

# notifier(settings, journal, message, title=, level=, service=, event_id=) -> anything
Notifier = Callable[..., object]


def check_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise UsageError(f"job name {name!r} is not allowed; use letters, digits, '.', '_' and '-' "
                         "(e.g. nightly-backup)")


def _notify(settings: Settings, journal: Journal, notifier: Notifier | None, message: str, *,
            title: str, level: str, service: str | None, event_id: int | None) -> None:
    """Send, but never let a notification problem change a job's outcome."""
    try:
        if notifier is None:
            from opskit import notify

            notify.send(settings, journal, message, title=title, level=level, service=service,
                        event_id=event_id, clock=journal.clock)
        else:
            notifier(settings, journal, message, title=title, level=level, service=service,
                     event_id=event_id)
    except Exception as e:  # the outbox keeps what can be kept; the event is journaled already
        print(f"opskit: could not notify ({title}): {redact(str(e))[:200]}", file=sys.stderr)


# --- processes ------------------------------------------------------------------------------

def _proc_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a reused pid from ours."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        if fields[0] == "Z":  # exited, not yet reaped: as good as gone
            return None
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, entry: dict[str, Any]) -> bool:
    ticks = _proc_ticks(pid)
    if ticks is None:
        # no /proc: trust kill(0); with /proc, the missing start time says it is gone
        return not os.path.isdir("/proc") and pid_alive(pid)
    return entry.get("ticks") in (None, ticks)


# --- recording outcomes ---------------------------------------------------------------------

@dataclass
class Outcome:
    streak: int  # consecutive failures after this result
    first_failure: bool
    recovered_after: int  # failures that this success ends (0: none)


def _apply_result(st: dict[str, Any], ok: bool, out: Outcome) -> None:
    before = int(st.get("streak", 0))
    if ok:
        st["streak"] = 0
        out.recovered_after = before
    else:
        st["streak"] = before + 1
        out.first_failure = before == 0
    out.streak = st["streak"]


def _report_failure(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
                    service: str | None, data: dict[str, Any], out: Outcome, why: str) -> int:
    ev = journal.append("job.fail", service, {**data, "job": name, "streak": out.streak})
    if out.first_failure:
        tail = "\n".join(data.get("tail") or [])
        msg = (f"Job {name} failed on {socket.gethostname()}: {why}."
               + (f"\nLast output:\n{tail}" if tail else "")
               + "\nYou will not be told again until it passes.")
        _notify(settings, journal, notifier, msg, title=f"opskit job {name} failed", level="error",
                service=service, event_id=ev.id)
    return ev.id


def _report_recovery(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
                     service: str | None, data: dict[str, Any], message: str) -> int:
    ev = journal.append("job.recovered", service, {**data, "job": name})
    _notify(settings, journal, notifier, message, title=f"opskit job {name} recovered", level="info",
            service=service, event_id=ev.id)
    return ev.id


def _reap_lost(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
               now: dt.datetime, keep: int | None = None) -> list[int]:
    """Runs whose run-job died without recording a result count as failures."""
    lost: list[tuple[int, str]] = []
    out = Outcome(0, False, 0)
    service: list[str | None] = [None]

    def update(old: Any) -> Any:
        if not old:
            return old
        st = dict(old)
        running = dict(st.get("running") or {})
        lost.clear()
        for p, entry in list(running.items()):
            if int(p) != keep and not _alive(int(p), entry):
                lost.append((int(p), str(entry.get("started", "?"))))
                del running[p]
        if not lost:
            return old
        st["running"] = running
        st["running_pid"] = max((int(p) for p in running), default=None)
        st["last_end"] = iso(now)
        st["last_status"] = "fail"
        st["last_exit"] = None
        for _ in lost:
            _apply_result(st, False, out)
        service[0] = st.get("service")
        return st

    kv_update(journal, JOB, name, update)
    ids = []
    for pid, started in lost:
        why = f"its run-job (pid {pid}, started {started}) ended without a result: killed or crashed"
        ids.append(_report_failure(settings, journal, notifier, name, service[0],
                                   {"pid": pid, "lost": True, "started": started, "exit_code": None},
                                   out, why))
    return ids


# --- run-job --------------------------------------------------------------------------------

@dataclass
class JobRun:
    name: str
    exit_code: int
    duration: float
    overlap_pids: list[int]
    tail: list[str]
    streak: int
    notified: bool
    recovered: bool


class _Terminated(BaseException):
    """SIGTERM while the job runs: record it as a failure, then stop."""


def _on_term(signum: int, frame: object) -> None:
    raise _Terminated()


def _cmd_text(argv: Sequence[str]) -> str:
    import shlex

    text = " ".join(shlex.quote(a) for a in argv)
    return redact(text if len(text) <= 300 else text[:297] + "...")


def run_job(settings: Settings, journal: Journal, name: str, argv: Sequence[str], *,
            service: str | None = None, ok_codes: Sequence[int] = (0,), clock: Clock = SYSTEM,
            notifier: Notifier | None = None, echo: Callable[[str], None] | None = None) -> JobRun:
    """Run argv as job `name`, journal it, notify on the first failure of a streak.

    ok_codes: exit codes that mean the job did its work. opskit's own cron entries pass 1 too:
    drift-scan, cron-check, notify --flush and deploy exit 1 for a finding they have already
    notified about; only 2 (config) and 3 (crash) mean the job itself is broken.

    Returns CMD's exit code (127/126 when it cannot be started, 143 on SIGTERM, 130 on Ctrl-C).
    """
    check_name(name)
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError(f"run-job {name}: no command given; use `opskit run-job {name} -- CMD ARGS…`")
    if service is not None:
        settings.service(service)  # an unknown service is a config error, before anything runs
    pid = os.getpid()
    start = clock.now()
    me = {"started": iso(start), "ticks": _proc_ticks(pid)}
    _reap_lost(settings, journal, notifier, name, start, keep=pid)
    others: list[int] = []

    def register(old: Any) -> Any:
        st = dict(old or {})
        running = {p: e for p, e in (st.get("running") or {}).items() if int(p) != pid}
        others[:] = sorted(int(p) for p in running)
        running[str(pid)] = me
        st.update(running=running, running_pid=pid, runs=int(st.get("runs", 0)) + 1,
                  last_start=iso(start), last_pid=pid, service=service)
        if others:
            st["overlaps"] = int(st.get("overlaps", 0)) + 1
        return st

    kv_update(journal, JOB, name, register)
    journal.append("job.start", service, {"job": name, "pid": pid, "cmd": _cmd_text(argv),
                                          "overlap": bool(others), "overlap_pids": others})
    if others:
        print(f"opskit: run-job {name}: an earlier run (pid {', '.join(map(str, others))}) is still "
              "running; running anyway (overlap journaled)", file=sys.stderr)

    if echo is None:
        def echo(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    exit_code, duration, tail, why = _execute(argv, echo)
    end = clock.now()
    ok = exit_code in ok_codes
    out = Outcome(0, False, 0)

    def finish(old: Any) -> Any:
        st = dict(old or {})
        running = dict(st.get("running") or {})
        running.pop(str(pid), None)
        st.update(running=running, running_pid=max((int(p) for p in running), default=None),
                  last_end=iso(end), last_status="ok" if ok else "fail", last_exit=exit_code,
                  last_duration=round(duration, 3))
        _apply_result(st, ok, out)
        return st

    kv_update(journal, JOB, name, finish)
    data = {"job": name, "pid": pid, "exit_code": exit_code, "duration": round(duration, 3),
            "tail": tail}
    if ok:
        journal.append("job.ok", service, data)
        if out.recovered_after:
            _report_recovery(settings, journal, notifier, name, service,
                             {"after": "failure", "failures": out.recovered_after},
                             f"Job {name} passes again after {out.recovered_after} failed run(s).")
    else:
        _report_failure(settings, journal, notifier, name, service, data, out, why)
    return JobRun(name, exit_code, duration, others, tail, out.streak,
                  notified=not ok and out.first_failure, recovered=bool(out.recovered_after))


def _execute(argv: list[str], echo: Callable[[str], None]) -> tuple[int, float, list[str], str]:
    """(exit code, seconds, output tail, why it failed) — CMD's output passes through to echo."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread (tests): SIGTERM keeps its default
        pass
    try:
        r = proc.run(argv, timeout=None, stream=echo, tail_lines=TAIL)
    except _Terminated:
        return 143, 0.0, [], "terminated by SIGTERM (the job was killed with it)"
    except KeyboardInterrupt:
        return 130, 0.0, [], "interrupted"
    except OpsError as e:
        code = 126 if "Permission denied" in e.message else 127  # what a shell would say
        print(f"opskit: run-job: {e.message}", file=sys.stderr)  # cron's log must say why
        return code, 0.0, [e.message], e.message
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    tail = [redact(ln[:500]) for ln in r.tail[-TAIL:]]
    code = r.returncode if r.returncode >= 0 else 128 - r.returncode  # killed by signal N → 128+N
    return code, r.duration, tail, (f"exit {code} after {r.duration:.1f}s" if r.returncode >= 0
                                    else f"killed by signal {-r.returncode} after {r.duration:.1f}s")


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

    @property
    def ok(self) -> bool:
        return not any(j.problems for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {"ts": self.ts, "ok": self.ok, "jobs": [j.to_dict() for j in self.jobs],
                "warnings": self.warnings, "clock_back_seconds": self.clock_back_seconds,
                "approvals_reminded": self.approvals_reminded}


_READ = object()


def watched_jobs(settings: Settings, crontab_text: str | None) -> tuple[dict[str, Watch], list[str]]:
    """Schedules to watch: [jobs.NAME] in the config, then run-job lines in the crontab."""
    from opskit.wiring import cron

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
    from opskit.wiring import cron

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
    if last and parse_iso(last["ts"]) > now + _FUTURE_SLACK:
        back = (parse_iso(last["ts"]) - now).total_seconds()
        warnings.append(f"the clock went back {back:.0f}s since the last cron-check; "
                        "measuring every job afresh from now (no missed runs are inferred across the jump)")

    states = journal.kv_all(JOB)
    statuses = []
    for name in sorted(set(watches) | set(states)):
        statuses.append(_check_job(settings, journal, notifier, name, watches.get(name), now,
                                   reset=back is not None))
    # Parked changes are the human side of the same promise: nothing waits unnoticed. cron-check
    # is the one job that runs every few minutes, so it sends the once-only reminders (issue 5).
    from opskit.chain.approvals import remind_overdue

    reminded = remind_overdue(settings, journal, clock)
    journal.kv_set(CHECK, "last", {"ts": iso(now), "pid": os.getpid(), "jobs": len(statuses),
                                   "problems": sum(1 for s in statuses if s.problems)})
    return CheckReport(iso(now), statuses, warnings, back, reminded)


def _check_job(settings: Settings, journal: Journal, notifier: Notifier | None, name: str,
               watch: Watch | None, now: dt.datetime, reset: bool) -> JobStatus:
    events = _reap_lost(settings, journal, notifier, name, now)
    st: dict[str, Any] = journal.kv_get(JOB, name) or {}
    service = st.get("service")
    status = JobStatus(name, watch.source if watch else "journal", watch.schedule if watch else None,
                       watch.timezone if watch else None, "ok", events=events,
                       last_start=st.get("last_start"), last_status=st.get("last_status"))
    runs = int(st.get("runs", 0))
    last_start = parse_iso(st["last_start"]) if st.get("last_start") else None
    future_start = None
    if last_start is not None and last_start > now + _FUTURE_SLACK:
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
            _notify(settings, journal, notifier,
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
        status.events.append(_report_recovery(
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
            _notify(settings, journal, notifier,
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
        if (old.get("sig") != sig or reset or parse_iso(old["since"]) > now + _FUTURE_SLACK
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
