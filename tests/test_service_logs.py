"""The service's own log in every failure: `[service.X] logs`, journalctl's default, bounds
(deploy/service_logs.py). A real service on 127.0.0.1 whose broken version prints its reason
to its log file and dies; the reason reaches the message, the events, the pusher, `incident`
and `--markdown`, and the webhook URL in the log reaches none of them."""

from __future__ import annotations

import json
import shlex
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import config, proc
from opskit.base.config import ServiceSettings
from opskit.base.errors import ConfigError
from opskit.deploy import service_logs
from opskit.standins.service import kill_pid
from opskit.wiring import hooks
from tests.conftest import RunOpskit
from tests.support.pipeline import Stage, env_for, make_stage

REASON = "ImportError: no module named humanrail"
SECRET = "tok-ops-Zq8xK2mVn4Lp7RtY"  # the token part of the stage's Discord webhook URL

# The app reads service.mode in its worktree: "broken" prints a line with the webhook URL (a
# secret it was given) and its reason to stderr, then dies, as a real app with a missing module does.
APP = textwrap.dedent('''\
    import http.server, pathlib, sys
    if pathlib.Path("service.mode").read_text().strip() == "broken":
        print("starting with webhook " + sys.argv[2], file=sys.stderr, flush=True)
        raise ImportError("no module named humanrail")
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    ''')


def _app_stage(tmp: Path, *, logs: str | None = "tail -n 50 app.log") -> Stage:
    """A hooked stage whose deploy starts APP (backgrounded, its output to app.log in the
    worktree); the first commit is live and recorded healthy."""
    run = tmp / "app"
    run.mkdir(parents=True)
    script = run / "deploy.sh"
    extra = {"drift_ignore": ["app.log", "app.pid"], **({"logs": logs} if logs else {})}
    st = make_stage(tmp / "t", deploy=f"sh {shlex.quote(str(script))}", health={"startup": 1.5, "window": 0.6},
                    extra=extra)
    (run / "app.py").write_text(APP)
    url = st.receiver.url("discord") if st.receiver else ""
    script.write_text(textwrap.dedent(f"""\
        [ -f app.pid ] && kill "$(cat app.pid)" 2>/dev/null && sleep 0.3
        python3 {shlex.quote(str(run / "app.py"))} {st.port} {shlex.quote(url)} >> app.log 2>&1 < /dev/null &
        echo $! > app.pid
        """))
    proc.run(["sh", str(script)], cwd=st.sb.worktree, check=True, timeout=30)
    j = st.journal()
    j.deploy_finish(j.deploy_start(st.service, st.sb.tip(), previous=None, chain="seed"), "healthy")
    hooks.install(st.settings, st.settings.service(st.service))
    return st


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Stage]:
    st = _app_stage(tmp_path)
    try:
        yield st
    finally:
        _stop_app(st)
        st.close()


def _stop_app(st: Stage) -> None:
    pidfile = st.sb.worktree / "app.pid"
    if pidfile.exists() and pidfile.read_text().strip():
        kill_pid(int(pidfile.read_text().strip()))


def test_the_services_own_reason_reaches_pusher_events_message_and_incident(app: Stage, opskit: RunOpskit) -> None:
    st = app
    st.sb.commit({"service.mode": "broken\n"}, "use humanrail")
    push = st.sb.push(st.sb.branch, check=False)
    remote = [ln for ln in push.stderr.splitlines() if ln.startswith("remote:")]
    text = "\n".join(remote)
    # The pusher: the reason among the last lines of the service's log, and no secret.
    assert any(REASON in ln and "log|" in ln for ln in remote), text
    assert SECRET not in push.stderr + push.stdout
    logged = [ln for ln in remote if "log|" in ln]
    assert 0 < len(logged) <= service_logs.PUSHER_LINES * 2, text  # the bad deploy's, and no more

    # The events: health.fail carries the lines, masked.
    fails = [e for e in st.journal().query(service=st.service) if e.type == "health.fail"]
    assert fails and any(REASON in ln for ln in fails[0].data["logs"]), fails[0].data
    assert SECRET not in json.dumps([e.data for e in st.journal().query(service=st.service)])

    # The Discord stand-in: the auto-revert message quotes the reason, not the URL.
    assert st.receiver is not None
    msgs = st.receiver.wait_for(1, timeout=10)
    bodies = [json.dumps(m.body) for m in msgs]
    revert_msg = [b for b in bodies if "reverted automatically" in b]
    assert revert_msg and REASON in revert_msg[0], bodies
    assert not any(SECRET in b for b in bodies)

    # `opskit incident` and --markdown: every line, masked.
    env = env_for(st)
    inc = opskit("incident", "last", "--service", st.service, env=env)
    assert inc.returncode == 0, inc.stderr
    assert REASON in inc.stdout and "service log at health.fail" in inc.stdout, inc.stdout
    assert "starting with webhook" in inc.stdout and SECRET not in inc.stdout
    md = opskit("incident", "last", "--service", st.service, "--markdown", env=env)
    assert md.returncode == 0, md.stderr
    assert "## The service's log" in md.stdout and REASON in md.stdout and SECRET not in md.stdout
    js = opskit("incident", "last", "--service", st.service, "--json", env=env)
    assert REASON in json.dumps(json.loads(js.stdout)["logs"]) and SECRET not in js.stdout


