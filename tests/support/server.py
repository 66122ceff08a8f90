"""A real server for the system-install tests: install.sh --system into a temp prefix, real
Unix accounts (git, an operator, an outsider), a real OpenSSH server on 127.0.0.1, and a real
HTTP service whose health comes from its deployed worktree.

Every account name and the group carry a random suffix (other runs share this machine) and are
removed afterwards. The base folder is under /tmp and world-traversable: the accounts must reach
the installed interpreter, as they would /opt/opskit on a real host.
"""

from __future__ import annotations

import http.server
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRON_PATH = "/usr/bin:/bin"  # cron's PATH (crontab(5) on Debian)


def need_root() -> str | None:
    if os.geteuid() != 0:
        return "needs root: creates Unix accounts, a group and an sshd (CI runs as root)"
    for tool in ("useradd", "userdel", "groupdel", "setpriv", "ssh-keygen", "/usr/sbin/sshd", "ssh", "visudo"):
        if shutil.which(tool) is None and not os.path.exists(tool):
            return f"needs {tool} (./install.sh --dev installs openssh-server and sudo)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_as(user: str, argv: list[str], *, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
           input: str | None = None, umask: str | None = None, timeout: float = 120,
           ) -> subprocess.CompletedProcess[str]:
    """argv as `user` (root: as root) with only HOME, USER, LOGNAME, SHELL, PATH and `env`: the
    environment a login of theirs would have, none of the test process's."""
    pw = pwd.getpwnam(user)
    e = {"HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": "/bin/sh",
         "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
    # Through sh even without a umask: setpriv execs its program while it still holds root's
    # capabilities, so a program the account could not reach would start anyway.
    argv = ["/bin/sh", "-c", (f"umask {umask} && " if umask else "") + 'exec "$@"', "sh", *argv]
    if pw.pw_uid != 0:
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in e.items()), *argv], cwd=cwd,
                          input=input, capture_output=True, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL, check=False)


def add_account(name: str, home: Path, groups: list[str]) -> None:
    argv = ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh",
            "--password", "*"]  # '*': no password, but not locked, so sshd takes the key
    if groups:
        argv += ["--groups", ",".join(groups)]
    subprocess.run([*argv, name], check=True, capture_output=True)


def remove_account(name: str) -> None:
    subprocess.run(["userdel", "--force", "--remove", name], check=False, capture_output=True)


class _Health(http.server.BaseHTTPRequestHandler):
    mode_file: Path

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:
            mode = self.mode_file.read_text().strip()
        except OSError:
            mode = "missing"
        code = 200 if mode == "ok" else 500
        body = f"mode {mode}\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Server:
    base: Path
    group: str
    git: str
    operator: str
    outsider: str
    prefix: Path
    bindir: Path
    etc: Path
    state: Path
    crond: Path
    worktree: Path
    repo: Path
    port: int = 0
    ssh_port: int = 0
    client_key: Path = field(default_factory=Path)
    transcript: list[str] = field(default_factory=list)

    @property
    def opskit(self) -> str:
        return str(self.bindir / "opskit")

    @property
    def config(self) -> Path:
        return self.etc / "opskit.toml"

    def ops(self, user: str, *args: str, env: Mapping[str, str] | None = None, umask: str | None = None,
            record: bool = False) -> subprocess.CompletedProcess[str]:
        """`opskit --config CONFIG ARGS` as user, from the system install."""
        r = run_as(user, [self.opskit, "--config", str(self.config), *args],
                   env={"PATH": f"{self.bindir}:/usr/local/bin:/usr/bin:/bin", **(env or {})}, umask=umask)
        if record:
            who = "#" if user == "root" else "$"
            self.transcript.append(f"{user}{who} opskit {' '.join(args)}\n{r.stdout}{r.stderr}[exit {r.returncode}]")
        return r

    def ssh_env(self) -> dict[str, str]:
        return {"GIT_SSH_COMMAND": f"ssh -i {self.client_key} -o IdentitiesOnly=yes -o BatchMode=yes "
                                   f"-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
                "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
                "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid",
                "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(self.base / "devhome"),
                "PATH": "/usr/bin:/bin"}

    def url(self) -> str:
        return f"ssh://{self.git}@127.0.0.1:{self.ssh_port}{self.repo}"


def install_system(base: Path, group: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "OPSKIT_PREFIX": str(base / "opt"), "OPSKIT_BIN": str(base / "bin"), "OPSKIT_ETC": str(base / "etc"),
           "OPSKIT_STATE": str(base / "state"), "OPSKIT_GROUP": group, "PYTHON": "/usr/bin/python3"}
    # Only pip's own settings from the test environment (a local index on CI mirrors).
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), str(ROOT / "install.sh"), "--system"],
                          capture_output=True, text=True, timeout=600, check=False)


