"""`opskit keys`: the push account can only push. A key added with `keys add` can git push and git
fetch the account's configured repos over a real sshd and nothing else: no command, no shell, no
pty, no forwarding, no other repository. The server tests need root (real accounts, an sshd)."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.guard.sshshell import Refused, decide, session_env
from opskit.wiring import keys
from tests.support.server import Server, need_root, run_as, server_fixture

# --- the forced command's decision and the line format, without a server ----------------------

REPO = "/srv/git/app.git"


@pytest.mark.parametrize("command, want", [
    ("git-receive-pack '/srv/git/app.git'", ("receive-pack", REPO)),
    ("git-upload-pack '/srv/git/app.git'", ("upload-pack", REPO)),
    ("git-upload-pack '/srv/git/app'", ("upload-pack", REPO)),  # git's own .git DWIM
    ("git-upload-pack '/srv/git/app.git/'", ("upload-pack", REPO)),
    ("git-receive-pack '/srv/git/other/../app.git'", ("receive-pack", REPO)),
])
def test_decide_allows_the_two_git_commands_on_a_configured_repo(command: str, want: tuple[str, str]) -> None:
    assert decide(command, [REPO], "/home/git") == want


def test_decide_follows_home_relative_paths(tmp_path: Path) -> None:
    repo = tmp_path / "app.git"
    repo.mkdir()
    real = os.path.realpath(repo)
    for path in ("~/app.git", "app.git", "app"):
        assert decide(f"git-receive-pack '{path}'", [real], str(tmp_path)) == ("receive-pack", real), path


@pytest.mark.parametrize("command", [
    None, "", "id", "sh -c id", "git-upload-archive '/srv/git/app.git'", "git-receive-pack",
    "git-receive-pack '/srv/git/app.git' extra", "git-receive-pack '/srv/git/app.git'; id",
    "git-upload-pack '/srv/git/other.git'", "git-upload-pack '/etc'", "git-upload-pack '~root/app.git'",
    "git-upload-pack 'unbalanced", "git receive-pack '/srv/git/app.git'", "scp -t /tmp",
])
def test_decide_refuses_everything_else(command: str | None) -> None:
    with pytest.raises(Refused):
        decide(command, [REPO], "/home/git")


def test_session_env_drops_the_clients_git_variables() -> None:
    env = session_env({"HOME": "/h", "PATH": "/usr/bin", "GIT_CONFIG_PARAMETERS": "'core.hookspath'='/tmp'",
                       "GIT_DIR": "/etc", "GIT_PROTOCOL": "version=2", "LD_PRELOAD": "/tmp/x.so",
                       "LC_ALL": "C"}, "alice")
    assert env == {"HOME": "/h", "PATH": "/usr/bin", "GIT_PROTOCOL": "version=2", "LC_ALL": "C",
                   "OPSKIT_SSH_KEY": "alice"}


def _sshd_dequote(options: str) -> str:
    """command="…" as sshd reads it (auth-options.c opt_dequote: only \\" is an escape)."""
    start = options.index('command="') + len('command="')
    out, i = [], start
    while options[i] != '"':
        if options[i] == "\\" and options[i + 1] == '"':
            i += 1
        out.append(options[i])
        i += 1
    return "".join(out)


def test_entry_line_round_trips_through_sshd_and_the_shell() -> None:
    python, config = '/opt/ops kit/bin/py"thon', "/etc/opskit/it's.toml"
    line = keys.entry_line(python, config, "alice", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIE")
    parsed = keys.parse_line(1, line)
    assert parsed is not None and parsed.name == "alice" and parsed.kind == "ssh-ed25519"
    assert parsed.options.startswith("restrict,command=")
    argv = shlex.split(_sshd_dequote(parsed.options))
    assert argv == [python, "-I", "-m", "opskit.guard.sshshell", "--config", config, "--key", "alice"]


def test_parse_line_reads_hand_lines_with_quoted_options() -> None:
    line = 'from="10.0.0.0/8",command="echo a b" ssh-rsa AAAAB3 bob@laptop\n'
    parsed = keys.parse_line(3, line)
    assert parsed is not None and parsed.name is None and parsed.kind == "ssh-rsa"
    assert parsed.comment == "bob@laptop" and parsed.options == 'from="10.0.0.0/8",command="echo a b"'


# --- a real server ---------------------------------------------------------------------------

server_only = pytest.mark.skipif(need_root() is not None, reason=need_root() or "")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if need_root() is not None:
        pytest.skip(need_root() or "")
    yield from server_fixture()


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dev@laptop", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def keyed(server: Server) -> Server:
    """The service added as test_server adds it (gate shortened), and the developer's key added."""
    srv = server
    r = srv.ops("root", "add", "app", "--worktree", str(srv.worktree),
                "--deploy", 'echo "deployed $OPSKIT_SHA as $(id -un)" >> "$HOME/deploys.log"',
                "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo),
                "--host", "127.0.0.1", "--direct-push")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"opskit keys add NAME NAME.pub --user {srv.git}" in r.stdout
    text = srv.config.read_text()
    srv.config.write_text(text.replace(
        f'url = "http://127.0.0.1:{srv.port}/health"',
        f'url = "http://127.0.0.1:{srv.port}/health"\nwindow = 1.0\nperiod = 0.2\ntimeout = 0.5\n'
        "failures = 2\nstartup = 2.0"))
    keydir = srv.base / "devkeys"
    keydir.mkdir(mode=0o700)
    _keygen(keydir / "dev")
    # No --user: the one account every service uses.
    r = srv.ops("root", "keys", "add", "dev", str(keydir / "dev.pub"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "added to" in r.stdout, r.stdout
    return srv


def authorized_keys(srv: Server) -> Path:
    return Path(pwd.getpwnam(srv.git).pw_dir) / ".ssh" / "authorized_keys"


def dev_key(srv: Server) -> Path:
    return srv.base / "devkeys" / "dev"


def _ssh_opts(key: Path) -> list[str]:
    return ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


def _env(srv: Server, key: Path) -> list[str]:
    env = {**srv.ssh_env(), "GIT_SSH_COMMAND": shlex.join(["ssh", *_ssh_opts(key)])}
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items())]


def ssh(srv: Server, key: Path, *args: str, opts: tuple[str, ...] = (), timeout: float = 30,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_env(srv, key), "ssh", *_ssh_opts(key), "-p", str(srv.ssh_port), *opts,
                           f"{srv.git}@127.0.0.1", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)


def git_with(srv: Server, key: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_env(srv, key), "git", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, check=False)


def _url(srv: Server, path: str) -> str:
    return f"ssh://{srv.git}@127.0.0.1:{srv.ssh_port}{path}"


@server_only
def test_keys_add_writes_one_restricted_line_and_keeps_hand_lines(keyed: Server) -> None:
    srv = keyed
    ak = authorized_keys(srv)
    pw = pwd.getpwnam(srv.git)
    lines = ak.read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith('command="umask 077;'), "the line the fixture added by hand comes first, untouched"
    pub = (dev_key(srv).with_suffix(".pub")).read_text().split()
    python = str(srv.prefix / "bin" / "python")
    assert lines[1] == (f'restrict,command="{python} -I -m opskit.guard.sshshell --config {srv.config} --key dev" '
                        f"{pub[0]} {pub[1]} opskit:dev"), lines[1]
    for p, mode in ((ak.parent, 0o700), (ak, 0o600)):
        st = os.stat(p)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (pw.pw_uid, pw.pw_gid, mode), p
    before = ak.read_bytes()
    again = srv.ops("root", "keys", "add", "dev", str(dev_key(srv).with_suffix(".pub")), "--user", srv.git)
    assert again.returncode == 0 and "already in" in again.stdout, again.stdout + again.stderr
    assert ak.read_bytes() == before


@server_only
def test_the_key_runs_no_command(keyed: Server) -> None:
    srv = keyed
    marker = Path(pwd.getpwnam(srv.git).pw_dir) / "ran"  # where the account could write, if it ran anything
    for command in (["id"], [f"touch {marker}"], [f"git-upload-pack '{srv.repo}'; touch {marker}"],
                    ["sh", "-c", f"'touch {marker}'"]):
        r = ssh(srv, dev_key(srv), *command)
        assert r.returncode != 0, (command, r.stdout, r.stderr)
        assert "uid=" not in r.stdout and "opskit: refused" in r.stderr, (command, r.stdout, r.stderr)
        assert not marker.exists(), command
    # No shell and no pty: the login is refused with one line, nothing runs.
    r = ssh(srv, dev_key(srv), opts=("-tt",))
    assert r.returncode != 0 and "PTY allocation request failed" in r.stderr, r.stderr
    r = ssh(srv, dev_key(srv), opts=("-T",))
    assert r.returncode != 0 and "no shell here" in r.stderr, r.stderr


@server_only
def test_the_key_cannot_forward_ports(keyed: Server) -> None:
    srv = keyed
    # -R: the server refuses the listener, ssh says so and exits.
    r = ssh(srv, dev_key(srv), opts=("-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9"), timeout=30)
    assert r.returncode != 0, r.stderr
    # -L: the tunnel to the health port is opened on the client, and refused by the server.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    p = subprocess.Popen([*_env(srv, dev_key(srv)), "ssh", *_ssh_opts(dev_key(srv)), "-p", str(srv.ssh_port), "-N",
                          "-L", f"{local}:127.0.0.1:{srv.port}", f"{srv.git}@127.0.0.1"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=2) as c:
                    c.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                    c.settimeout(3)
                    try:
                        got = c.recv(100)
                    except (TimeoutError, ConnectionResetError):
                        got = b""
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the client never listened on the forwarded port")
        assert b"HTTP" not in got, got
    finally:
        p.terminate()
        p.communicate(timeout=10)


@server_only
def test_the_key_pushes_deploys_and_fetches(keyed: Server, tmp_path: Path) -> None:
    srv = keyed
    dev = tmp_path / "dev"
    r = git_with(srv, dev_key(srv), "clone", "-q", _url(srv, str(srv.repo)), str(dev))
    assert r.returncode == 0, r.stderr
    (dev / "app.txt").write_text("v2 over a restricted key\n")
    git_with(srv, dev_key(srv), "commit", "-q", "-am", "v2", cwd=dev)
    push = git_with(srv, dev_key(srv), "push", "origin", "master", cwd=dev)
    assert push.returncode == 0, push.stderr
    assert "healthy" in push.stderr.lower(), push.stderr
    assert (srv.worktree / "app.txt").read_text() == "v2 over a restricted key\n"
    fetch = git_with(srv, dev_key(srv), "fetch", "origin", cwd=dev)
    assert fetch.returncode == 0, fetch.stderr
    # Without .git, as git itself accepts it.
    ls = git_with(srv, dev_key(srv), "ls-remote", _url(srv, str(srv.repo)[:-len(".git")]))
    assert ls.returncode == 0 and "refs/heads/master" in ls.stdout, ls.stderr


@server_only
def test_the_key_reaches_no_other_repository(keyed: Server) -> None:
    srv = keyed
    home = Path(pwd.getpwnam(srv.git).pw_dir)
    r = run_as(srv.git, ["git", "init", "-q", "--bare", str(home / "other.git")])
    assert r.returncode == 0, r.stderr
    for path in (str(home / "other.git"), "/~/other.git", str(srv.worktree), "/etc"):
        ls = git_with(srv, dev_key(srv), "ls-remote", _url(srv, path))
        assert ls.returncode != 0, (path, ls.stdout)
        assert "opskit: refused" in ls.stderr, (path, ls.stderr)
    # The control: the fixture's unrestricted key (added by hand) reads it, so the refusal is the key's.
    ls = git_with(srv, srv.client_key, "ls-remote", _url(srv, str(home / "other.git")))
    assert ls.returncode == 0, ls.stderr


@server_only
def test_keys_list_then_remove_refuses_the_next_push(keyed: Server, tmp_path: Path) -> None:
    srv = keyed
    key = _keygen(tmp_path / "ci")
    r = srv.ops("root", "keys", "add", "ci-bot", str(key.with_suffix(".pub")), "--user", srv.git)
    assert r.returncode == 0, r.stderr
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(key.with_suffix(".pub"))], capture_output=True,
                        text=True, check=True).stdout.split()[1]
    listed = srv.ops("root", "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(ln) for ln in listed.stdout.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["ci-bot"]["fingerprint"] == fp and by_name["ci-bot"]["type"] == "ssh-ed25519"
    assert by_name["ci-bot"]["state"] == "ok" and by_name["dev"]["state"] == "ok"
    assert by_name[None]["state"] == "not managed" and by_name[None]["managed"] is False
    text = srv.ops("root", "keys", "list").stdout
    assert "ci-bot" in text and fp in text and "not managed" in text, text
    assert git_with(srv, key, "ls-remote", _url(srv, str(srv.repo))).returncode == 0

    before = authorized_keys(srv).read_text().splitlines()
    gone = srv.ops("root", "keys", "remove", "ci-bot")
    assert gone.returncode == 0 and "removed" in gone.stdout, gone.stderr
    after = authorized_keys(srv).read_text().splitlines()
    assert after == [ln for ln in before if not ln.endswith(" opskit:ci-bot")]
    ls = git_with(srv, key, "ls-remote", _url(srv, str(srv.repo)))
    assert ls.returncode != 0 and "Permission denied" in ls.stderr, ls.stderr
    again = srv.ops("root", "keys", "remove", "ci-bot")
    assert again.returncode == 2 and "no key named" in again.stderr


@server_only
def test_bad_names_and_key_files_exit_2_one_line_nothing_changed(keyed: Server, tmp_path: Path) -> None:
    srv = keyed
    ak = authorized_keys(srv)
    before = ak.read_bytes()
    other = _keygen(tmp_path / "other")
    two = tmp_path / "two.pub"
    two.write_text(other.with_suffix(".pub").read_text() + dev_key(srv).with_suffix(".pub").read_text())
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("ssh-ed25519 AAAAnot-base64!! x\n")
    wrong = tmp_path / "wrong.pub"
    wrong.write_text("ssh-rsa " + other.with_suffix(".pub").read_text().split()[1] + "\n")
    options = tmp_path / "options.pub"
    options.write_text('command="id" ' + other.with_suffix(".pub").read_text())
    empty = tmp_path / "empty.pub"
    empty.write_text("")
    os.chmod(tmp_path, 0o755)
    pub = str(other.with_suffix(".pub"))
    cases = {
        "space": (["a b", pub], "key name"),
        "dots": (["../x", pub], "key name"),
        "quote": (['x"y', pub], "key name"),
        "newline": (["x\nrm", pub], "key name"),
        "long": (["a" * 65, pub], "key name"),
        "private key": (["p", str(other)], "private key"),
        "two keys": (["t", str(two)], "key lines"),
        "garbage": (["g", str(garbage)], "base64"),
        "type mismatch": (["w", str(wrong)], "holds"),
        "options": (["o", str(options)], "not an OpenSSH public key"),
        "empty": (["e", str(empty)], "no key lines"),
        "missing": (["m", str(tmp_path / "nope.pub")], "No such file"),
        "same key, other name": (["dev2", str(dev_key(srv).with_suffix(".pub"))], "already in"),
        "same name, other key": (["dev", pub], "already holds another key"),
        "root": (["r", pub, "--user", "root"], "never root"),
        "no such user": (["r", pub, "--user", "nosuch" + srv.group], "no such account"),
    }
    for what, (args, said) in cases.items():
        r = srv.ops("root", "keys", "add", *args)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
        assert said in r.stderr, (what, r.stderr)
        assert ak.read_bytes() == before, what
    # Neither root nor the account: the operator is told who may.
    r = srv.ops(srv.operator, "keys", "list")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "managed by root" in r.stderr, r.stderr


@server_only
def test_links_planted_by_the_account_are_refused_victim_unchanged(keyed: Server, tmp_path: Path) -> None:
    srv = keyed
    ak = authorized_keys(srv)
    ssh_dir = ak.parent
    victim = srv.base / "victim"
    victim.write_text("root's secret\n")
    os.chmod(victim, 0o600)
    victim_dir = srv.base / "victim.d"
    victim_dir.mkdir(mode=0o700)
    before = (victim.read_bytes(), os.stat(victim).st_mode, os.stat(victim).st_uid)
    other = _keygen(tmp_path / "k")
    os.chmod(tmp_path, 0o755)
    pub = str(other.with_suffix(".pub"))

    def check(r: subprocess.CompletedProcess[str], what: str) -> None:
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "symbolic link" in r.stderr, (what, r.stderr)
        assert (victim.read_bytes(), os.stat(victim).st_mode, os.stat(victim).st_uid) == before, what
        assert list(victim_dir.iterdir()) == [], what

    # authorized_keys → root's file
    plant = f"mv {ak} {ak}.real && ln -s {victim} {ak}"
    assert run_as(srv.git, ["/bin/sh", "-c", plant]).returncode == 0
    try:
        check(srv.ops("root", "keys", "add", "k", pub), "add through a linked authorized_keys")
        check(srv.ops("root", "keys", "list"), "list through a linked authorized_keys")
    finally:
        assert run_as(srv.git, ["/bin/sh", "-c", f"rm {ak} && mv {ak}.real {ak}"]).returncode == 0
    # ~/.ssh → a folder of root's
    plant = f"mv {ssh_dir} {ssh_dir}.real && ln -s {victim_dir} {ssh_dir}"
    assert run_as(srv.git, ["/bin/sh", "-c", plant]).returncode == 0
    try:
        check(srv.ops("root", "keys", "add", "k", pub), "add through a linked ~/.ssh")
    finally:
        assert run_as(srv.git, ["/bin/sh", "-c", f"rm {ssh_dir} && mv {ssh_dir}.real {ssh_dir}"]).returncode == 0
    assert " opskit:k" not in ak.read_text()
