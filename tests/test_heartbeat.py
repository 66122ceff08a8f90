"""[opskit] heartbeat: each cron-check pings an external monitor (a local stand-in of
healthchecks.io's ping API and Uptime Kuma's push monitor, standins/pings.py), success when
nothing needs attention, the failure form with the reasons when something does; a monitor
that is down or hangs never stops cron-check, and its outage is journaled once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit import notify
from opskit.base import config
from opskit.base.clock import FakeClock
from opskit.jobs.cron_check import cron_check
from opskit.standins.pings import BODY_LIMIT
from opskit.storage.journal import Journal
from opskit.views.heartbeat import beat
from tests.support.notify import receiver_fixture  # noqa: F401 - the `receiver` fixture
from tests.support.pings import dump_journal, pings_fixture  # noqa: F401 - the `pings` fixture

_dump = dump_journal


def _config(write_config: Callable[[str], Path], sandbox, extra: str = "", opskit_extra: str = "") -> Path:
    return write_config('[opskit]\nheartbeat = "${HC_URL}"\n' + opskit_extra
                        + f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n' + extra)


def _events(state_dir: Path, prefix: str) -> list[dict[str, object]]:
    j = Journal(state_dir)
    return [e.to_dict() for e in j.query(type_prefix=prefix)]


def test_a_healthy_host_pings_success_and_the_url_is_nowhere(opskit, write_config, sandbox, pings,
                                                             state_dir) -> None:
    url = pings.check_url()
    secret = url.rsplit("/", 1)[1]
    cfg = _config(write_config, sandbox)
    r = opskit("--config", str(cfg), "cron-check", env={"HC_URL": url})
    assert r.returncode == 0, r.stdout + r.stderr
    [p] = pings.of(url)
    assert (p.kind, p.method, p.failed) == ("success", "POST", False)
    assert p.text.endswith("all well.")
    r2 = opskit("--config", str(cfg), "cron-check", "--json", env={"HC_URL": url})
    assert json.loads(r2.stdout)["heartbeat"] == {"sent": True, "healthy": True, "reasons": [],
                                                   "delivered": True, "error": None}
    assert len(pings.of(url)) == 2
    for text in (r.stdout, r.stderr, r2.stdout, r2.stderr, _dump(state_dir)):
        assert secret not in text


def test_a_broken_channel_makes_the_next_ping_the_failure_form_naming_it(opskit, write_config, sandbox, pings,
                                                                         receiver, state_dir) -> None:
    url = pings.check_url()
    cfg = _config(write_config, sandbox, f'[notify.ops]\ntype = "discord"\nurl = "{receiver.url("discord")}"\n'
                  'retry_for = 1\n', 'notify = ["ops"]\n')
    receiver.fail_next(1, 404)  # Discord's "Unknown Webhook": the channel is broken for good
    assert opskit("--config", str(cfg), "notify", "deploy failed", env={"HC_URL": url}).returncode == 1
    r = opskit("--config", str(cfg), "cron-check", env={"HC_URL": url})
    assert r.returncode == 0, r.stdout + r.stderr
    [p] = pings.of(url)
    assert p.kind == "fail" and p.failed
    assert "needs attention: channel ops is broken: its notifications go to its fallback or wait." in p.text
    assert not p.cut and len(p.body) <= BODY_LIMIT


def test_a_frozen_service_fails_the_ping_and_unfreeze_makes_it_success_again(opskit, write_config, sandbox,
                                                                              pings) -> None:
    url = pings.check_url()
    cfg = _config(write_config, sandbox)
    env = {"HC_URL": url}
    assert opskit("--config", str(cfg), "freeze", "web", "--reason", "db migration", env=env).returncode == 0
    opskit("--config", str(cfg), "cron-check", env=env)
    assert opskit("--config", str(cfg), "unfreeze", "web", env=env).returncode == 0
    opskit("--config", str(cfg), "cron-check", env=env)
    first, second = pings.of(url)
    assert first.kind == "fail" and "web: frozen, deploys refused (opskit unfreeze web)" in first.text
    assert second.kind == "success"


def test_an_outbox_older_than_the_alarm_fails_the_ping(write_config, sandbox, pings, receiver, state_dir,
                                                       monkeypatch) -> None:
    url = pings.check_url()
    monkeypatch.setenv("HC_URL", url)
    cfg = _config(write_config, sandbox, f'[notify.ops]\ntype = "discord"\nurl = "{receiver.url("discord")}"\n'
                  'retry_for = 1\n', 'notify = ["ops"]\noutbox_alarm = 1800\n')
    s = config.load_file(cfg)
    clock = FakeClock()
    j = Journal(state_dir, clock)
    receiver.stop()  # down: the message waits in the outbox
    notify.send(s, j, "deploy failed", level="error", clock=clock)
    clock.advance(1700)
    assert beat(s, j, clock, timeout=2).healthy  # 28 min: not yet
    clock.advance(200)
    b = beat(s, j, clock, timeout=2)
    assert not b.healthy and b.result is not None and b.result.ok
    assert b.reasons == ["channel ops: 1 message(s) waiting in the outbox since 2026-04-26T03:53:00Z, longer than "
                         "outbox_alarm (opskit notify --flush; is the channel reachable?)"]
    assert [p.kind for p in pings.of(url)] == ["success", "fail"]
    assert "channel ops: 1 message(s) waiting in the outbox" in pings.of(url)[1].text


def test_a_down_monitor_leaves_cron_check_working_and_is_journaled_once(opskit, write_config, sandbox, pings,
                                                                        state_dir) -> None:
    url = pings.check_url()
    secret = url.rsplit("/", 1)[1]
    cfg = _config(write_config, sandbox)
    env = {"HC_URL": url}
    pings.stop()
    outs = [opskit("--config", str(cfg), "cron-check", env=env) for _ in range(2)]
    for r in outs:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and secret not in r.stdout + r.stderr
        assert "warning: heartbeat ping failed: cannot reach the monitor (Connection refused)" in r.stderr
    j = Journal(state_dir)
    assert j.kv_get("cron-check", "last") is not None  # cron-check did its work
    failed = _events(state_dir, "heartbeat.")
    assert [e["type"] for e in failed] == ["heartbeat.failed"]
    st = opskit("--config", str(cfg), "status", env=env)
    assert st.returncode == 1
    assert "  - the heartbeat ping fails since " in st.stdout and "cannot reach the monitor" in st.stdout
    pings.restart()
    assert opskit("--config", str(cfg), "cron-check", env=env).returncode == 0
    assert [e["type"] for e in _events(state_dir, "heartbeat.")] == ["heartbeat.failed", "heartbeat.recovered"]
    assert opskit("--config", str(cfg), "status", env=env).returncode == 0
    assert secret not in _dump(state_dir)


def test_a_hanging_monitor_costs_cron_check_only_the_timeout(write_config, sandbox, pings, state_dir,
                                                              monkeypatch) -> None:
    url = pings.check_url()
    monkeypatch.setenv("HC_URL", url)
    s = config.load_file(_config(write_config, sandbox))
    j = Journal(state_dir)
    pings.hang()
    report = cron_check(s, j, crontab_text=None)
    b = beat(s, j, timeout=0.5)
    assert report.ok and j.kv_get("cron-check", "last") is not None
    assert b.result is not None and (b.result.ok, b.result.error) == (False, "no answer within 0.5s")
    beat(s, j, timeout=0.5)
    assert [e["type"] for e in _events(state_dir, "heartbeat.")] == ["heartbeat.failed"]
    assert pings.requests  # it did reach the monitor, which never answered


def test_uptime_kuma_style_says_up_or_down_with_the_reason(write_config, sandbox, pings, state_dir,
                                                            monkeypatch) -> None:
    url = pings.kuma_url()
    monkeypatch.setenv("HC_URL", url)
    s = config.load_file(_config(write_config, sandbox, opskit_extra='heartbeat_style = "uptime-kuma"\n'))
    j = Journal(state_dir)
    assert beat(s, j, timeout=2).result.ok  # type: ignore[union-attr]
    j.kv_set("frozen", "web", {"reason": "by hand", "since": "2026-12-02T00:00:00Z"})
    beat(s, j, timeout=2)
    up, down = pings.of(url)
    assert (up.kind, down.kind, up.method) == ("up", "down", "GET")
    assert "web: frozen, deploys refused" in down.text


@pytest.mark.parametrize(("line", "needle"), [
    ('heartbeat = "not a url"', "opskit.heartbeat: is not an http(s) URL"),
    ('heartbeat_style = "cronitor"', "opskit.heartbeat_style: 'cronitor' is not one of"),
    ("outbox_alarm = 0", "opskit.outbox_alarm: must be greater than 0"),
])
def test_bad_heartbeat_keys_exit_2(opskit, write_config, line: str, needle: str) -> None:
    cfg = write_config(f"[opskit]\n{line}\n")
    r = opskit("--config", str(cfg), "cron-check")
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "not a url" not in r.stderr or "heartbeat_style" in line


def test_a_missed_job_and_a_late_cron_check_are_named_until_they_end(write_config, pings, state_dir,
                                                                      monkeypatch) -> None:
    import datetime as dt

    from opskit.jobs.cron_check import cron_check_health
    from opskit.jobs.run_job import run_job

    url = pings.check_url()
    monkeypatch.setenv("HC_URL", url)
    s = config.load_file(write_config('[opskit]\nheartbeat = "${HC_URL}"\n'
                                      '[jobs.backup]\nschedule = "0 3 * * *"\ntimezone = "UTC"\ngrace = 300\n'))
    told: list[object] = []
    clock = FakeClock(dt.datetime(2026, 4, 25, 3, 0, 2, tzinfo=dt.timezone.utc))
    j = Journal(state_dir, clock)
    run_job(s, j, "backup", ["true"], clock=clock, notifier=lambda *a, **k: told.append(a), echo=lambda _: None)
    clock.advance(9 * 3600)
    cron_check(s, j, clock, notifier=lambda *a, **k: told.append(a), crontab_text=None)
    # cron stopped: neither cron-check nor the backup ran (real time passed: no clock jump)
    clock.advance((dt.datetime(2026, 4, 26, 3, 20, tzinfo=dt.timezone.utc) - clock.now()).total_seconds())
    before = cron_check_health(j, s, clock)
    cron_check(s, j, clock, notifier=lambda *a, **k: told.append(a), crontab_text=None)
    late = beat(s, j, clock, cron_check=before, timeout=2)
    assert late.reasons == [
        "cron-check is not running: nothing watches the jobs or finishes an interrupted deploy",
        "job backup missed its run due 2026-04-26T03:00:00Z (opskit cron-check)"]
    clock.advance(300)
    cron_check(s, j, clock, notifier=lambda *a, **k: told.append(a), crontab_text=None)
    assert beat(s, j, clock, cron_check=cron_check_health(j, s, clock), timeout=2).reasons == [
        "job backup missed its run due 2026-04-26T03:00:00Z (opskit cron-check)"]
    run_job(s, j, "backup", ["true"], clock=clock, notifier=lambda *a, **k: told.append(a), echo=lambda _: None)
    clock.advance(300)
    cron_check(s, j, clock, notifier=lambda *a, **k: told.append(a), crontab_text=None)
    assert beat(s, j, clock, timeout=2).healthy
    assert [(p.kind, "job backup missed" in p.text) for p in pings.of(url)] == [
        ("fail", True), ("fail", True), ("success", False)]


@pytest.mark.slow
def test_a_hanging_monitor_through_the_real_cli_is_cut_at_the_timeout(opskit, write_config, sandbox, pings,
                                                                       state_dir) -> None:
    """The real command with the real 10 s timeout: cron-check's work is done and journaled, the
    ping is abandoned with one warning (the run is bounded by the subprocess timeout, not a sleep)."""
    url = pings.check_url()
    pings.hang()
    r = opskit("--config", str(_config(write_config, sandbox)), "cron-check", env={"HC_URL": url}, timeout=40)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == "warning: heartbeat ping failed: no answer within 10s\n"
    assert Journal(state_dir).kv_get("cron-check", "last") is not None
    assert [e["type"] for e in _events(state_dir, "heartbeat.")] == ["heartbeat.failed"]
    assert pings.requests == [f"POST /{url.rsplit('/', 1)[1]}"]


def test_a_monitor_that_trickles_its_answer_is_abandoned_at_the_deadline(write_config, sandbox, pings, state_dir,
                                                                          monkeypatch) -> None:
    """Each byte comes within the per-read timeout, the whole answer would take 10 s: the ping
    gives up at its deadline instead of waiting it out."""
    url = pings.check_url()
    monkeypatch.setenv("HC_URL", url)
    s = config.load_file(_config(write_config, sandbox))
    pings.trickle(0.2)
    b = beat(s, Journal(state_dir), timeout=0.5)
    assert b.result is not None and (b.result.ok, b.result.error) == (False, "no answer within 0.5s")
    assert not pings.trickled  # the answer was still coming
    assert [e["type"] for e in _events(state_dir, "heartbeat.")] == ["heartbeat.failed"]


def test_a_failure_recorded_before_the_heartbeat_was_removed_is_not_named(opskit, write_config, sandbox, pings,
                                                                          state_dir) -> None:
    """Only a ping that gets through clears a failure: with the key gone none is ever sent, so the
    old failure must not keep status at exit 1 (and the metric at 1) for good."""
    cfg = _config(write_config, sandbox)
    pings.stop()
    assert opskit("--config", str(cfg), "cron-check", env={"HC_URL": pings.check_url()}).returncode == 0
    assert opskit("--config", str(cfg), "status", env={"HC_URL": pings.check_url()}).returncode == 1
    plain = write_config(f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\n')
    st = opskit("--config", str(plain), "status")
    assert st.returncode == 0 and "heartbeat" not in st.stdout, st.stdout
    m = opskit("--config", str(plain), "metrics")
    assert "opskit_heartbeat_failing 0.0" in m.stdout and "opskit_attention_items 0.0" in m.stdout


def test_a_missed_job_whose_table_is_removed_is_named_no_more(write_config, state_dir, pings, monkeypatch) -> None:
    import datetime as dt

    from opskit.jobs.run_job import run_job

    monkeypatch.setenv("HC_URL", pings.check_url())
    jobs = '[jobs.backup]\nschedule = "0 3 * * *"\ntimezone = "UTC"\ngrace = 300\n'
    s = config.load_file(write_config('[opskit]\nheartbeat = "${HC_URL}"\n' + jobs))
    clock = FakeClock(dt.datetime(2026, 4, 25, 3, 0, 2, tzinfo=dt.timezone.utc))
    j = Journal(state_dir, clock)
    run_job(s, j, "backup", ["true"], clock=clock, notifier=lambda *a, **k: None, echo=lambda _: None)
    for _ in range(6):  # a cron-check every hour while the next day's 03:00 passes without the job
        clock.advance(5 * 3600)
        cron_check(s, j, clock, notifier=lambda *a, **k: None, crontab_text=None)
    assert "job backup missed its run due 2026-04-26T03:00:00Z (opskit cron-check)" in beat(s, j, clock, timeout=2).reasons
    s = config.load_file(write_config('[opskit]\nheartbeat = "${HC_URL}"\n'))  # the job is dropped
    clock.advance(300)
    cron_check(s, j, clock, notifier=lambda *a, **k: None, crontab_text=None)
    assert not [r for r in beat(s, j, clock, timeout=2).reasons if "missed" in r]