def test_a_failed_deploy_command_carries_the_log_and_a_broken_logs_command_changes_nothing(tmp_path: Path) -> None:
    # The deploy command itself fails: deploy.fail has the service's log.
    st = make_stage(tmp_path / "a", deploy="echo 'KeyError: DATABASE_URL' >> app.log; exit 3",
                    extra={"logs": "tail -n 5 app.log", "drift_ignore": ["app.log"]})
    try:
        r = st.deploy()
        assert not r.ok
        fail = next(e for e in st.journal().query(service=st.service) if e.type == "deploy.fail")
        assert fail.data["logs"] == ["KeyError: DATABASE_URL"], fail.data
    finally:
        st.close()


@pytest.mark.parametrize("logs,note", [("exit 7", "exit 7"), ("true", "printed nothing"),
                                       ("sleep 30", "timed out after 0.5s")])
def test_a_logs_command_that_fails_hangs_or_is_silent_is_one_line_and_never_the_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: str, note: str) -> None:
    monkeypatch.setattr(service_logs, "TIMEOUT", 0.5)
    st = make_stage(tmp_path, extra={"logs": logs})
    try:
        good = st.deploy()
        assert good.ok, good
        st.good("crash", message="bad")
        lines: list[str] = []
        t0 = time.monotonic()
        r = st.deploy(lines=lines)
        assert r.status == "reverted", (r, lines)  # the revert went on
        assert time.monotonic() - t0 < 25
        fail = next(e for e in st.journal().query(service=st.service) if e.type == "health.fail")
        assert fail.data["logs"] == [] and note in fail.data["logs_note"], fail.data
        assert sum(1 for ln in lines if note in ln) >= 1, lines
    finally:
        st.close()


# --- where the log comes from ----------------------------------------------------------------

def _svc(deploy: str | None, logs: str | None = None) -> ServiceSettings:
    return ServiceSettings(name="app", repo="/srv/git/app.git", worktree=Path("/srv/app"), deploy=deploy, logs=logs)


def _found(name: str) -> str | None:
    return f"/usr/bin/{name}"


def test_journalctl_is_the_default_for_a_systemctl_deploy() -> None:
    for deploy, unit in (("sudo systemctl restart app", "app"), ("systemctl reload app.service", "app.service"),
                         ("sudo -n systemctl restart app", "app")):
        src = service_logs.source(_svc(deploy), 1700000000, which=_found)
        assert src.argv == ["/usr/bin/journalctl", "-u", unit, "--since", "@1700000000", "-n", "200",
                            "--no-pager"], (deploy, src)
    for other in ("./restart.sh", "systemctl status app", "sudo systemctl restart", "sudo systemctl restart a b",
                  "docker compose up -d", None):
        assert service_logs.source(_svc(other), 1, which=_found).argv is None, other
    # `logs` wins over the default.
    assert service_logs.source(_svc("systemctl restart app", "cat x.log"), 1, which=_found).argv == \
        ["/bin/sh", "-c", "cat x.log"]


def test_a_missing_journalctl_means_no_logs_not_a_failure(tmp_path: Path) -> None:
    cap = service_logs.capture(_svc("sudo systemctl restart app"), 1, which=lambda _n: None)
    assert cap.lines == [] and cap.note is not None and "no logs" in cap.note and "journalctl" in cap.note
    assert cap.data() == {"logs": [], "logs_note": cap.note}


def test_a_hanging_logs_command_is_cut_at_its_bound_with_its_group(tmp_path: Path) -> None:
    marker = tmp_path / "child-ran-on"
    svc = ServiceSettings(name="app", repo=str(tmp_path), worktree=tmp_path,
                          logs=f"echo first; (sleep 3; touch {marker}) & sleep 30")
    t0 = time.monotonic()
    cap = service_logs.capture(svc, 1, timeout=0.5)
    assert time.monotonic() - t0 < 4
    assert cap.lines == ["first"] and cap.note and "timed out after 0.5s" in cap.note
    time.sleep(3.2)
    assert not marker.exists()  # its process group went with it
    assert service_logs.TIMEOUT == 5.0


