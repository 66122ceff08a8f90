"""The controllable test service behaves like a real process in every mode."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from opskit.base import proc
from opskit.standins import free_port
from opskit.standins.service import deploy_command, parse_mode, wait_listening
from tests.support.health import pidfiles_fixture, start_service_fixture  # noqa: F401  (fixtures)


def get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_healthy_answers_ok_on_any_path_and_logs_each_request(start_service) -> None:
    svc = start_service()
    assert get(svc.url) == (200, "ok")
    assert get(f"http://127.0.0.1:{svc.port}/anything?x=1") == (200, "ok")
    log = svc.log()
    assert "GET /health -> 200 mode=healthy" in log and "GET /anything?x=1 -> 200" in log


def test_crash_never_listens(start_service) -> None:
    port = free_port()
    svc = start_service("crash", port=port)
    assert not svc.alive() and svc.proc.returncode == 1
    assert refused(port)


def test_503_and_status_and_body_modes(start_service) -> None:
    svc = start_service("503")
    assert get(svc.url)[0] == 503
    svc.set_mode("status=500")
    assert get(svc.url)[0] == 500
    svc.set_mode("body=hello world")
    assert get(svc.url) == (200, "hello world")


def test_hang_accepts_but_never_answers_until_switched(start_service) -> None:
    svc = start_service("hang")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(svc.url, timeout=0.4)
    svc.set_mode("healthy")  # control still works while requests hang
    assert get(svc.url) == (200, "ok")


def test_slow_answers_after_the_delay(start_service) -> None:
    svc = start_service("slow=2")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(svc.url, timeout=0.3)  # no answer before the delay
    assert get(svc.url, timeout=10) == (200, "ok")


def test_die_after_is_healthy_then_the_process_exits(start_service) -> None:
    svc = start_service("die-after=0.5")
    assert get(svc.url) == (200, "ok")
    svc.proc.wait(timeout=5)
    assert refused(svc.port)
    assert "die-after: exiting" in svc.log()


def test_flap_alternates_starting_healthy(start_service) -> None:
    svc = start_service("flap")
    assert [get(svc.url)[0] for _ in range(5)] == [200, 503, 200, 503, 200]


def test_mode_file_is_read_at_start(start_service, tmp_path: Path) -> None:
    mf = tmp_path / "service.mode"
    assert get(start_service(mode_file=mf).url)[0] == 200  # missing file: the given mode
    mf.write_text("\n503\n")
    assert get(start_service(mode_file=mf).url)[0] == 503
    mf.write_text("crash\n")
    port = free_port()
    svc = start_service(port=port, mode_file=mf)
    assert not svc.alive() and refused(port)


def test_control_exit_and_bad_mode(start_service) -> None:
    svc = start_service()
    req = urllib.request.Request(f"http://127.0.0.1:{svc.port}/_control", data=b'{"mode": "wobble"}',
                                 method="POST")
    assert pytest.raises(urllib.error.HTTPError, urllib.request.urlopen, req, timeout=3).value.code == 400
    assert get(f"http://127.0.0.1:{svc.port}/_control") == (200, '{"mode": "healthy"}')
    svc.set_mode("exit")
    assert svc.proc.returncode == 0 and refused(svc.port)


def test_parse_mode_rejects_unknown() -> None:
    assert str(parse_mode("slow=1.5")) == "slow=1.5"
    for bad in ("sick", "slow=x", "status=42", "die-after=-1"):
        with pytest.raises(ValueError):
            parse_mode(bad)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # Reparented to an init that does not reap: a zombie holds no port.
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def _svc_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit.standins.service", *args], cwd=cwd,
                          check=False, capture_output=True, text=True, timeout=30)


def _pid(pidfile: Path) -> int:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            return int(pidfile.read_text())
        time.sleep(0.02)
    raise AssertionError("no pidfile")


def test_restart_detaches_replaces_and_reuses_the_port(tmp_path: Path, pidfiles) -> None:
    port, pidfile, log = free_port(), tmp_path / "svc.pid", tmp_path / "svc.log"
    pidfiles.append(pidfile)
    r = _svc_cli("restart", "--port", str(port), "--pidfile", str(pidfile), "--log", str(log),
                 "--wait", "5")
    assert r.returncode == 0, r.stderr
    first = _pid(pidfile)
    assert get(f"http://127.0.0.1:{port}/health") == (200, "ok")
    # The same port at once, old process gone (SO_REUSEADDR after real connections).
    r = _svc_cli("restart", "--port", str(port), "--pidfile", str(pidfile), "--log", str(log),
                 "--mode", "503", "--wait", "5")
    assert r.returncode == 0, r.stderr
    second = _pid(pidfile)
    assert second != first and gone(first)
    assert get(f"http://127.0.0.1:{port}/health")[0] == 503
    assert "listening on" in log.read_text()
    r = _svc_cli("stop", "--pidfile", str(pidfile))
    assert r.returncode == 0 and f"stopped pid {second}" in r.stdout
    assert refused(port) and not pidfile.exists()


def test_restart_returns_0_even_when_the_new_process_crashes(tmp_path: Path, pidfiles) -> None:
    """Like `systemctl restart`: the deploy command succeeds; the gate must catch it."""
    work = tmp_path / "worktree"
    work.mkdir()
    (work / "service.mode").write_text("crash\n")
    port, pidfile, log = free_port(), tmp_path / "svc.pid", tmp_path / "svc.log"
    pidfiles.append(pidfile)
    # Run exactly as a deploy would: the user's shell string, in the worktree, output captured.
    res = proc.run(proc.shell_argv(deploy_command(port, pidfile, log)), cwd=work, timeout=20)
    assert res.ok, res.describe()
    deadline = time.monotonic() + 20  # the detached process logs, then exits, on its own time
    while "mode=crash: exiting at start" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    assert refused(port)
    (work / "service.mode").write_text("healthy\n")
    assert proc.run(proc.shell_argv(deploy_command(port, pidfile, log)), cwd=work, timeout=20).ok
    assert wait_listening(port, 5) and get(f"http://127.0.0.1:{port}/health") == (200, "ok")


def test_stale_pidfile_never_kills_a_stranger(tmp_path: Path, pidfiles) -> None:
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pidfile = tmp_path / "svc.pid"
        pidfiles.append(pidfile)
        pidfile.write_text(f"{stranger.pid}\n")
        port = free_port()
        r = _svc_cli("restart", "--port", str(port), "--pidfile", str(pidfile),
                     "--log", str(tmp_path / "log"), "--wait", "5")
        assert r.returncode == 0
        assert stranger.poll() is None  # still running
        assert _pid(pidfile) != stranger.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_service_process_picks_a_free_port_and_stops(start_service) -> None:
    a, b = start_service(), start_service()
    assert a.port != b.port and a.port > 0
    a.stop()
    assert not a.alive() and refused(a.port)
    a.stop()  # idempotent
