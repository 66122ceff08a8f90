"""[jobs.NAME] ping_url: run-job signals an external monitor in healthchecks.io's ping API form
(/start, then /<exit status>, the output tail as the body), against the local stand-in
(standins/pings.py); the URL's secret uuid is in no output or event."""

from __future__ import annotations

import sys
from pathlib import Path

from opskit.standins.pings import BODY_LIMIT
from opskit.storage.journal import Journal
from tests.support.pings import dump_journal, pings_fixture  # noqa: F401 - the `pings` fixture

_dump = dump_journal


def _cfg(write_config, url_expr: str = "${JOB_PING}") -> Path:
    return write_config(f'[jobs.backup]\nschedule = "30 2 * * *"\nping_url = "{url_expr}"\n')


SCRIPT = "import sys; [print(f'line {i}') for i in range(30)]; print('disk full', file=sys.stderr); sys.exit(3)"


def test_a_failing_job_pings_start_then_its_exit_status_with_the_tail(opskit, write_config, pings,
                                                                      state_dir) -> None:
    url = pings.check_url()
    secret = url.rsplit("/", 1)[1]
    r = opskit("--config", str(_cfg(write_config)), "run-job", "backup", "--", sys.executable, "-c", SCRIPT,
               env={"JOB_PING": url})
    assert r.returncode == 3, r.stderr
    start, end = pings.of(url)
    assert (start.kind, start.method, start.body) == ("start", "POST", b"")
    assert (end.kind, end.exit_status, end.failed) == ("exit", 3, True)
    lines = end.text.splitlines()
    assert lines[-1] == "disk full" and "line 29" in lines and "line 0" not in lines  # the tail
    assert not end.cut and len(end.body) <= BODY_LIMIT
    fail = Journal(state_dir).last("job.fail")
    assert fail is not None and fail.data["exit_code"] == 3 and "ping_error" not in fail.data
    for text in (r.stdout, r.stderr, _dump(state_dir)):
        assert secret not in text


def test_a_passing_job_pings_start_then_0(opskit, write_config, pings) -> None:
    url = pings.check_url()
    r = opskit("--config", str(_cfg(write_config)), "run-job", "backup", "--", "echo", "done",
               env={"JOB_PING": url})
    assert r.returncode == 0, r.stderr
    assert [(p.kind, p.exit_status, p.text) for p in pings.of(url)] == [("start", None, ""), ("exit", 0, "done")]


def test_an_ok_exit_code_pings_the_success_form(opskit, write_config, pings) -> None:
    url = pings.check_url()
    r = opskit("--config", str(_cfg(write_config)), "run-job", "--ok-exit", "1", "backup", "--",
               sys.executable, "-c", "raise SystemExit(1)", env={"JOB_PING": url})
    assert r.returncode == 1
    assert [(p.kind, p.failed) for p in pings.of(url)] == [("start", False), ("success", False)]


def test_a_down_monitor_never_changes_the_job(opskit, write_config, pings, state_dir) -> None:
    url = pings.check_url()
    secret = url.rsplit("/", 1)[1]
    pings.stop()
    r = opskit("--config", str(_cfg(write_config)), "run-job", "backup", "--", "echo", "done",
               env={"JOB_PING": url})
    assert (r.returncode, r.stdout) == (0, "done\n"), r.stderr
    assert "the /start ping to ping_url failed: cannot reach the monitor (Connection refused)" in r.stderr
    assert "Traceback" not in r.stderr and secret not in r.stderr
    ok = Journal(state_dir).last("job.ok")
    assert ok is not None and ok.data["ping_error"] == (
        "/start ping: cannot reach the monitor (Connection refused); "
        "/0 ping: cannot reach the monitor (Connection refused)")
    assert secret not in _dump(state_dir)


def test_a_bad_ping_url_exits_2_without_showing_it(opskit, write_config) -> None:
    r = opskit("--config", str(_cfg(write_config, "hc-ping.com/secret-uuid")), "run-job", "backup", "--", "true")
    assert r.returncode == 2
    assert "jobs.backup.ping_url: is not an http(s) URL" in r.stderr and "secret-uuid" not in r.stderr


def test_a_ping_url_with_an_invalid_host_fails_without_quoting_it() -> None:
    """httpx quotes an invalid host in its error, and the host can be where the secret is."""
    from opskit.base.config import Secret
    from opskit.notify import ping

    secret = "0a1b2c3d-1111-4222-8333-444455556666"
    for url in (f"https://xn--{secret}\u2603.example/x", "http://[::zz]/x"):
        r = ping.send(Secret(url), timeout=2)
        assert not r.ok and r.error and secret not in r.error and "zz" not in r.error, r.error
