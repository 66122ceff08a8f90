"""A controllable HTTP service: the stand-in for a production service in tests, the demo and bench/.

Standard library only (http.server + threading), so it starts in tens of milliseconds and
behaves like a real process: it can refuse to start, answer 503, hang, answer slowly, die
after a while or flap. A deploy calls `restart` the way it would call `systemctl restart`:
the old process is stopped, a new one is started fully detached, and the command returns 0
at once even if the new process then crashes — judging it is the gate's job.

    python -m opskit.standins.service serve --port P [--mode M] [--mode-file F] [--pidfile F]
    python -m opskit.standins.service restart --port P --pidfile F --log F [--mode-file F] [--wait S]
    python -m opskit.standins.service stop --pidfile F

Modes: healthy, crash, 503, status=N, hang, slow=S, die-after=S, flap, body=TEXT,
redirect=URL (302 to URL).
Runtime control: POST /_control {"mode": "..."} ({"mode": "exit"} ends the process);
GET /_control shows the current mode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from opskit.base.proc import pid_alive  # stdlib-only, like this module

HOST = "127.0.0.1"
DEFAULT_BODY = "ok"
# Only processes whose command line carries this are ever signalled from a pidfile: a stale
# pidfile whose pid was reused by something else must not get that process killed.
_MARKER = "opskit.standins.service"


# --- modes ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    kind: str  # healthy | crash | status | hang | slow | die-after | flap | body | redirect | exit
    seconds: float = 0.0
    status: int = 200
    body: str = DEFAULT_BODY

    def __str__(self) -> str:
        if self.kind in ("slow", "die-after"):
            return f"{self.kind}={self.seconds:g}"
        if self.kind == "status":
            return "503" if self.status == 503 else f"status={self.status}"
        if self.kind in ("body", "redirect"):
            return f"{self.kind}={self.body}"
        return self.kind


def parse_mode(text: str) -> Mode:
    """A mode from its text form; ValueError naming the problem otherwise."""
    text = text.strip()
    name, sep, arg = text.partition("=")
    if not sep:
        if text in ("healthy", "crash", "hang", "flap", "exit"):
            return Mode(text)
        if text == "503":
            return Mode("status", status=503, body="unavailable")
    elif name in ("slow", "die-after"):
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"mode {text!r}: {arg!r} is not a number of seconds") from None
        if not seconds >= 0:
            raise ValueError(f"mode {text!r}: seconds must be 0 or more")
        return Mode(name, seconds=seconds)
    elif name == "status":
        if not arg.isdigit() or not 100 <= int(arg) <= 599:
            raise ValueError(f"mode {text!r}: {arg!r} is not an HTTP status")
        return Mode("status", status=int(arg), body=f"status {arg}")
    elif name in ("body", "redirect"):
        return Mode(name, body=arg)
    raise ValueError(
        f"unknown mode {text!r}; use healthy, crash, 503, status=N, hang, slow=S, die-after=S, "
        "flap, body=TEXT or redirect=URL"
    )


def read_mode_file(path: Path, default: str = "healthy") -> str:
    """The first non-empty line of a mode file; `default` when it is missing or empty."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return default
    return next((ln.strip() for ln in lines if ln.strip()), default)


# --- the server -------------------------------------------------------------------------------

def _log(line: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    sys.stderr.write(f"{stamp} [{os.getpid()}] {line}\n")
    sys.stderr.flush()


class _State:
    """The current mode, shared by all request threads."""

    def __init__(self, mode: Mode, pidfile: Path | None) -> None:
        self.cond = threading.Condition()
        self.mode = mode
        self.requests = 0
        self.pidfile = pidfile
        self._timer: threading.Timer | None = None

    def set(self, mode: Mode) -> None:
        with self.cond:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.mode = mode
            self.requests = 0
            if mode.kind == "die-after":
                self._timer = threading.Timer(mode.seconds, self.exit, args=(0, "die-after: exiting"))
                self._timer.daemon = True
                self._timer.start()
            # Wake requests parked by `hang` so they answer per the new mode.
            self.cond.notify_all()

    def exit(self, code: int, why: str) -> None:
        _log(why)
        if self.pidfile is not None:
            _remove_own_pidfile(self.pidfile)
        # os._exit: hung request threads must not keep a dying service alive.
        os._exit(code)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: every probe is a new connect

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # we log one line of our own per request

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.split("?")[0] == "/_control":
            self._send(200, json.dumps({"mode": str(self.server.state.mode)}), "application/json")
            return
        self._answer()

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?")[0] != "/_control":
            self._answer()
            return
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            wanted = json.loads(raw or b"{}").get("mode")
            if not isinstance(wanted, str):
                raise ValueError('body must be {"mode": "..."}')
            mode = parse_mode(wanted)
        except (ValueError, AttributeError) as e:
            self._send(400, json.dumps({"error": str(e)}), "application/json")
            return
        if mode.kind not in ("exit", "crash"):
            # Switched before answering: a request sent after this answer sees the new mode.
            state.set(mode)
        self._send(200, json.dumps({"mode": str(mode)}), "application/json", mode=mode)
        if mode.kind in ("exit", "crash"):
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            state.exit(0 if mode.kind == "exit" else 1, f"control: {mode}: exiting")

    def _answer(self) -> None:
        state = self.server.state
        with state.cond:
            state.requests += 1
            n = state.requests
            mode = state.mode
            if mode.kind == "hang":
                self._note("hanging (accepted, not answering)", mode)
                while state.mode.kind == "hang":
                    state.cond.wait()
                mode = state.mode
        if mode.kind == "slow":
            time.sleep(mode.seconds)
        if mode.kind == "status":
            self._send(mode.status, mode.body, mode=mode)
        elif mode.kind == "flap" and n % 2 == 0:  # healthy first, then every other request
            self._send(503, "unavailable", mode=mode)
        elif mode.kind == "body":
            self._send(200, mode.body, mode=mode)
        elif mode.kind == "redirect":
            self._send(302, "moved", mode=mode, location=mode.body)
        else:
            self._send(200, DEFAULT_BODY, mode=mode)

    def _send(self, status: int, body: str, ctype: str = "text/plain; charset=utf-8",
              mode: Mode | None = None, location: str | None = None) -> None:
        data = body.encode()
        # Logged before answering: whoever saw the answer can rely on the line being there.
        self._note(f"-> {status}", mode or self.server.state.mode)
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            if location is not None:
                self.send_header("Location", location)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a probe timeout): nothing to answer to

    def _note(self, what: str, mode: Mode) -> None:
        _log(f"{self.client_address[0]} {self.command} {self.path} {what} mode={mode}")


