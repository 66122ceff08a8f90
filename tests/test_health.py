"""health-gate: real probes against real servers; deadlines on a FakeClock where possible."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opskit.base.clock import FakeClock
from opskit.base.config import HealthSettings
from opskit.base.errors import UsageError
from opskit.deploy.health import ProbeResult, gate, parse_expect_status, probe_once, run_gate, validate
from opskit.standins import free_port
from opskit.storage.journal import Journal
from tests.support.health import refused_url, spec, start_service_fixture  # noqa: F401


def wait_for(cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def trailing_failures(probes: list[ProbeResult]) -> int:
    n = 0
    for p in reversed(probes):
        if p.ok:
            break
        n += 1
    return n


# --- the verdict rules, instant on a FakeClock ------------------------------------------------

def test_refused_fails_at_startup_with_the_client_error() -> None:
    v = run_gate(spec(url=refused_url(), startup=3, period=0.5), clock=FakeClock())
    assert not v.healthy
    assert "Connection refused" in v.reason and "within 3s" in v.reason
    assert [p.at for p in v.probes] == [0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert v.duration == pytest.approx(3.0)


def test_startup_deadline_gets_a_last_probe_even_off_the_period_grid() -> None:
    v = run_gate(spec(url=refused_url(), startup=3, period=2), clock=FakeClock())
    assert [p.at for p in v.probes] == [0, 2.0, 3.0]


def test_healthy_passes_exactly_at_window(start_service) -> None:
    svc = start_service()
    v = run_gate(spec(url=svc.url, window=2, period=0.5, expect_body="^ok$"), clock=FakeClock())
    assert v.healthy, v.reason
    assert len(v.probes) == 5 and v.duration == pytest.approx(2.0)
    assert v.probes[-1].detail.startswith("HTTP 200 in ") and v.probes[-1].status == 200
    assert v.target == f"GET {svc.url}"


def test_503_fails_with_the_status(start_service) -> None:
    svc = start_service("503")
    v = run_gate(spec(url=svc.url, startup=1), clock=FakeClock())
    assert not v.healthy and "HTTP 503" in v.reason
    assert all(p.status == 503 and p.detail == "HTTP 503" for p in v.probes)


def test_expect_status_decides_what_healthy_is(start_service) -> None:
    svc = start_service("503")
    assert run_gate(spec(url=svc.url, expect_status=(503,), window=1), clock=FakeClock()).healthy
    ok = start_service()
    v = run_gate(spec(url=ok.url, expect_status=(204,), startup=0.5), clock=FakeClock())
    assert not v.healthy and "HTTP 200" in v.reason


def test_redirect_is_not_followed_and_3xx_is_healthy(start_service) -> None:
    svc = start_service(f"redirect={refused_url()}")
    v = run_gate(spec(url=svc.url, window=0.5), clock=FakeClock())
    assert v.healthy and v.probes[0].status == 302
    v = run_gate(spec(url=svc.url, expect_status=(200,), startup=0.5), clock=FakeClock())
    assert not v.healthy and "HTTP 302" in v.reason


def test_body_mismatch(start_service) -> None:
    svc = start_service("body=degraded")
    v = run_gate(spec(url=svc.url, expect_body="ok", startup=0.5), clock=FakeClock())
    assert not v.healthy and "body did not match 'ok'" in v.reason
    assert run_gate(spec(url=svc.url, expect_body="^degr", window=0.5), clock=FakeClock()).healthy


def test_hang_is_bounded_by_timeout(start_service) -> None:
    svc = start_service("hang")
    v = run_gate(spec(url=svc.url, timeout=0.3, startup=0.5, period=0.25), clock=FakeClock())
    assert not v.healthy and "timed out after 0.3s" in v.reason
    # each probe gave up (the service never answers): three probes, each one a timeout
    assert len(v.probes) == 3 and all(p.detail == "timed out after 0.3s" for p in v.probes), v.probes


def test_slow_within_and_over_timeout(start_service) -> None:
    svc = start_service("slow=0.3")
    assert run_gate(spec(url=svc.url, timeout=1.0, window=0.5), clock=FakeClock()).healthy
    v = run_gate(spec(url=svc.url, timeout=0.15, startup=0.5), clock=FakeClock())
    assert not v.healthy and "timed out after 0.15s" in v.reason


def test_dies_after_healthy_fails_after_exactly_failures_probes(start_service) -> None:
    svc = start_service()

    def sicken(p: ProbeResult) -> None:
        if p.at == 1.0:
            svc.set_mode("503")

    v = run_gate(spec(url=svc.url, window=30, period=0.5, failures=3), clock=FakeClock(),
                 on_probe=sicken)
    assert not v.healthy
    assert [p.ok for p in v.probes] == [True, True, True, False, False, False]
    assert "3 consecutive probes failed" in v.reason and "HTTP 503" in v.reason
    assert v.duration == pytest.approx(2.5)  # fail-fast: long before the 30 s window


def test_process_exit_after_healthy_reports_refused(start_service) -> None:
    svc = start_service()
    v = run_gate(spec(url=svc.url, window=30, period=0.5, failures=2), clock=FakeClock(),
                 on_probe=lambda p: svc.set_mode("exit") if p.at == 0.5 else None)
    assert not v.healthy and trailing_failures(v.probes) == 2 and len(v.probes) == 4
    assert "Connection refused" in v.reason


def test_flapping_resets_the_consecutive_count(start_service) -> None:
    svc = start_service("flap")
    v = run_gate(spec(url=svc.url, window=3, period=0.5, failures=2), clock=FakeClock())
    assert v.healthy, v.reason
    assert [p.ok for p in v.probes] == [True, False] * 3 + [True]
    flap = start_service("flap")
    v = run_gate(spec(url=flap.url, window=3, period=0.5, failures=1), clock=FakeClock())
    assert not v.healthy and len(v.probes) == 2


def test_unhealthy_at_window_end_keeps_probing_until_healthy(start_service) -> None:
    svc = start_service()

    def script(p: ProbeResult) -> None:
        if p.at == 1.5:
            svc.set_mode("503")
        elif p.at == 2.5:
            svc.set_mode("healthy")

    v = run_gate(spec(url=svc.url, window=2, period=0.5, failures=3), clock=FakeClock(),
                 on_probe=script)
    assert v.healthy
    assert [p.ok for p in v.probes] == [True, True, True, True, False, False, True]
    assert v.duration == pytest.approx(3.0)


def test_slow_start_within_startup_then_watched_to_window(start_service) -> None:
    port = free_port()
    clock = FakeClock()
    started: list[object] = []

    def boot(p: ProbeResult) -> None:
        if p.at == 1.0 and not started:
            started.append(start_service(port=port))

    v = run_gate(spec(url=f"http://127.0.0.1:{port}/health", window=3, period=0.5, startup=2),
                 clock=clock, on_probe=boot)
    assert v.healthy and not v.probes[0].ok and v.probes[-1].at == 3.0


def test_tcp_probe(start_service) -> None:
    svc = start_service()
    v = run_gate(spec(tcp=f"127.0.0.1:{svc.port}", window=1), clock=FakeClock())
    assert v.healthy and v.target == f"tcp 127.0.0.1:{svc.port}"
    assert v.probes[0].detail.startswith("TCP connect in ")
    v = run_gate(spec(tcp=f"127.0.0.1:{free_port()}", startup=0.5), clock=FakeClock())
    assert not v.healthy and "Connection refused" in v.reason


def test_cmd_probe_exit_code_and_output(tmp_path: Path) -> None:
    assert run_gate(spec(cmd="exit 0", window=1), clock=FakeClock()).healthy
    v = run_gate(spec(cmd="echo starting; echo 'db down' >&2; exit 1", startup=0.5), clock=FakeClock())
    assert not v.healthy and "exit 1: db down" in v.reason
    (tmp_path / "ready").write_text("")
    assert run_gate(spec(cmd="test -f ready", window=0.5), clock=FakeClock(), cwd=tmp_path).healthy


def test_cmd_probe_reasons_are_exact(tmp_path: Path) -> None:
    assert probe_once(spec(cmd="echo starting; echo '  db down  '; exit 3")).detail == "exit 3: db down"
    assert probe_once(spec(cmd="exit 4")).detail == "exit 4"  # nothing printed: the code alone
    assert probe_once(spec(cmd="echo " + "x" * 300 + "; exit 1")).detail == "exit 1: " + "x" * 200
    killed = probe_once(spec(cmd="echo dying; kill -9 $$"))
    assert (killed.ok, killed.detail) == (False, "killed by signal 9: dying")
    ok = probe_once(spec(cmd="exit 0"))
    assert ok.ok and ok.detail.startswith("exit 0 in ") and ok.detail.endswith("ms")


def test_cmd_probe_environment_typed_by_the_operator_and_from_a_pushed_tree(tmp_path: Path, monkeypatch) -> None:
    # A probe the operator configured runs with opskit's environment (minus git's per-hook
    # variables); one from the pushed tree (a sandbox wrapper given) gets only the allowlist.
    monkeypatch.setenv("OPSKIT_PROBE_SECRET", "s3cret")
    monkeypatch.setenv("GIT_DIR", str(tmp_path))
    seen = tmp_path / "env"
    probe = spec(cmd=f"env > {seen}")
    assert probe_once(probe).ok
    mine = seen.read_text()
    assert "OPSKIT_PROBE_SECRET=s3cret" in mine and "GIT_DIR=" not in mine
    wrapped: list[list[str]] = []

    def sandbox(argv: list[str]) -> list[str]:  # stands in for bwrap.probe_wrapper: records, runs as is
        wrapped.append(list(argv))
        return argv

    v = run_gate(spec(cmd=f"env > {seen}", window=0.2), clock=FakeClock(), wrap=sandbox)
    assert v.healthy and wrapped and wrapped[0] == ["/bin/sh", "-c", f"env > {seen}"]
    pushed = seen.read_text()
    assert "OPSKIT_PROBE_SECRET" not in pushed and "GIT_DIR" not in pushed and "PATH=" in pushed

    def no_sandbox(argv: list[str]) -> list[str]:
        raise UsageError("bwrap: not installed; install bubblewrap")

    seen.unlink()
    v = run_gate(spec(cmd=f"env > {seen}", startup=0.2), clock=FakeClock(), wrap=no_sandbox)
    assert not v.healthy and v.probes[0].detail == "bwrap: not installed; install bubblewrap"
    assert not seen.exists()  # it never ran unsandboxed


def test_tcp_probe_that_cannot_connect_in_time(tmp_path: Path) -> None:
    import socket

    # A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        time.sleep(0.2)
        p = probe_once(spec(tcp=f"127.0.0.1:{port}", timeout=0.3))
        assert (p.ok, p.detail) == (False, "timed out after 0.3s")
        p = probe_once(spec(tcp=f"[127.0.0.1]:{free_port()}", timeout=0.3))  # brackets, as for IPv6
        assert (p.ok, p.detail) == (False, "Connection refused")
    finally:
        for c in fillers:
            c.close()
        srv.close()


def test_gate_event_is_the_whole_story_of_its_probes(tmp_path: Path, state_dir: Path) -> None:
    # The journaled health event is what `opskit incident` reads downtime from: every field,
    # the probe log (first and last half of a long gate), and the cmd probe run where and how asked.
    from opskit.deploy.health import PROBE_LOG_MAX

    j = Journal(state_dir, FakeClock())
    (tmp_path / "count").write_text("0\n")
    probe = ('n=$(cat count); echo $((n+1)) > count; '
             'if [ "$n" -lt 2 ]; then echo "warming up $n"; exit 1; fi')
    runs: list[list[str]] = []

    def sandbox(argv: list[str]) -> list[str]:
        runs.append(argv)
        return argv

    period = 0.01
    window = period * (PROBE_LOG_MAX + 9)
    v = gate(spec(cmd=probe, window=window, period=period, failures=3, startup=1.0, timeout=5), journal=j,
             service="web", chain="c1", sha="abc123", clock=FakeClock(), cwd=tmp_path, wrap=sandbox,
             sandbox="bwrap")
    assert v.healthy, v.reason
    assert len(runs) == len(v.probes) > PROBE_LOG_MAX  # every probe went through the sandbox wrapper
    [ev] = j.query(type_prefix="health.")
    d = ev.data
    assert (ev.type, ev.service, ev.chain, ev.sha, v.event_id) == ("health.pass", "web", "c1", "abc123", ev.id)
    assert (d["probes"], d["failed_probes"], d["sandbox"]) == (len(v.probes), 2, "bwrap")
    assert (d["window"], d["period"], d["failures"], d["startup"], d["timeout"]) == (window, period, 3, 1.0, 5)
    assert d["target"] == f"cmd: {probe}" and d["reason"] == v.reason and d["duration"] == round(v.duration, 3)
    kept = v.probes[:PROBE_LOG_MAX // 2] + v.probes[-PROBE_LOG_MAX // 2:]
    assert d["probe_log"] == [[round(p.at, 3), p.ok, p.detail] for p in kept]
    assert d["probe_log"][0][1:] == [False, "exit 1: warming up 0"]
    assert d["probe_log"][1][1:] == [False, "exit 1: warming up 1"]
    doc = v.to_dict()
    assert set(doc) == {"healthy", "reason", "target", "duration", "event_id", "probes"}
    assert (doc["target"], doc["duration"], doc["event_id"]) == (v.target, round(v.duration, 3), ev.id)
    first = doc["probes"][0]
    assert first == {"at": round(v.probes[0].at, 3), "ok": False, "detail": "exit 1: warming up 0", "status": None,
                     "elapsed": round(v.probes[0].elapsed, 3)}


def test_hanging_cmd_is_killed_at_timeout(tmp_path: Path) -> None:
    from tests.support.procs import gone

    pid = tmp_path / "probe.pid"
    p = probe_once(spec(cmd=f"echo $$ > {pid}; sleep 60", timeout=0.3))
    assert not p.ok and p.detail == "timed out after 0.3s"
    assert gone(int(pid.read_text()))  # killed, not left running after the verdict


def test_fail_fast_in_real_time(start_service) -> None:
    """Real clock: a gate with a 60 s window returns as soon as the rule is met."""
    svc = start_service("die-after=0.6")
    v = run_gate(spec(url=svc.url, window=60, period=0.2, failures=3, timeout=0.5))
    # it stopped at the third failure in a row: a gate that waited for its window would
    # have gone on probing (and failing) for a minute
    assert not v.healthy and trailing_failures(v.probes) == 3 and v.probes[0].ok
    assert all(p.ok for p in v.probes[:-3]) and "3 consecutive" in v.reason
    v = run_gate(spec(url=refused_url(), window=60, startup=0.5, period=0.2))
    # ended when startup did (the probe that found it past 0.5 s), not by the 60 s window
    assert not v.healthy and "refused" in v.reason and not any(p.ok for p in v.probes)
    assert v.probes[-1].at >= 0.5 and all(p.at < 0.5 for p in v.probes[:-1])


# --- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, needle", [
    (HealthSettings(), "no health probe"),
    (HealthSettings(url="http://127.0.0.1:1/", tcp="127.0.0.1:1"), "url and tcp"),
    (HealthSettings(url="ftp://x/"), "bad health url"),
    (HealthSettings(url="http://127.0.0.1:70000/h"), "out of range"),
    (HealthSettings(tcp="localhost"), "bad tcp target"),
    (HealthSettings(tcp="127.0.0.1:0"), "out of range"),
    (HealthSettings(url="http://h/", window=0), "--window"),
    (HealthSettings(url="http://h/", period=-1), "--period"),
    (HealthSettings(url="http://h/", timeout=float("nan")), "--timeout"),
    (HealthSettings(url="http://h/", failures=0), "--failures"),
    (HealthSettings(url="http://h/", expect_body="("), "--expect-body"),
])
def test_validate_rejects(bad: HealthSettings, needle: str) -> None:
    with pytest.raises(UsageError) as e:
        validate(bad)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_parse_expect_status() -> None:
    assert parse_expect_status("200,204") == (200, 204)
    assert parse_expect_status("200-202, 301") == (200, 201, 202, 301)
    assert parse_expect_status("100") == (100,) and parse_expect_status("599") == (599,)  # the edges
    assert parse_expect_status("598-599") == (598, 599)
    shape = "is not a status or range; use e.g. 200,204 or 200-299"
    span = "is not within 100-599 (low-high); use e.g. 200-299"
    for bad, why in (("2xx", shape), ("200,", shape), ("ok", shape), ("99", shape), ("300-200", span),
                     ("099", span), ("600", span), ("599-600", span)):
        with pytest.raises(UsageError) as e:
            parse_expect_status(bad)
        assert e.value.message == f"--expect-status: {bad.split(',')[-1]!r} {why}", bad


# --- journaling ------------------------------------------------------------------------------

def test_gate_journals_pass_and_fail(state_dir: Path, start_service) -> None:
    j = Journal(state_dir, FakeClock())
    svc = start_service()
    v = gate(spec(url=svc.url, window=1), journal=j, service="web", chain="c1", sha="abc123",
             clock=FakeClock())
    assert v.healthy and v.event_id is not None
    ev = j.get(v.event_id)
    assert ev is not None and ev.type == "health.pass" and ev.service == "web"
    assert ev.chain == "c1" and ev.sha == "abc123"
    assert ev.data["target"] == f"GET {svc.url}" and ev.data["probes"] == 3
    assert ev.data["window"] == 1 and ev.data["failures"] == 3 and ev.data["startup"] == 3
    v = gate(spec(url=refused_url(), startup=1), journal=j, service="web", clock=FakeClock())
    ev = j.get(v.event_id or -1)
    assert ev is not None and ev.type == "health.fail" and "refused" in ev.data["reason"]


def test_interrupted_gate_journals_nothing(state_dir: Path, start_service) -> None:
    j = Journal(state_dir, FakeClock())
    svc = start_service()

    def interrupt(p: ProbeResult) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gate(spec(url=svc.url), journal=j, service="web", clock=FakeClock(), on_probe=interrupt)
    assert j.query(type_prefix="health") == []


# --- the command, in real time (issue 2 done-when) ---------------------------------------------

def journal_types(state_dir: Path) -> list[str]:
    if not (state_dir / "journal.db").exists():
        return []
    return [e.type for e in Journal(state_dir).query(type_prefix="health")]


def test_cli_refused_exits_1_in_about_startup(opskit, state_dir: Path) -> None:
    r = opskit("health-gate", "--url", refused_url(), "--startup", "3", "--period", "0.5", "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    # refused for the whole startup grace, on the gate's own clock: it gave up once startup ended
    assert out["healthy"] is False and "refused" in out["reason"]
    assert [p["ok"] for p in out["probes"]] == [False] * len(out["probes"]) and out["probes"][-1]["at"] >= 3.0
    assert out["probes"][-2]["at"] < 3.0  # and not later
    assert journal_types(state_dir) == ["health.fail"]


def test_cli_healthy_window_exits_0_after_about_window(opskit, start_service, state_dir: Path) -> None:
    svc = start_service()
    r = opskit("health-gate", "--url", svc.url, "--window", "2", "--period", "0.5", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    # healthy only once the whole window was watched (the gate's own clock), every probe ok
    assert out["healthy"] is True and all(p["ok"] for p in out["probes"])
    assert out["probes"][-1]["at"] >= 2.0 and len(out["probes"]) >= 4
    assert journal_types(state_dir) == ["health.pass"]


def test_cli_dying_server_fails_after_exactly_failures_json(start_service) -> None:
    svc = start_service()
    p = subprocess.Popen([sys.executable, "-m", "opskit", "health-gate", "--url", svc.url,
                          "--window", "20", "--period", "0.2", "--failures", "3", "--timeout", "1",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: "GET /health -> 200" in svc.log())  # healthy in the gate's eyes first
    svc.set_mode("die-after=0.3")  # then the process dies
    stdout, stderr = p.communicate(timeout=30)
    r = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    assert r.returncode == 1, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) == {"healthy", "reason", "target", "duration", "event_id", "probes"}
    assert out["healthy"] is False and isinstance(out["event_id"], int)
    assert set(out["probes"][0]) == {"at", "ok", "detail", "status", "elapsed"}
    oks = [probe["ok"] for probe in out["probes"]]
    assert oks[0] and oks[-3:] == [False, False, False] and oks[-4] is True
    assert "3 consecutive" in out["reason"]


def test_cli_takes_service_health_from_config_and_flags_override(
        opskit, write_config, start_service, state_dir: Path) -> None:
    svc = start_service("503")
    cfg = write_config(
        f'[service.web]\nrepo = "/srv/git/web.git"\nworktree = "/nonexistent/web"\n'
        f'[service.web.health]\nurl = "{svc.url}"\nwindow = 0.5\nperiod = 0.25\nstartup = 0.5\n'
        f'[service.bare]\nrepo = "/r"\nworktree = "/w"\n'
    )
    r = opskit("--config", str(cfg), "health-gate", "web", "--json")
    assert r.returncode == 1 and "HTTP 503" in json.loads(r.stdout)["reason"]
    r = opskit("--config", str(cfg), "health-gate", "web", "--expect-status", "500-503", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    events = Journal(state_dir).query(type_prefix="health")
    assert [(e.type, e.service) for e in events] == [("health.fail", "web"), ("health.pass", "web")]
    r = opskit("--config", str(cfg), "health-gate", "bare")
    assert r.returncode == 2 and "has no health probe" in r.stderr
    r = opskit("--config", str(cfg), "health-gate", "nope")
    assert r.returncode == 2 and "unknown service 'nope'" in r.stderr


@pytest.mark.parametrize("args, needle", [
    (["--url", "not-a-url"], "bad health url"),
    (["--url", "http://127.0.0.1:99999/h"], "out of range"),
    (["--tcp", "127.0.0.1"], "host:port"),
    (["--url", "http://127.0.0.1:9/h", "--window", "0"], "--window must be greater than 0"),
    (["--url", "http://127.0.0.1:9/h", "--period", "-1"], "--period"),
    (["--url", "http://127.0.0.1:9/h", "--timeout", "soon"], "not a duration"),
    (["--url", "http://127.0.0.1:9/h", "--failures", "0"], "--failures"),
    (["--url", "http://127.0.0.1:9/h", "--expect-status", "2xx"], "--expect-status"),
    (["--url", "http://127.0.0.1:9/h", "--expect-status", "700"], "--expect-status"),
    (["--url", "http://127.0.0.1:9/h", "--cmd", "true"], "keep exactly one"),
    ([], "no health probe"),
])
def test_cli_bad_args_exit_2_one_line_nothing_journaled(opskit, state_dir: Path, args: list[str],
                                                         needle: str) -> None:
    r = opskit("health-gate", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert journal_types(state_dir) == []


def test_cli_ctrl_c_exits_130_and_journals_nothing(state_dir: Path, start_service) -> None:
    svc = start_service("hang")
    p = subprocess.Popen([sys.executable, "-m", "opskit", "health-gate", "--url", svc.url,
                          "--startup", "30", "--timeout", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         # A shell that started us in the background ignores SIGINT, and the
                         # child would inherit that: give it the terminal's default back.
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: "hanging" in svc.log())  # the gate is mid-probe
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=10)
    # typer turns KeyboardInterrupt into Exit(130) itself (typer/core.py), so no message here.
    assert p.returncode == 130
    assert journal_types(state_dir) == []


def test_override_a_new_probe_kind_replaces_the_configured_one() -> None:
    from opskit.deploy.health import override

    base = spec(url="http://127.0.0.1:1/health", window=5)
    assert (override(base, tcp="127.0.0.1:2").url, override(base, tcp="127.0.0.1:2").tcp) == (None, "127.0.0.1:2")
    assert override(spec(tcp="127.0.0.1:2"), cmd="true").tcp is None
    swapped = override(spec(cmd="true"), url="http://127.0.0.1:3/")
    assert (swapped.cmd, swapped.url, swapped.window) == (None, "http://127.0.0.1:3/", 2.0)
    same = override(base, window=9, url=None)  # None means "not given": the configured probe stays
    assert (same.url, same.window) == ("http://127.0.0.1:1/health", 9)


def test_refused_reads_the_same_for_http_and_tcp() -> None:
    # "refused" is what an operator greps a 03:55 log for: exactly these words, both probes
    assert probe_once(spec(url=refused_url())).detail == "Connection refused"
    assert probe_once(spec(tcp=f"127.0.0.1:{free_port()}")).detail == "Connection refused"
