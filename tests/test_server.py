"""A real server: install.sh --system, the git account over SSH, root's cron.d, the operators'
group, opskit add. Needs root (real accounts, an sshd); skipped otherwise, with the reason."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import CRON_PATH, Server, need_root, run_as, server_fixture

pytestmark = [pytest.mark.slow, pytest.mark.skipif(need_root() is not None, reason=need_root() or "")]



@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from server_fixture()


def git_dev(srv: Server, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**srv.ssh_env()}
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "git", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=180, check=False)


def events(srv: Server, user: str = "root") -> list[dict[str, object]]:
    r = srv.ops(user, "events", "--json", "--limit", "500")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()] if not r.stdout.lstrip().startswith("[") \
        else json.loads(r.stdout)


def add_app(srv: Server, *extra: str, record: bool = False) -> subprocess.CompletedProcess[str]:
    return srv.ops("root", "add", "app", "--worktree", str(srv.worktree),
                   "--deploy", 'echo "deployed $OPSKIT_SHA as $(id -un) home $HOME" >> "$HOME/deploys.log"',
                   "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo),
                   "--host", "127.0.0.1", "--direct-push", *extra, record=record)


def tune_gate(srv: Server) -> None:
    """The operator shortens the gate (60 s by default) in the config, as they would by hand."""
    text = srv.config.read_text()
    if "[service.app.health]" in text and "window" not in text:
        srv.config.write_text(text.replace(
            f'url = "http://127.0.0.1:{srv.port}/health"',
            f'url = "http://127.0.0.1:{srv.port}/health"\nwindow = 1.0\nperiod = 0.2\ntimeout = 0.5\n'
            "failures = 2\nstartup = 2.0"))


def push_bad_merge(srv: Server, dev: Path) -> subprocess.CompletedProcess[str]:
    """In the dev clone: a branch that breaks health, merged into master and pushed (the gate reverts it)."""
    git_dev(srv, "checkout", "-q", "-b", "feature", cwd=dev)
    (dev / "service.mode").write_text("broken\n")
    git_dev(srv, "commit", "-q", "-am", "feature: breaks health", cwd=dev)
    git_dev(srv, "checkout", "-q", "master", cwd=dev)
    m = git_dev(srv, "merge", "-q", "--no-ff", "-m", "Merge feature", "feature", cwd=dev)
    assert m.returncode == 0, m.stderr
    return git_dev(srv, "push", "origin", "master", cwd=dev)


@pytest.fixture(scope="module")
def app(server: Server) -> Server:
    """The service added (its bare repo, hooks, config section) and its gate shortened: what
    test_add_creates_repo_keeps_comments_and_is_idempotent leaves, made here when it has not run."""
    r = add_app(server)
    assert r.returncode == 0, r.stdout + r.stderr
    tune_gate(server)
    return server


@pytest.fixture(scope="module")
def reverted(app: Server, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A bad merge pushed and reverted by the gate, once: what the push test leaves, made here
    when it has not run."""
    srv = app
    if not any(e["type"] == "rollback.complete" and e.get("service") == "app" for e in events(srv)):
        dev = tmp_path_factory.mktemp("reverted") / "dev"
        r = git_dev(srv, "clone", "-q", srv.url(), str(dev))
        assert r.returncode == 0, r.stderr
        bad = push_bad_merge(srv, dev)
        assert "revert" in bad.stderr.lower(), bad.stderr
    assert any(e["type"] == "rollback.complete" and e.get("service") == "app" for e in events(srv))
    return srv


# --- install --------------------------------------------------------------------------------

def test_system_install_layout_and_rerun(server: Server) -> None:
    srv = server
    st = os.stat(srv.etc)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o750, 0)
    st = os.stat(srv.state)
    assert stat.S_IMODE(st.st_mode) == 0o2770 and st.st_uid == 0
    assert os.readlink(srv.bindir / "opskit") == str(srv.prefix / "bin" / "opskit")
    # A package, not a link to the clone: no .pth / egg-link pointing back at the worktree.
    site = next((srv.prefix / "lib").glob("python3*/site-packages"))
    assert (site / "opskit" / "wiring" / "templates" / "hooks" / "pre-receive").is_file()
    assert not any("wt" in p.read_text() for p in site.glob("*.pth") if "opskit" in p.name)
    # Every account can start it.
    r = run_as(srv.outsider, [str(srv.prefix / "bin" / "python"), "-c", "import opskit, tomlkit"])
    assert r.returncode == 0, r.stderr
    first = srv.config.read_bytes()
    from tests.support.server import install_system

    again = install_system(srv.base, srv.group)
    assert again.returncode == 0, again.stderr
    assert f"kept {srv.config}" in again.stdout and "group " + srv.group + " exists" in again.stdout
    assert srv.config.read_bytes() == first