class _Server(ThreadingHTTPServer):
    # A restart must be able to bind the same port at once, even with old connections in
    # TIME_WAIT.
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr: tuple[str, int], state: _State) -> None:
        super().__init__(addr, _Handler)
        self.state = state


def serve(port: int, mode_text: str = "healthy", *, mode_file: Path | None = None,
          pidfile: Path | None = None, port_file: Path | None = None, host: str = HOST) -> int:
    """Run the service in this process until it is told to exit or is signalled."""
    if mode_file is not None:
        mode_text = read_mode_file(mode_file, default=mode_text)
    try:
        mode = parse_mode(mode_text)
    except ValueError as e:
        _log(f"cannot start: {e}")
        return 2
    if mode.kind in ("crash", "exit"):
        # "won't start": the port is never bound, so clients see connection refused.
        _log(f"mode={mode}: exiting at start" + (f" (from {mode_file})" if mode_file else ""))
        return 1
    try:
        state = _State(Mode("healthy"), pidfile)
        server = _Server((host, port), state)
    except OSError as e:
        _log(f"cannot listen on {host}:{port}: {e.strerror}")
        return 1
    bound = int(server.server_address[1])
    signal.signal(signal.SIGTERM, lambda *_: state.exit(0, "SIGTERM: exiting"))
    signal.signal(signal.SIGINT, lambda *_: state.exit(130, "SIGINT: exiting"))
    state.set(mode)
    if pidfile is not None:
        _write_atomic(pidfile, f"{os.getpid()}\n")
    if port_file is not None:
        _write_atomic(port_file, f"{bound}\n")
    _log(f"listening on {host}:{bound} mode={mode}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


# --- process control (restart / stop) ---------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_own_pidfile(pidfile: Path) -> None:
    try:
        if pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
    except OSError:
        pass


def _is_ours(pid: int) -> bool:
    try:
        return _MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def kill_pid(pid: int, grace: float = 3.0) -> bool:
    """SIGTERM, then SIGKILL after `grace`; True once the process is gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 3.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return True
            time.sleep(0.02)
    return not pid_alive(pid)


def stop(pidfile: Path) -> int | None:
    """Stop the service in `pidfile`; a missing or stale pidfile is ignored. The pid stopped."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    stopped: int | None = None
    if pid > 0 and pid_alive(pid) and _is_ours(pid):
        kill_pid(pid)
        stopped = pid
    try:
        pidfile.unlink()
    except FileNotFoundError:
        pass
    return stopped


def serve_argv(port: int, *, mode: str | None = None, mode_file: Path | None = None,
               pidfile: Path | None = None, port_file: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", _MARKER, "serve", "--port", str(port)]
    if mode is not None:
        argv += ["--mode", mode]
    if mode_file is not None:
        argv += ["--mode-file", str(mode_file)]
    if pidfile is not None:
        argv += ["--pidfile", str(pidfile)]
    if port_file is not None:
        argv += ["--port-file", str(port_file)]
    return argv


def _child_env() -> dict[str, str]:
    # A deploy runs from a git hook: its GIT_* variables mean nothing to the service.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    # Let the child import opskit even when it is not installed (a source checkout).
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def restart(port: int, pidfile: Path, log: Path, *, mode: str | None = None,
            mode_file: Path | None = None, wait: float = 0.0) -> int:
    """Stop whatever the pidfile names, start a new detached `serve`; its pid.

    Like `systemctl restart`, this does not report whether the new process stays up.
    """
    pidfile, log = pidfile.resolve(), log.resolve()
    if mode_file is not None:
        mode_file = mode_file.resolve()
    stop(pidfile)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        child = subprocess.Popen(
            serve_argv(port, mode=mode, mode_file=mode_file, pidfile=pidfile),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True,
            start_new_session=True, env=_child_env(),
        )
    if wait > 0:
        wait_listening(port, wait, child=child)
    return child.pid


def wait_listening(port: int, timeout: float, *, child: subprocess.Popen[bytes] | None = None,
                   host: str = HOST) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def deploy_command(port: int, pidfile: Path, log: Path, mode_file: str = "service.mode") -> str:
    """The `deploy = "…"` line for a config whose service is this sandbox service.

    The mode file is relative to the deployed worktree (the deploy's cwd), so a commit that
    writes `crash` into it is a bad deploy.
    """
    return " ".join(shlex.quote(a) for a in [
        sys.executable, "-m", _MARKER, "restart", "--port", str(port), "--pidfile", str(pidfile),
        "--log", str(log), "--mode-file", mode_file,
    ])


# --- Python API for tests ---------------------------------------------------------------------

class ServiceProcess:
    """A sandbox service as a child process: `with ServiceProcess.start() as svc: svc.url`."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: Path,
                 mode: str, mode_file: Path | None) -> None:
        self.proc = proc
        self.port = port
        self.workdir = workdir
        self.mode = mode
        self.mode_file = mode_file

    @classmethod
    def start(cls, port: int | None = None, mode: str = "healthy",
              mode_file: str | os.PathLike[str] | None = None, *,
              timeout: float = 10.0) -> ServiceProcess:
        """Start and wait until it listens (or, for a crashing mode, until it has exited)."""
        parse_mode(mode)  # a typo is the caller's bug: fail here, not in a log file
        workdir = Path(tempfile.mkdtemp(prefix="opskit-svc-"))
        port_file = workdir / "port"
        mf = Path(mode_file).resolve() if mode_file is not None else None
        with open(workdir / "service.log", "ab") as out:
            proc = subprocess.Popen(
                serve_argv(port if port is not None else 0, mode=mode, mode_file=mf,
                           port_file=port_file),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                env=_child_env(),
            )
        svc = cls(proc, port or 0, workdir, mode, mf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                svc.port = int(port_file.read_text())
                return svc
            if proc.poll() is not None:
                effective = read_mode_file(mf, mode) if mf is not None else mode
                if effective.strip() == "crash":
                    return svc
                raise RuntimeError(f"sandbox service exited with {proc.returncode}: {svc.log()[-500:]}")
            time.sleep(0.01)
        svc.stop()
        raise RuntimeError(f"sandbox service did not listen within {timeout}s: {svc.log()[-500:]}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/health"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "service.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def set_mode(self, mode: str) -> None:
        """Switch mode at runtime; "exit" (or "crash") ends the process."""
        parse_mode(mode)
        req = urllib.request.Request(
            f"http://{HOST}:{self.port}/_control", data=json.dumps({"mode": mode}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
        self.mode = mode
        if mode in ("exit", "crash"):
            self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
            except ProcessLookupError:
                pass

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --- command line -----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opskit.standins.service",
                                     description="A controllable HTTP service for tests and the demo.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_serve = sub.add_parser("serve", help="run in the foreground")
    p_serve.add_argument("--port", type=int, required=True, help="0: any free port")
    p_serve.add_argument("--host", default=HOST)
    p_serve.add_argument("--mode", default="healthy")
    p_serve.add_argument("--mode-file", type=Path)
    p_serve.add_argument("--pidfile", type=Path)
    p_serve.add_argument("--port-file", type=Path, help="written with the bound port once listening")
    p_restart = sub.add_parser("restart", help="stop the pidfile's process, start a detached one")
    p_restart.add_argument("--port", type=int, required=True)
    p_restart.add_argument("--pidfile", type=Path, required=True)
    p_restart.add_argument("--log", type=Path, required=True)
    p_restart.add_argument("--mode")
    p_restart.add_argument("--mode-file", type=Path)
    p_restart.add_argument("--wait", type=float, default=0.0,
                           help="wait up to S seconds for it to listen (still exits 0)")
    p_stop = sub.add_parser("stop", help="stop the pidfile's process")
    p_stop.add_argument("--pidfile", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.cmd == "serve":
        return serve(args.port, args.mode, mode_file=args.mode_file, pidfile=args.pidfile,
                     port_file=args.port_file, host=args.host)
    if args.cmd == "restart":
        if args.mode is not None:
            try:
                parse_mode(args.mode)
            except ValueError as e:
                print(f"restart: {e}", file=sys.stderr)
                return 2
        pid = restart(args.port, args.pidfile, args.log, mode=args.mode, mode_file=args.mode_file,
                      wait=args.wait)
        print(f"started pid {pid} on port {args.port} (log {args.log})")
        return 0
    stopped = stop(args.pidfile)
    print(f"stopped pid {stopped}" if stopped else "not running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