def start_sshd(srv: Server) -> subprocess.Popen[bytes]:
    d = srv.base / "sshd"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")], check=True)
    srv.client_key = d / "client_key"
    pw = pwd.getpwnam(srv.git)
    ssh_dir = Path(pw.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    pub = (d / "client_key.pub").read_text().strip()
    # umask 077 for every session: what opskit creates must stay group-writable regardless.
    (ssh_dir / "authorized_keys").write_text(
        f'command="umask 077; eval exec \\"$SSH_ORIGINAL_COMMAND\\"",no-pty,no-port-forwarding {pub}\n')
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    srv.ssh_port = free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {srv.ssh_port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
AllowUsers {srv.git}
StrictModes no
PrintMotd no
""")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(cfg), "-e"], stdout=subprocess.DEVNULL,
                            stderr=open(d / "sshd.log", "wb"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", srv.ssh_port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (d / "sshd.log").read_text()) from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("sshd did not listen within 10 s: " + (d / "sshd.log").read_text())


def start_health(mode_file: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = type("H", (_Health,), {"mode_file": mode_file})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, int(httpd.server_address[1])


@dataclass
class Made:
    accounts: list[str] = field(default_factory=list)
    group: str | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    httpd: http.server.ThreadingHTTPServer | None = None


def build(made: Made) -> Server:
    suffix = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"opskit-server-{suffix}-", dir="/tmp"))
    os.chmod(base, 0o755)
    group = f"opsk{suffix}"
    srv = Server(base=base, group=group, git=f"ogit{suffix}", operator=f"oop{suffix}", outsider=f"oout{suffix}",
                 prefix=base / "opt", bindir=base / "bin", etc=base / "etc", state=base / "state",
                 crond=base / "cron.d" / "opskit", worktree=base / "srv" / "app", repo=base / "git" / "app.git")
    r = install_system(base, group)
    made.group = group
    srv.transcript.append(f"# ./install.sh --system   (OPSKIT_PREFIX={srv.prefix} OPSKIT_BIN={srv.bindir} "
                          f"OPSKIT_ETC={srv.etc} OPSKIT_STATE={srv.state} OPSKIT_GROUP={group})\n"
                          f"{r.stdout}{r.stderr}[exit {r.returncode}]")
    if r.returncode != 0:
        raise RuntimeError("install.sh --system failed:\n" + r.stdout + r.stderr)
    (base / "home").mkdir(mode=0o755)
    (base / "devhome").mkdir(mode=0o700)
    (base / "devhome" / ".gitconfig").write_text("[init]\n\tdefaultBranch = master\n")
    for name, groups in ((srv.git, [group]), (srv.operator, [group]), (srv.outsider, [])):
        add_account(name, base / "home" / name, groups)
        made.accounts.append(name)
    (base / "srv").mkdir(mode=0o755)
    (base / "git").mkdir(mode=0o755)
    pw = pwd.getpwnam(srv.git)
    srv.worktree.mkdir()
    os.chown(srv.worktree, pw.pw_uid, pw.pw_gid)
    ident = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.invalid",
             "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.invalid"}
    setup = ("git init -q -b master . && echo ok > service.mode && echo v1 > app.txt && "
             "git add . && git commit -q -m 'the service as it runs today'")
    r2 = run_as(srv.git, ["/bin/sh", "-c", setup], env=ident, cwd=srv.worktree)
    if r2.returncode != 0:
        raise RuntimeError("could not make the service's checkout: " + r2.stderr)
    made.httpd, srv.port = start_health(srv.worktree / "service.mode")
    made.procs.append(start_sshd(srv))
    return srv


def teardown(srv: Server | None, made: Made) -> None:
    if made.httpd is not None:
        made.httpd.shutdown()
    for p in made.procs:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
    for name in made.accounts:
        remove_account(name)
    if made.group:
        subprocess.run(["groupdel", made.group], check=False, capture_output=True)
    if srv is not None:
        shutil.rmtree(srv.base, ignore_errors=True)


def server_fixture() -> Iterator[Server]:
    made = Made()
    srv = None
    try:
        srv = build(made)
        yield srv
        out = os.environ.get("OPSKIT_SERVER_TRANSCRIPT")
        if out:  # for a reviewer: what an operator would have seen, command by command
            Path(out).write_text("\n\n".join(srv.transcript) + "\n")
    finally:
        teardown(srv, made)
