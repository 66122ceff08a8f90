"""run-job and cron-check: no silent cron failures (issue 5 item 3).

cron-check gets a FakeClock; nothing here waits for cron.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opskit import jobs
from opskit.base import config
from opskit.base.clock import FakeClock, iso
from opskit.base.config import Settings
from opskit.jobs import record
from opskit.storage.journal import Journal
from tests.support.crontab import CronUser, cron_account_fixture, cron_user_fixture  # noqa: F401  (fixtures)

UTC = dt.timezone.utc


class Notes(list[tuple[str, str, str]]):
    """A notifier that records (level, title, message)."""

    def __call__(self, settings: Settings, journal: Journal, message: str, *, title: str, level: str,
                 service: str | None, event_id: int | None) -> None:
        assert event_id is not None and journal.get(event_id) is not None  # journaled first
        self.append((level, title, message))


def settings_with(write_config, text: str = "") -> Settings:
    return config.load(write_config(text or "[opskit]\n"))


def quiet(_line: str) -> None:
    pass


def at(clock: FakeClock, text: str) -> FakeClock:
    """Time passes to `text` (a move back is a clock correction: only the wall clock moves)."""
    when = dt.datetime.fromisoformat(text).replace(tzinfo=UTC)
    ahead = (when - clock.now()).total_seconds()
    if ahead >= 0:
        clock.advance(ahead)
    else:
        clock.set(when)
    return clock


def run(s: Settings, j: Journal, clock: FakeClock, notes: Notes, name: str, argv: list[str]) -> jobs.JobRun:
    return jobs.run_job(s, j, name, argv, clock=clock, notifier=notes, echo=quiet)


def check(s: Settings, j: Journal, clock: FakeClock, notes: Notes, crontab: str | None = None) -> jobs.CheckReport:
    return jobs.cron_check(s, j, clock, notifier=notes, crontab_text=crontab)


def types(j: Journal, prefix: str = "job.") -> list[str]:
    return [e.type for e in j.query(type_prefix=prefix)]


# --- run-job --------------------------------------------------------------------------------

def test_failure_streak_notifies_once_then_recovers(write_config, state_dir: Path) -> None:
    s, clock, notes = settings_with(write_config), FakeClock(), Notes()
    j = Journal(state_dir, clock)
    for _ in range(2):
        r = run(s, j, clock, notes, "backup", ["sh", "-c", "echo disk full >&2; exit 1"])
        assert r.exit_code == 1
    assert [n[0] for n in notes] == ["error"]
    assert "backup" in notes[0][1] and "disk full" in notes[0][2]
    fails = j.query(type_prefix="job.fail")
    assert [f.data["streak"] for f in fails] == [1, 2]
    assert fails[0].data["exit_code"] == 1 and fails[0].data["tail"] == ["disk full"]

    assert run(s, j, clock, notes, "backup", ["true"]).exit_code == 0
    assert [n[0] for n in notes] == ["error", "info"]
    rec = j.last("job.recovered")
    assert rec is not None and rec.data == {"job": "backup", "after": "failure", "failures": 2}
    # A new streak is a new incident: notified again, once.
    run(s, j, clock, notes, "backup", ["false"])
    run(s, j, clock, notes, "backup", ["false"])
    assert [n[0] for n in notes] == ["error", "info", "error"]
    assert types(j) == ["job.start", "job.fail", "job.start", "job.fail", "job.start", "job.ok",
                        "job.recovered", "job.start", "job.fail", "job.start", "job.fail"]


def test_cli_passes_output_and_exit_code_through_and_notifies_once(opskit, write_config,
                                                                    tmp_path: Path, state_dir: Path) -> None:
    notes = tmp_path / "notes.txt"
    cfg = write_config(
        '[opskit]\nnotify = ["ops"]\n'
        f'[notify.ops]\ntype = "command"\ncommand = "cat >> {notes}; echo ==== >> {notes}"\n')
    for _ in range(2):
        r = opskit("--config", str(cfg), "run-job", "nightly", "--", "sh", "-c", "echo working; exit 7")
        assert r.returncode == 7, r.stderr
        assert r.stdout == "working\n"
    sent = notes.read_text().split("====\n")[:-1]
    assert len(sent) == 1 and "nightly" in sent[0] and "working" in sent[0]
    r = opskit("--config", str(cfg), "run-job", "nightly", "--", "sh", "-c", "echo fine")
    assert r.returncode == 0 and r.stdout == "fine\n"
    sent = notes.read_text().split("====\n")[:-1]
    assert len(sent) == 2 and "passes again" in sent[1]
    r = opskit("--config", str(cfg), "events", "--type", "job.", "--json")
    evs = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [e["type"] for e in evs] == ["job.start", "job.fail", "job.start", "job.fail", "job.start",
                                        "job.ok", "job.recovered"]
    assert evs[1]["data"]["exit_code"] == 7 and evs[1]["data"]["duration"] >= 0


def test_ok_exit_codes_count_as_success(opskit, state_dir: Path) -> None:
    r = opskit("run-job", "--ok-exit", "1", "scan", "--", "sh", "-c", "exit 1")
    assert r.returncode == 1  # still passed through
    r = opskit("run-job", "--ok-exit", "1", "scan", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3
    j = Journal(state_dir)
    assert types(j) == ["job.start", "job.ok", "job.start", "job.fail"]
    assert j.query(type_prefix="job.ok")[0].data["exit_code"] == 1


def test_cli_bad_input(opskit) -> None:
    r = opskit("run-job", "nightly")
    assert r.returncode == 2 and "no command given" in r.stderr
    r = opskit("run-job", "bad/name", "--", "true")
    assert r.returncode == 2 and "job name" in r.stderr
    r = opskit("run-job", "x", "--", "/nonexistent/cmd")
    assert r.returncode == 127 and "not found" in r.stderr


def test_overlap_runs_anyway_and_is_journaled(opskit, state_dir: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = subprocess.Popen(
        [sys.executable, "-m", "opskit", "run-job", "slow", "--", "sh", "-c",
         f"while [ ! -e {gate} ]; do sleep 0.05; done"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        j = Journal(state_dir)
        deadline = time.monotonic() + 20
        while not j.query(type_prefix="job.start") and time.monotonic() < deadline:
            time.sleep(0.05)
        r = opskit("run-job", "slow", "--", "true")
        assert r.returncode == 0
        assert "still running" in r.stderr and str(first.pid) in r.stderr
    finally:
        gate.touch()
        first.communicate(timeout=20)
    assert first.returncode == 0
    starts = j.query(type_prefix="job.start")
    assert [e.data["overlap"] for e in starts] == [False, True]
    assert starts[1].data["overlap_pids"] == [first.pid]
    st = j.kv_get("job", "slow")
    assert st["running"] == {} and st["runs"] == 2 and st["overlaps"] == 1


def test_sigterm_is_recorded_as_failure(state_dir: Path, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    p = subprocess.Popen([sys.executable, "-m", "opskit", "run-job", "term", "--", "sh", "-c",
                          f"echo $$ > {child_pid}; exec sleep 60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while not (child_pid.exists() and child_pid.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=20)
    assert p.returncode == 143
    fail = Journal(state_dir).last("job.fail")
    assert fail is not None and fail.data["exit_code"] == 143
    pid = int(child_pid.read_text())
    with pytest.raises(ProcessLookupError):  # the job went with us
        os.kill(pid, 0)


def test_killed_run_job_is_found_by_cron_check(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.etl]\nschedule = "*/5 * * * *"\n')
    child = state_dir / "job-child.pid"
    p = subprocess.Popen([sys.executable, "-m", "opskit", "run-job", "etl", "--",
                          "sh", "-c", f"echo $$ > {child}; exec sleep 60"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _killed_run_job_is_found(s, state_dir, p)
    finally:
        # the job runs in a session of its own (proc.run): a crash of run-job leaves it, so end it
        if child.exists() and child.read_text().strip():
            try:
                os.kill(int(child.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _killed_run_job_is_found(s: Settings, state_dir: Path, p: subprocess.Popen[bytes]) -> None:
    j = Journal(state_dir)
    deadline = time.monotonic() + 20
    while not j.query(type_prefix="job.start") and time.monotonic() < deadline:
        time.sleep(0.05)
    clock, notes = FakeClock(dt.datetime.now(UTC)), Notes()
    rep = check(s, Journal(state_dir, clock), clock, notes)
    assert rep.ok and rep.jobs[0].state == "running" and notes == []
    os.killpg(p.pid, signal.SIGKILL)  # no chance to record anything
    p.wait(timeout=10)
    rep = check(s, Journal(state_dir, clock), clock, notes)
    assert not rep.ok and rep.jobs[0].state == "failed"
    fail = j.last("job.fail")
    assert fail is not None and fail.data["lost"] is True and fail.data["pid"] == p.pid
    assert len(notes) == 1 and "killed or crashed" in notes[0][2]
    check(s, Journal(state_dir, clock), clock, notes)
    assert len(notes) == 1 and len(j.query(type_prefix="job.fail")) == 1


# --- cron-check: missed ---------------------------------------------------------------------

def test_missed_20_minutes_ago_is_reported_once_then_recovered(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.backup]\nschedule = "0 3 * * *"\ntimezone = "UTC"\ngrace = 300\n')
    clock, notes = at(FakeClock(), "2026-04-25T03:00:02"), Notes()
    j = Journal(state_dir, clock)
    run(s, j, clock, notes, "backup", ["true"])
    at(clock, "2026-04-25T12:00:00")
    assert check(s, j, clock, notes).ok
    at(clock, "2026-04-26T03:20:00")  # today's 03:00 run never came
    rep = check(s, j, clock, notes)
    assert not rep.ok
    st = rep.jobs[0]
    assert (st.name, st.state, st.expected, st.late_seconds) == ("backup", "missed", "2026-04-26T03:00:00Z", 1200)
    assert len(notes) == 1 and notes[0][0] == "error" and "missed" in notes[0][1]
    missed = j.last("job.missed")
    assert missed is not None and missed.data["problem"] == "missed" and missed.data["late"] == 1200
    for minutes in (25, 30, 35):  # cron-check every 5 minutes: still one incident
        at(clock, f"2026-04-26T03:{minutes}:00")
        assert not check(s, j, clock, notes).ok
    assert len(notes) == 1 and len(j.query(type_prefix="job.missed")) == 1

    at(clock, "2026-04-26T03:36:00")
    run(s, j, clock, notes, "backup", ["true"])
    at(clock, "2026-04-26T03:40:00")
    rep = check(s, j, clock, notes)
    assert rep.ok and rep.jobs[0].state == "ok"
    assert [n[0] for n in notes] == ["error", "info"]
    rec = j.last("job.recovered")
    assert rec is not None and rec.data["after"] == "missed"


def test_grace_defaults_to_ten_percent_at_least_a_minute(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.tick]\nschedule = "*/5 * * * *"\n'
                      '[jobs.hourly]\nschedule = "0 * * * *"\n')
    clock, notes = at(FakeClock(), "2026-04-26T10:00:00"), Notes()
    j = Journal(state_dir, clock)
    run(s, j, clock, notes, "tick", ["true"])
    run(s, j, clock, notes, "hourly", ["true"])
    at(clock, "2026-04-26T10:05:55")
    assert check(s, j, clock, notes).ok  # 55 s late < 60 s
    at(clock, "2026-04-26T10:06:05")
    rep = check(s, j, clock, notes)
    assert {x.name: x.state for x in rep.jobs} == {"hourly": "ok", "tick": "missed"}
    assert rep.jobs[1].grace == 60
    run(s, j, clock, notes, "tick", ["true"])
    at(clock, "2026-04-26T11:05:59")  # hourly: grace 6 min
    run(s, j, clock, notes, "tick", ["true"])
    assert {x.name: x.state for x in check(s, j, clock, notes).jobs} == {"hourly": "ok", "tick": "ok"}
    at(clock, "2026-04-26T11:06:01")
    run(s, j, clock, notes, "tick", ["true"])
    assert {x.name: x.state for x in check(s, j, clock, notes).jobs} == {"hourly": "missed", "tick": "ok"}


def test_never_run_job_is_measured_from_first_sight(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.fresh]\nschedule = "*/10 * * * *"\n')
    clock, notes = at(FakeClock(), "2026-04-26T10:03:00"), Notes()
    j = Journal(state_dir, clock)
    rep = check(s, j, clock, notes)  # years of past schedule, but we only just started watching
    assert rep.ok and rep.jobs[0].state == "waiting" and rep.jobs[0].expected == "2026-04-26T10:10:00Z"
    at(clock, "2026-04-26T10:10:59")
    assert check(s, j, clock, notes).ok
    at(clock, "2026-04-26T10:11:01")
    rep = check(s, j, clock, notes)
    assert rep.jobs[0].state == "missed" and len(notes) == 1


def test_clock_jumping_back_causes_no_missed_storm(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, "".join(f'[jobs.j{i}]\nschedule = "*/5 * * * *"\n' for i in range(5)))
    clock, notes = at(FakeClock(), "2026-04-26T12:00:00"), Notes()
    j = Journal(state_dir, clock)
    for i in range(5):
        run(s, j, clock, notes, f"j{i}", ["true"])
    assert check(s, j, clock, notes).ok
    at(clock, "2026-04-26T09:00:00")  # three hours back
    rep = check(s, j, clock, notes)
    assert rep.ok and rep.clock_back_seconds == 3 * 3600
    assert any("clock went back" in w for w in rep.warnings)
    at(clock, "2026-04-26T09:04:00")
    assert check(s, j, clock, notes).ok and notes == []
    # Real misses after the jump are still caught: nothing ran since 09:00.
    at(clock, "2026-04-26T09:06:30")
    rep = check(s, j, clock, notes)
    assert [x.state for x in rep.jobs] == ["missed"] * 5 and len(notes) == 5


def test_clock_corrected_forward_causes_no_missed_storm(write_config, state_dir: Path) -> None:
    """NTP sets a slow host's clock two hours forward between two checks: the runs "due" in
    that jump never had a chance (one real minute passed); real misses after it still count."""
    s = settings_with(write_config, "".join(f'[jobs.j{i}]\nschedule = "*/5 * * * *"\n' for i in range(3)))
    clock, notes = at(FakeClock(), "2026-04-26T10:00:00"), Notes()
    j = Journal(state_dir, clock)
    for i in range(3):
        run(s, j, clock, notes, f"j{i}", ["true"])
    assert check(s, j, clock, notes).ok
    clock.advance(60)  # one real minute ...
    clock.set(dt.datetime(2026, 4, 26, 12, 1, tzinfo=UTC))  # ... and the clock is corrected by two hours
    rep = check(s, j, clock, notes)
    assert rep.ok and notes == [], [x.state for x in rep.jobs]
    assert any("set forward" in w for w in rep.warnings)
    at(clock, "2026-04-26T12:04:00")
    assert check(s, j, clock, notes).ok and notes == []
    at(clock, "2026-04-26T12:06:30")  # nothing ran since the jump: the 12:05 runs are missed
    rep = check(s, j, clock, notes)
    assert [x.state for x in rep.jobs] == ["missed"] * 3 and len(notes) == 3


def test_dst_daily_0230_berlin(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.nightly]\nschedule = "30 2 * * *"\ntimezone = "Europe/Berlin"\n'
                      'grace = 120\n')
    clock, notes = at(FakeClock(), "2026-03-28T01:30:05"), Notes()  # 02:30 CET
    j = Journal(state_dir, clock)
    run(s, j, clock, notes, "nightly", ["true"])
    # 29 March: 02:30 does not exist; cron runs the job at 03:00 CEST = 01:00 UTC.
    at(clock, "2026-03-29T00:45:00")
    assert check(s, j, clock, notes).ok
    at(clock, "2026-03-29T01:05:00")
    rep = check(s, j, clock, notes)
    assert rep.jobs[0].state == "missed" and rep.jobs[0].expected == "2026-03-29T01:00:00Z"
    at(clock, "2026-03-29T01:06:00")
    run(s, j, clock, notes, "nightly", ["true"])
    at(clock, "2026-03-29T23:00:00")
    rep = check(s, j, clock, notes)
    assert rep.ok and rep.jobs[0].expected == "2026-03-30T00:30:00Z"  # 02:30 CEST

    # 25 October: 02:30 happens twice; cron runs a fixed-time job once, so no false miss.
    at(clock, "2026-10-25T00:30:01")  # 02:30 CEST
    run(s, j, clock, notes, "nightly", ["true"])
    at(clock, "2026-10-25T01:40:00")  # 02:40 CET, after the second 02:30
    rep = check(s, j, clock, notes)
    assert rep.ok and rep.jobs[0].expected == "2026-10-26T01:30:00Z"
    assert [n[1] for n in notes] == ["opskit job nightly missed its run", "opskit job nightly recovered"]


@pytest.mark.parametrize("expr", ["7 * * * *", "*/20 * * * *"])
@pytest.mark.parametrize("start, end", [
    ("2026-03-28T22:00:00", "2026-03-29T04:00:00"),   # spring: 02:00 CET jumps to 03:00 CEST
    ("2026-10-24T22:00:00", "2026-10-25T04:00:00"),   # autumn: 03:00 CEST falls back to 02:00 CET
], ids=["spring", "autumn"])
def test_dst_wildcard_hour_jobs_berlin(write_config, state_dir: Path, expr: str, start: str, end: str) -> None:
    # An hourly and a */N job follow the wall clock through both DST changes: every run that
    # cron makes is seen on time (no false miss in the short or the doubled hour), and the one
    # run that does not happen is reported, once.
    from opskit.base import schedule

    berlin = schedule.zone("Europe/Berlin")
    s = settings_with(write_config, f'[jobs.tick]\nschedule = "{expr}"\ntimezone = "Europe/Berlin"\n')
    clock, notes = at(FakeClock(), start), Notes()
    j = Journal(state_dir, clock)
    t0 = clock.now()
    runs = schedule.runs_between(expr, t0, dt.datetime.fromisoformat(end).replace(tzinfo=UTC), berlin)
    gaps = {(b - a).total_seconds() for a, b in zip(runs, runs[1:], strict=False)}
    assert gaps == {3600.0 if expr.startswith("7") else 1200.0}  # real time between runs never jumps
    grace = schedule.default_grace(gaps.pop())  # 10% of the period
    skip = runs[len(runs) // 2]  # inside the changed hour
    for when in runs:
        # Time passes (the monotonic clock with it): a DST change is no clock correction.
        at(clock, (when + dt.timedelta(seconds=5)).isoformat())
        if when != skip:
            run(s, j, clock, notes, "tick", ["true"])
        at(clock, (when + dt.timedelta(seconds=grace + 30)).isoformat())  # past the grace, before the next run
        rep = check(s, j, clock, notes)
        assert [x.state for x in rep.jobs] == (["missed"] if when == skip else ["ok"]), (when, rep.jobs)
    assert [n[1] for n in notes] == ["opskit job tick missed its run", "opskit job tick recovered"]


# --- cron-check: overrun, failed, crontab ---------------------------------------------------

def test_still_running_past_max_runtime(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.etl]\nschedule = "0 * * * *"\nmax_runtime = 600\n')
    # Minute 1 of the hour: the hourly run expected at :00 must not fall due (plus grace)
    # inside the test's 15 minutes, whatever the wall clock says when the suite runs.
    clock, notes = FakeClock(dt.datetime.now(UTC).replace(minute=1, second=0, microsecond=0)), Notes()
    j = Journal(state_dir, clock)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        started = iso(clock.now())
        j.kv_set("job", "etl", {"runs": 1, "last_start": started, "running": {
            str(sleeper.pid): {"started": started, "ticks": record.proc_ticks(sleeper.pid)}}})
        clock.advance(590)
        assert check(s, j, clock, notes).jobs[0].state == "running"
        clock.advance(20)
        rep = check(s, j, clock, notes)
        assert rep.jobs[0].state == "overrun" and not rep.ok
        clock.advance(300)
        check(s, j, clock, notes)
        assert len(notes) == 1 and "max_runtime" in notes[0][2]
        ev = j.last("job.missed")
        assert ev is not None and ev.data["problem"] == "overrun" and ev.data["pid"] == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


def test_last_run_failed_is_a_problem_without_a_second_notification(write_config, state_dir: Path) -> None:
    s = settings_with(write_config)
    clock, notes = FakeClock(), Notes()
    j = Journal(state_dir, clock)
    run(s, j, clock, notes, "adhoc", ["false"])
    rep = check(s, j, clock, notes)
    assert not rep.ok and rep.jobs[0].state == "failed" and rep.jobs[0].source == "journal"
    assert len(notes) == 1


def test_schedules_from_the_crontab(write_config, state_dir: Path) -> None:
    s = settings_with(write_config, '[jobs.shared]\nschedule = "0 4 * * *"\ntimezone = "UTC"\n')
    crontab = (
        "15 2 * * * /opt/opskit run-job my-backup -- /usr/bin/backup\n"
        "*/5 * * * * /opt/opskit run-job shared -- true\n"  # the config wins
        "61 * * * * /opt/opskit run-job broken -- true\n"
        "0 * * * * /bin/echo not a job of ours\n"
        # opskit's own entries set PATH and OPSKIT_STATE_DIR inline, before the command
        "*/10 * * * * PATH='/o p\\%t/bin:/bin' OPSKIT_STATE_DIR=/var/lib/opskit '/o p\\%t/bin/opskit' "
        "--config /c.toml run-job --ok-exit 1 drift-scan -- '/o p\\%t/bin/opskit' drift-scan >> /l 2>&1\n"
    )
    watches, warnings = jobs.watched_jobs(s, crontab)
    assert {n: (w.schedule, w.source) for n, w in watches.items()} == {
        "shared": ("0 4 * * *", "config"), "my-backup": ("15 2 * * *", "crontab"),
        "drift-scan": ("*/10 * * * *", "crontab")}
    assert len(warnings) == 1 and "line 3" in warnings[0] and "not watched" in warnings[0]
    clock, notes = FakeClock(), Notes()
    rep = check(s, Journal(state_dir, clock), clock, notes, crontab)
    assert rep.ok and rep.warnings == warnings


def test_cron_check_reads_the_installed_block(opskit, cron_user: CronUser, tmp_path: Path,
                                              state_dir: Path) -> None:
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(f'[cron]\nuser = "{cron_user.name}"\n')
    cron_user.write("30 1 * * * /usr/bin/opskit run-job mine -- /bin/true\n")
    assert opskit("--config", str(cfg), "cron", "install").returncode == 0
    r = opskit("--config", str(cfg), "cron-check", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {x["name"]: x["source"] for x in data["jobs"]} == {
        "cron-check": "crontab", "drift-scan": "crontab", "mine": "crontab", "notify-flush": "crontab"}
    assert all(x["state"] == "waiting" for x in data["jobs"])


def test_bad_config_schedule_exits_2(opskit, write_config) -> None:
    cfg = write_config('[jobs.x]\nschedule = "every day"\n')
    r = opskit("--config", str(cfg), "cron-check")
    assert r.returncode == 2 and "jobs.x.schedule" in r.stderr


def test_cli_reports_missed_and_exits_1(opskit, write_config, state_dir: Path) -> None:
    cfg = write_config('[jobs.old]\nschedule = "*/5 * * * *"\n')
    j = Journal(state_dir)
    then = dt.datetime.now(UTC) - dt.timedelta(hours=2)
    j.kv_set("job", "old", {"runs": 1, "last_start": iso(then), "last_status": "ok", "running": {}})
    j.kv_set("cron-check", "seen:old", {"sig": ["*/5 * * * *", None], "since": iso(then)})
    r = opskit("--config", str(cfg), "cron-check")
    assert r.returncode == 1
    assert "PROBLEM" in r.stdout and "old" in r.stdout and "missed" in r.stdout


# --- cron-check's own health --------------------------------------------------------------

def test_cron_check_health_says_when_it_stopped(write_config, state_dir: Path) -> None:
    s = settings_with(write_config)
    clock = at(FakeClock(), "2026-04-26T10:00:00")
    j = Journal(state_dir, clock)
    h = jobs.cron_check_health(j, s, clock)
    assert h["last_run"] is None and h["overdue"] is False and "never run" in h["message"]
    j.kv_set("cron-check", "installed", {"ts": iso(clock.now())})
    at(clock, "2026-04-26T10:07:00")
    h = jobs.cron_check_health(j, s, clock)
    assert h["overdue"] is True and "never ran since the install" in h["message"]
    check(s, j, clock, Notes(), crontab="")
    at(clock, "2026-04-26T10:10:59")
    h = jobs.cron_check_health(j, s, clock)
    assert h["last_run"] == "2026-04-26T10:07:00Z" and h["overdue"] is False
    assert h["expected_period"] == 300 and h["grace"] == 60
    at(clock, "2026-04-26T10:11:01")
    h = jobs.cron_check_health(j, s, clock)
    assert h["overdue"] is True and "CRON-CHECK IS NOT RUNNING" in h["message"]

    assert jobs.cron_check_health(j, s, clock)["overdue"] is True
