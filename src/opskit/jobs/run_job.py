"""`opskit run-job NAME -- CMD`: journal every run of a cron job and notify once per failure streak."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opskit.base import proc
from opskit.base.clock import SYSTEM, Clock, iso
from opskit.base.errors import OpsError, UsageError, redact
from opskit.notify import ping
from opskit.storage.journal import kv_update

if TYPE_CHECKING:
    from opskit.base.config import Secret, Settings
    from opskit.storage.journal import Journal

import shlex

from opskit.jobs.record import (
    JOB,
    TAIL,
    Notifier,
    Outcome,
    apply_result,
    check_name,
    proc_ticks,
    reap_lost,
    report_failure,
    report_recovery,
)

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
    text = " ".join(shlex.quote(a) for a in argv)
    return redact(text if len(text) <= 300 else text[:297] + "...")


def run_job(settings: Settings, journal: Journal, name: str, argv: Sequence[str], *,
            service: str | None = None, ok_codes: Sequence[int] = (0,), clock: Clock = SYSTEM,
            notifier: Notifier | None = None, echo: Callable[[str], None] | None = None,
            log_refused: str | None = None, ping_timeout: float = ping.TIMEOUT) -> JobRun:
    """Run argv as job `name`, journal it, notify on the first failure of a streak.

    ok_codes: exit codes that mean the job did its work. opskit's own cron entries pass 1 too:
    drift-scan, cron-check, notify --flush and deploy exit 1 for a finding they have already
    notified about; only 2 (config) and 3 (crash) mean the job itself is broken.

    A job with `[jobs.NAME] ping_url` also signals an external monitor in healthchecks.io's form:
    `/start` before CMD, `/<exit status>` (or the plain URL for an --ok-exit code) after it, with
    the output tail as the body.

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
    me = {"started": iso(start), "ticks": proc_ticks(pid)}
    reap_lost(settings, journal, notifier, name, start, keep=pid)
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
    start_data: dict[str, Any] = {"job": name, "pid": pid, "cmd": _cmd_text(argv),
                                  "overlap": bool(others), "overlap_pids": others}
    if log_refused:  # the job still runs (cron's mail has its output); the refusal is on record
        start_data["log_refused"] = log_refused
    journal.append("job.start", service, start_data)
    if others:
        print(f"opskit: run-job {name}: an earlier run (pid {', '.join(map(str, others))}) is still "
              "running; running anyway (overlap journaled)", file=sys.stderr)

    job = settings.jobs.get(name)
    monitor = job.ping_url if job is not None else None
    ping_errors: list[str] = []
    if monitor is not None:
        _ping(monitor, "start", None, ping_timeout, ping_errors, name)

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
        st["last_ok" if ok else "last_fail"] = iso(end)  # opskit metrics: last success / failure time
        apply_result(st, ok, out)
        return st

    kv_update(journal, JOB, name, finish)
    if monitor is not None:
        form = ("0" if exit_code == 0 else "") if ok else (str(exit_code) if 0 <= exit_code <= 255 else "fail")
        _ping(monitor, form, "\n".join(tail), ping_timeout, ping_errors, name)
    data: dict[str, Any] = {"job": name, "pid": pid, "exit_code": exit_code, "duration": round(duration, 3),
                            "tail": tail}
    if ping_errors:  # the monitor will show this run late or missing: say why, never the URL
        data["ping_error"] = "; ".join(ping_errors)
    if ok:
        journal.append("job.ok", service, data)
        if out.recovered_after:
            report_recovery(settings, journal, notifier, name, service,
                             {"after": "failure", "failures": out.recovered_after},
                             f"Job {name} passes again after {out.recovered_after} failed run(s).")
    else:
        report_failure(settings, journal, notifier, name, service, data, out, why)
    return JobRun(name, exit_code, duration, others, tail, out.streak,
                  notified=not ok and out.first_failure, recovered=bool(out.recovered_after))


def _ping(url: Secret, suffix: str, body: str | None, timeout: float, errors: list[str], name: str) -> None:
    """One ping of the job's monitor; its failure is a warning, never the job's outcome."""
    if body is not None:
        raw = body.encode("utf-8", "replace")
        if len(raw) > ping.BODY_MAX:  # the tail matters most: cut from the front
            body = raw[-ping.BODY_MAX:].decode("utf-8", "ignore")
    r = ping.send(url, suffix=suffix, body=body, timeout=timeout)
    if not r.ok:
        what = f"/{suffix}" if suffix else "success"
        errors.append(f"{what} ping: {r.error}")
        print(f"opskit: run-job {name}: the {what} ping to ping_url failed: {r.error}", file=sys.stderr)


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