# --- opskit add: bad input first (nothing may change), then the real thing -----------------------

def test_add_bad_input_exit_2_one_line_nothing_changed(server: Server, tmp_path: Path) -> None:
    srv = server
    before = srv.config.read_bytes()
    not_checkout = srv.base / "srv" / "plain"
    not_checkout.mkdir(exist_ok=True)
    cases = {
        "--user": add_app_args(srv, "--user", "nosuchuser" + srv.group),
        "worktree": ["add", "app", "--worktree", str(not_checkout), "--deploy", "true",
                     "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo)],
    }
    for what, args in cases.items():
        r = srv.ops("root", *args)
        assert r.returncode == 2, (what, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
        assert srv.config.read_bytes() == before and not srv.repo.exists(), what
    assert "nosuchuser" in srv.ops("root", *cases["--user"]).stderr
    assert "not a git checkout" in srv.ops("root", *cases["worktree"]).stderr
    # A config another account can write: root refuses to read it at all.
    os.chmod(srv.config, 0o646)
    try:
        r = srv.ops("root", *add_app_args(srv))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert str(srv.config) in r.stderr and "writable by every account" in r.stderr
        assert not srv.repo.exists()
    finally:
        os.chmod(srv.config, 0o640)
    assert srv.config.read_bytes() == before


def add_app_args(srv: Server, *extra: str) -> list[str]:
    return ["add", "app", "--worktree", str(srv.worktree),
            "--deploy", 'echo "deployed $OPSKIT_SHA as $(id -un) home $HOME" >> "$HOME/deploys.log"',
            "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo),
            "--host", "127.0.0.1", "--direct-push", *extra]


def test_add_creates_repo_keeps_comments_and_is_idempotent(server: Server) -> None:
    srv = server
    before = srv.config.read_text()
    r = add_app(srv, record=True)
    assert r.returncode == 0, r.stdout + r.stderr
    after = srv.config.read_text()
    assert after.startswith(before), "every existing line and comment stays byte for byte"
    assert "[service.app]" in after and f'user = "{srv.git}"' in after and "direct_push = true" in after
    assert f"git remote add production ssh://{srv.git}@127.0.0.1{srv.repo}" in r.stdout
    assert pwd.getpwuid(os.stat(srv.repo).st_uid).pw_name == srv.git
    hook = srv.repo / "hooks" / "pre-receive"
    assert hook.is_file() and pwd.getpwuid(os.stat(hook).st_uid).pw_name == srv.git
    assert "--state-dir" in hook.read_text() and str(srv.state) in hook.read_text()
    again = add_app(srv)
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stdout + again.stderr
    assert srv.config.read_text() == after
    other = srv.ops("root", *add_app_args(srv)[:4], "--deploy", "true", *add_app_args(srv)[6:])
    assert other.returncode == 2 and "already exists with other values" in other.stderr, other.stderr
    assert len(other.stderr.strip().splitlines()) == 1
    assert srv.config.read_text() == after
    tune_gate(srv)


# --- the push over SSH --------------------------------------------------------------------------

def test_push_over_ssh_deploys_gates_and_reverts_a_bad_merge(app: Server, tmp_path: Path) -> None:
    srv = app
    assert (srv.repo / "hooks" / "post-receive").exists(), "the app fixture adds the service"
    # Root follows the journal the whole time; the git account pushes under umask 077.
    follow = subprocess.Popen(["env", "-i", "HOME=/root", "PATH=/usr/bin:/bin", srv.opskit, "--config",
                               str(srv.config), "events", "--follow"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        dev = tmp_path / "dev"
        r = git_dev(srv, "clone", "-q", srv.url(), str(dev))
        assert r.returncode == 0, r.stderr
        (dev / "app.txt").write_text("v2\n")
        git_dev(srv, "commit", "-q", "-am", "v2: a good change", cwd=dev)
        push = git_dev(srv, "push", "origin", "master", cwd=dev)
        srv.transcript.append(f"dev$ git push origin master   (v2: a good change)\n{push.stderr}[exit {push.returncode}]")
        assert push.returncode == 0, push.stderr
        assert "remote:" in push.stderr and "healthy" in push.stderr.lower(), push.stderr
        assert (srv.worktree / "app.txt").read_text() == "v2\n"
        log = Path(pwd.getpwnam(srv.git).pw_dir) / "deploys.log"
        assert f"as {srv.git} home {pwd.getpwnam(srv.git).pw_dir}" in log.read_text()

        # A bad merge: the branch breaks health; the merge is deployed, fails the gate, reverted.
        bad = push_bad_merge(srv, dev)
        srv.transcript.append(f"dev$ git push origin master   (a merge that breaks health)\n{bad.stderr}[exit {bad.returncode}]")
        assert "remote:" in bad.stderr and "revert" in bad.stderr.lower(), bad.stderr
        assert (srv.worktree / "service.mode").read_text().strip() == "ok"
        subject = run_as(srv.git, ["git", "-C", str(srv.repo), "log", "-1", "--format=%s", "master"])
        assert "revert" in subject.stdout.lower(), subject.stdout
        # While root still holds the journal open (its -wal and -shm exist):
        made = {f: (stat.S_IMODE(os.stat(f).st_mode), os.stat(f).st_gid) for f in srv.state.rglob("*")}
    finally:
        time.sleep(1.0)  # let --follow poll once more (it polls every 0.5 s)
        follow.terminate()
        out, err = follow.communicate(timeout=10)
    kinds = [e["type"] for e in events(srv)]
    assert "health.pass" in kinds and "health.fail" in kinds and "rollback.complete" in kinds, kinds
    assert "health.pass" in out and "rollback.complete" in out, (out, err)
    assert any(f.name == "journal.db-wal" for f in made) and any(f.suffix == ".lock" for f in made), made
    key = srv.state / "decision.key"  # root's alone (tests/test_pusher_cannot_decide.py)
    if key in made:
        assert made.pop(key)[0] == 0o600 and os.stat(key).st_uid == 0
    for f, (mode, gid) in made.items():  # journal, -wal, -shm, locks: whoever made them, any umask
        assert mode & 0o060 == 0o060, (f, oct(mode))
        assert gid == os.stat(srv.state).st_gid, f


def test_operator_sees_it_outsider_gets_the_fix(reverted: Server) -> None:
    srv = reverted
    r = srv.ops(srv.operator, "status", record=True)
    assert r.returncode in (0, 1), r.stderr
    live = run_as(srv.git, ["git", "-C", str(srv.worktree), "rev-parse", "HEAD"]).stdout.strip()
    assert f"deployed:    {live[:10]}" in r.stdout, r.stdout  # the revert, read from the journal
    ev = srv.ops(srv.operator, "events", "--service", "app")
    assert ev.returncode == 0 and "rollback.complete" in ev.stdout, ev.stderr
    env_file = srv.etc / ".env"
    env_file.write_text("WEBHOOK=https://example.invalid/secret-value\n")
    os.chown(env_file, 0, os.stat(srv.etc).st_gid)
    os.chmod(env_file, 0o640)
    out = srv.ops(srv.outsider, "events")
    assert out.returncode == 2, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    line = out.stderr.strip()
    assert srv.outsider in line and f"usermod -aG {srv.group} {srv.outsider}" in line, line
    cat = run_as(srv.outsider, ["cat", str(env_file)])
    assert cat.returncode != 0 and "secret-value" not in cat.stdout


# --- root's cron.d ----------------------------------------------------------------------------

def cron_lines(path: Path) -> list[tuple[str, str, str]]:
    """(schedule, user, command) of each entry, the command as cron hands it to /bin/sh."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split(None, 6)
        command = f[6]
        assert "%" not in command.replace("\\%", ""), "an unescaped % would be cut by cron"
        out.append((" ".join(f[:5]), f[5], command.replace("\\%", "%")))
    return out


def as_cron(user: str, command: str) -> subprocess.CompletedProcess[str]:
    """The entry as cron runs it: as its user, SHELL=/bin/sh PATH=/usr/bin:/bin HOME LOGNAME, no TTY."""
    pw = pwd.getpwnam(user)
    env = ["SHELL=/bin/sh", f"PATH={CRON_PATH}", f"HOME={pw.pw_dir}", f"LOGNAME={user}"]
    argv = ["env", "-i", *env, "/bin/sh", "-c", command]
    if pw.pw_uid != 0:
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--", *argv]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          check=False, start_new_session=True)


def test_cron_d_entries_run_as_cron_would(app: Server) -> None:
    srv = app
    env = {"OPSKIT_CRON_D": str(srv.crond)}
    srv.crond.parent.mkdir(exist_ok=True)
    r = srv.ops("root", "cron", "install", "--system", env=env, record=True)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(srv.crond).st_mode) == 0o644
    shown = srv.ops("root", "cron", "show", "--system", env=env, record=True)
    assert shown.returncode == 0 and "drift-scan-app" in shown.stdout, shown.stdout + shown.stderr
    lines = cron_lines(srv.crond)
    users = {cmd.split(" run-job ")[1].split(" -- ")[0].split()[-1]: user for _, user, cmd in lines}
    assert users["drift-scan-app"] == srv.git and users["notify-flush"] == "root", users
    drift = next(cmd for _, _, cmd in lines if "drift-scan-app" in cmd)
    n = max(int(str(e["id"])) for e in events(srv))
    clean = as_cron(srv.git, drift)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    new = [e for e in events(srv) if int(str(e["id"])) > n]
    kinds = [e["type"] for e in new]
    assert "job.ok" in kinds and "drift.detected" not in kinds, new
    # An edit made by hand on the server.
    run_as(srv.git, ["/bin/sh", "-c", f"echo hotfix >> {srv.worktree}/app.txt"])
    found = as_cron(srv.git, drift)
    # drift-scan's exit 1 (drift found, notified) passes through run-job, which journals it as ok.
    assert found.returncode == 1, found.stdout + found.stderr
    kinds = [e["type"] for e in events(srv) if int(str(e["id"])) > n]
    assert "drift.detected" in kinds, kinds
    run_as(srv.git, ["git", "-C", str(srv.worktree), "checkout", "--", "app.txt"])
    for _, user, cmd in lines:
        if user == "root":
            rr = as_cron("root", cmd)
            assert rr.returncode == 0, (cmd, rr.stdout, rr.stderr)
    st = srv.ops(srv.operator, "status")
    assert "cron-check: cron-check has never run" not in st.stdout, st.stdout  # the root entry ran
    # cron-check watches the cron.d entries' schedules too.
    cc = srv.ops("root", "cron-check", "--json", env=env)
    watched = {j["name"] for j in json.loads(cc.stdout)["jobs"]}
    assert {"drift-scan-app", "notify-flush", "cron-check"} <= watched, (watched, cc.stderr)
    un = srv.ops("root", "cron", "uninstall", "--system", env=env)
    assert un.returncode == 0 and not srv.crond.exists()


# --- root never runs git in the git account's repo; anyone else hears why ----------------------

def test_dubious_ownership_is_named_with_the_fix(app: Server) -> None:
    srv = app
    r = srv.ops(srv.operator, "deploy", "app")
    assert r.returncode == 2, r.stdout + r.stderr
    assert srv.git in r.stderr and srv.operator in r.stderr and "sudo" in r.stderr
    d = srv.ops(srv.operator, "hooks", "status", "app")
    assert d.returncode == 2 and "dubious ownership" in d.stderr and "safe.directory" in d.stderr, d.stderr
    root = srv.ops("root", "hooks", "status", "app")
    assert root.returncode == 0 and "installed" in root.stdout, root.stdout + root.stderr
    # Root's drift scan of the git account's worktree: git runs as that account, and it is clean.
    scan = srv.ops("root", "drift-scan", "app", record=True)
    assert scan.returncode == 0, scan.stdout + scan.stderr
    doc = srv.ops("root", "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
    for name in ("service app: repo", "service app: worktree", "service app: hooks", "root-owned files"):
        assert checks[name]["ok"], checks[name]
    op = srv.ops(srv.operator, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(op.stdout)["checks"]}
    assert not checks["service app: repo"]["ok"] and "dubious ownership" in checks["service app: repo"]["detail"]


# --- privileged deploys -------------------------------------------------------------------------

def test_sudoers_rule_is_least_privilege_and_doctor_checks_it(app: Server, tmp_path: Path) -> None:
    srv = app
    conf = tmp_path / "sudo.toml"
    conf.write_text(f'[opskit]\nstate_dir = "{srv.state}"\n[service.priv]\nrepo = "{srv.repo}"\n'
                    f'worktree = "{srv.worktree}"\nuser = "{srv.git}"\n'
                    'deploy = "sudo -n systemctl restart opskit-test-unit && echo done"\n')
    run = lambda *a: run_as("root", [srv.opskit, "--config", str(conf), *a])  # noqa: E731
    r = run("sudoers", "priv")
    assert r.returncode == 0, r.stderr
    rule_lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("#")]
    assert rule_lines == [f"{srv.git} ALL=(root) NOPASSWD: /usr/bin/systemctl restart opskit-test-unit"], r.stdout
    doc = run("doctor", "--json")
    sudo = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "service priv: sudo")
    assert not sudo["ok"] and "opskit sudoers priv" in sudo["fix"], sudo
    dropin = Path("/etc/sudoers.d") / f"opskit-test-{srv.group}"  # a unique name; removed below
    dropin.write_text(r.stdout)
    os.chmod(dropin, 0o440)
    try:
        doc = run("doctor", "--json")
        sudo = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "service priv: sudo")
        assert sudo["ok"], sudo
        # Exactly that command: anything else still asks for a password (and -n refuses).
        other = run_as(srv.git, ["sudo", "-n", "-l", "/usr/bin/systemctl", "stop", "opskit-test-unit"])
        assert other.returncode != 0
    finally:
        dropin.unlink()
    none = run("sudoers", "nosuch")
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1


def test_hooks_refuse_an_interpreter_the_git_account_cannot_start(app: Server) -> None:
    srv = app
    import sys

    py = sys.executable  # the clone's venv, on an interpreter under /root (pyenv): root's alone
    probe = run_as(srv.git, ["/bin/sh", "-c", 'exec "$0" -I -c pass', py])
    if probe.returncode == 0:
        pytest.skip(f"{py} is startable by every account here; nothing to refuse")
    before = (srv.repo / "hooks" / "post-receive").read_bytes()
    r = run_as("root", [py, "-m", "opskit", "--config", str(srv.config), "hooks", "install", "app"])
    assert r.returncode == 2, r.stdout + r.stderr
    assert srv.git in r.stderr and "install.sh --system" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (srv.repo / "hooks" / "post-receive").read_bytes() == before


# --- last: the git account leaves the group ------------------------------------------------------

def test_pre_receive_fails_closed_with_the_usermod_fix(app: Server, tmp_path: Path) -> None:
    srv = app
    dev = tmp_path / "dev"
    assert git_dev(srv, "clone", "-q", srv.url(), str(dev)).returncode == 0
    before = run_as(srv.git, ["git", "-C", str(srv.repo), "rev-parse", "master"]).stdout
    subprocess.run(["gpasswd", "-d", srv.git, srv.group], check=True, capture_output=True)
    try:
        (dev / "app.txt").write_text("v3\n")
        git_dev(srv, "commit", "-q", "-am", "v3", cwd=dev)
        push = git_dev(srv, "push", "origin", "master", cwd=dev)
        assert push.returncode != 0, push.stderr
        assert f"usermod -aG {srv.group} {srv.git}" in push.stderr, push.stderr
        assert run_as(srv.git, ["git", "-C", str(srv.repo), "rev-parse", "master"]).stdout == before
    finally:
        subprocess.run(["gpasswd", "-a", srv.git, srv.group], check=True, capture_output=True)