def test_the_bounds_escaping_and_env(tmp_path: Path) -> None:
    svc = ServiceSettings(name="app", repo=str(tmp_path), worktree=tmp_path,
                          logs="echo \"$OPSKIT_SERVICE $OPSKIT_SINCE $(pwd)\"; printf 'bell\\033[31m\\n'; seq 1 500")
    cap = service_logs.capture(svc, 1234.9)
    assert len(cap.lines) == service_logs.MAX_LINES and cap.lines[-1] == "500"
    svc2 = ServiceSettings(name="app", repo=str(tmp_path), worktree=tmp_path,
                           logs="echo \"$OPSKIT_SERVICE $OPSKIT_SINCE $(pwd)\"; printf 'bell\\033[31m\\n'")
    cap2 = service_logs.capture(svc2, 1234.9)
    assert cap2.lines == [f"app 1234 {tmp_path}", "bell\\x1b[31m"], cap2.lines
    big = ServiceSettings(name="app", repo=str(tmp_path), worktree=tmp_path,
                          logs="python3 -c \"print(('x' * 1000 + chr(10)) * 150, end='')\"")
    lines = service_logs.capture(big, 1).lines
    assert sum(len(ln) + 1 for ln in lines) <= service_logs.MAX_BYTES and len(lines) >= 30


def test_logs_is_a_validated_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(f'[service.app]\nrepo = "{tmp_path}/r.git"\nworktree = "{tmp_path}/wt"\nlogs = 5\n')
    with pytest.raises(ConfigError, match="logs"):
        config.load(cfg)
    cfg.write_text(f'[service.app]\nrepo = "{tmp_path}/r.git"\nworktree = "{tmp_path}/wt"\nlogs = "tail app.log"\n')
    assert config.load(cfg).service("app").logs == "tail app.log"


def test_doctor_says_when_a_service_has_no_log_source(tmp_path: Path) -> None:
    from opskit.views import doctor

    none = doctor._logs(_svc("./restart.sh"))
    assert not none.ok and "no log source" in none.detail and "logs =" in none.fix
    assert doctor._logs(_svc("./restart.sh", "tail app.log")).ok


def test_the_freeze_message_and_rollback_fail_carry_the_re_gates_log(tmp_path: Path) -> None:
    st = make_stage(tmp_path, deploy="if [ -e {outage} ]; then echo 'redeploy failed' >&2; exit 1; fi; {restart}",
                    extra={"logs": f"cat {shlex.quote(str(tmp_path / 'app.log'))}"})
    try:
        assert st.receiver is not None
        (tmp_path / "app.log").write_text(f"PermissionError: /var/lib/app {st.receiver.url('discord')}\n")
        assert st.deploy().ok
        st.good("crash", message="bad")
        st.outage_flag.write_text("1")  # the redeploy of the revert fails too: frozen
        r = st.deploy()
        assert r.status == "failed", r
        fail = next(e for e in st.journal().query(service=st.service) if e.type == "rollback.fail")
        assert [ln for ln in fail.data["logs"] if "PermissionError" in ln and SECRET not in ln], fail.data
        bodies = [json.dumps(m.body) for m in st.receiver.wait_for(1, timeout=10)]
        frozen = [b for b in bodies if "FROZEN" in b]
        assert frozen and "PermissionError: /var/lib/app" in frozen[0] and not any(SECRET in b for b in bodies), bodies
    finally:
        st.close()


def test_the_message_block_keeps_the_last_line_within_discords_limit_beside_a_full_head() -> None:
    """The block comes last and Discord keeps a message's head: a 14-line traceback of ~100
    characters a line beside an ~800-character head must still end with its last line (the
    cause) inside 2000 characters."""
    lines = [f'  File "/srv/app/mod{i}.py", line {i}, in handler — ' + "x" * 50 for i in range(13)]
    lines.append("ModuleNotFoundError: No module named 'humanrail'")
    block = service_logs.message_block(lines)
    head = "primerouter: auto-reverted 4d62098a: " + "r" * 760 + "\n\n"
    assert len(head) + len(block) <= 2000, len(head) + len(block)
    assert block.rstrip("`\n ").endswith("No module named 'humanrail'"), block[-200:]
